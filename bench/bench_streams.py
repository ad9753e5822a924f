"""Micro-benchmarks of simplew._fast.streams: what one publication costs the history.

    python -m pytest bench/bench_streams.py --benchmark-enable -q

Each round appends ``N`` publications of 100 bytes (the history never fills its byte
budget, so nothing but the per-stream bound drops entries); the time per append is the
round's time divided by ``N`` (printed as ``ns/append`` in ``extra_info``, and at the
end of each test with ``-s``). The loop around the calls is plain Python and counted in.

- ``one stream``: every publication to the broadcast stream (a ring of 1,000 entries,
  full after the first round: each append overwrites the oldest slot);
- ``1,000 streams``: round robin over 1,000 rooms (every append moves another stream to
  the head of the use order);
- ``next + append``: the server's hot path, the position asked and then stored.

``ttl`` is 300 s (the clock is read on each append) or infinite (it is not).
"""

from __future__ import annotations

import pytest

streams = pytest.importorskip("simplew._fast.streams")

N = 10_000
MESSAGE = b"x" * 100


def report(benchmark, label: str) -> None:
    ns = benchmark.stats.stats.mean / N * 1e9
    benchmark.extra_info["ns/append"] = round(ns, 1)
    print(f"\n{label}: {ns:.1f} ns/append")


@pytest.mark.parametrize("ttl", [300.0, float("inf")], ids=["ttl300", "ttlinf"])
def test_append_one_stream(benchmark, ttl):
    s = streams.Streams(1000, 1 << 30, ttl)
    epoch, _ = s.position(None)
    top = [0]

    def run():
        append = s.append
        base = top[0]
        for offset in range(base + 1, base + N + 1):
            append(None, epoch, offset, MESSAGE)
        top[0] = base + N

    benchmark.group = "streams append"
    benchmark(run)
    assert s.held(None) == 1000
    report(benchmark, f"one stream, ttl {ttl}")


@pytest.mark.parametrize("ttl", [300.0, float("inf")], ids=["ttl300", "ttlinf"])
def test_append_round_robin_1000_streams(benchmark, ttl):
    s = streams.Streams(100, 1 << 30, ttl)
    rooms = [(room, s.position(room)[0]) for room in (f"room-{i}" for i in range(1000))]
    top = [0]

    def run():
        append = s.append
        for offset in range(top[0] + 1, top[0] + N // 1000 + 1):
            for room, epoch in rooms:
                append(room, epoch, offset, MESSAGE)
        top[0] += N // 1000

    benchmark.group = "streams append"
    benchmark(run)
    assert len(s) == 1000 and s.position("room-0")[1] == top[0]
    report(benchmark, f"1,000 streams round robin, ttl {ttl}")


def test_next_and_append_round_robin_1000_streams(benchmark):
    s = streams.Streams(100, 1 << 30, 300.0)
    rooms = [f"room-{i}" for i in range(1000)]

    def run():
        following, append = s.next, s.append
        for _ in range(N // 1000):
            for room in rooms:
                epoch, offset = following(room)
                append(room, epoch, offset, MESSAGE)

    benchmark.group = "streams append"
    benchmark(run)
    report(benchmark, "1,000 streams round robin, next + append")
