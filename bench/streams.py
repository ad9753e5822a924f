"""simplew.v2's streams per room in Redis: what they cost and how they scale out.

    python bench/streams.py interest   [--publications 100000 --burst 1000]
    python bench/streams.py throughput [--publications 100000 --burst 100 --bench-n 1000000]
    python bench/streams.py shards     [--shards 1,2,3 --cluster --rooms 1000 --publications 100000]
    python bench/streams.py resume     [--rooms 1000]

Every server is ``bench/v2app.py`` (one process, recovery on, ``ping_interval=None``);
clients are raw sockets in this process (own handshake and frame parser). Process
CPU is read from ``/proc/PID/task/*/schedstat``, Redis's from ``INFO cpu``
(``used_cpu_user + used_cpu_sys``), before and after the measured publications.

``interest``: two server processes A and B on one Redis (its Unix socket); one
simplew.v2 client on A in room ``hot``, none on B; A multicasts to ``hot`` in bursts
(``POST /burst``, at most ``--window`` publications not yet received). B follows no
room, so it should receive nothing: its CPU per publication against A's.

``throughput``: A and B on one Redis (Unix socket), each with a client in ``hot``;
bursts alternately from A and B; both clients must receive every publication. Recovery
on (simplew.v2 streams) and off (the pub/sub backplane) in the same run, then
``redis-benchmark -s SOCKET -P 64`` with ``XADD k MAXLEN ~ 10000 * r <64 B>`` and with
``PUBLISH c <64 B>`` on the same instance: Redis's own floor.

``shards``: 1, 2, 3 plain Redis instances as client-side shards (and with
``--cluster`` a Redis Cluster of 3 masters, no replicas); one server process, one
client in each of ``--rooms`` rooms; publications spread round-robin over the rooms
(``POST /spread``, ``--burst`` per request). Total publications/s, and Redis CPU per
publication on each shard (its CPU delta over all the publications).

``resume``: one session in ``--rooms`` rooms (``max_rooms_per_session=2000``), one
publication per room missed; it resumes (a) on the same process, rooms still followed
(within the 5 s linger) and (b) on a restarted process (it follows every room again):
time from the connect to the last missed publication, and the server's CPU for it.

Each part prints its figures as JSON, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadgen import cpu_ns  # noqa: E402  (bench/ is this script's directory)
from v2bench import (  # noqa: E402
    OFFSET,
    PUB,
    App,
    Raw,
    http_json,
    redis_cpu,
    start_redis,
    stop_redis,
    table,
    welcome,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


class Receiver:
    """A client in one room counting its publications and checking their offsets."""

    def __init__(self, port: int, room: str, v2: bool = True) -> None:
        self.raw = Raw(port, protocol="simplew.v2" if v2 else None)
        self.v2 = v2
        self.room = room
        self.got = 0
        self.bad = 0  # an offset that does not follow the one held
        self.held = 0
        if v2:
            welcome(self.raw)
            self.raw.request("/ws/bench/join", room)
            # the route's answer and the join, in either order (a join waits for the room)
            joined = answered = False
            deadline = time.monotonic() + 30
            while not (joined and answered) and time.monotonic() < deadline:
                for payload in self.raw.read(1.0):
                    if payload.startswith(b'{"type":"join"'):
                        self.held = int(OFFSET.search(payload).group(1))
                        joined = True
                    answered = answered or payload.startswith(b'{"type":"msg"')
            if not joined:
                raise TimeoutError(f"no join of {room}")
        else:
            self.raw.request("/ws/bench/join", room)
            self.raw.until(lambda p: True)  # the route's answer

    def fileno(self) -> int:
        return self.raw.fileno()

    def take(self) -> None:
        for payload in self.raw.read(0):
            if self.v2:
                if payload.startswith(PUB):
                    offset = int(OFFSET.search(payload).group(1))
                    if offset != self.held + 1:
                        self.bad += 1
                    self.held = offset
                    self.got += 1
            elif payload[:1] in (b"b", b"s"):
                self.got += 1


def drain(receivers: list[Receiver], need: Callable[[], bool], timeout: float = 60) -> None:
    """Read from every receiver until ``need()`` holds."""
    poller = select.epoll()
    by_fd = {}
    for r in receivers:
        r.raw.sock.setblocking(False)
        poller.register(r.fileno(), select.EPOLLIN)
        by_fd[r.fileno()] = r
    deadline = time.monotonic() + timeout
    try:
        while not need():
            if time.monotonic() > deadline:
                raise TimeoutError(f"received {sum(r.got for r in receivers)}")
            for fd, _ in poller.poll(0.05):
                by_fd[fd].take()
    finally:
        poller.close()


def pump(
    publishers: list[App],
    receivers: list[Receiver],
    total: int,
    burst: int,
    window: int,
    path: Callable[[int, int], str],
    expected: Callable[[int], int],
) -> float:
    """Post ``total`` publications in bursts (round-robin over ``publishers``), at most
    ``window`` of them unreceived; ``expected(sent)``: what all receivers together then
    hold. Seconds until every receiver had everything."""
    base = sum(r.got for r in receivers)
    start = time.monotonic()
    sent = 0
    i = 0
    while sent < total:
        n = min(burst, total - sent)
        http_json(publishers[i % len(publishers)].port, "POST", path(sent, n))
        i += 1
        sent += n
        floor = expected(max(0, sent - window))
        drain(receivers, lambda floor=floor: sum(r.got for r in receivers) - base >= floor)
    drain(receivers, lambda: sum(r.got for r in receivers) - base >= expected(total))
    return time.monotonic() - start


def us(seconds_or_ns: float, count: int) -> float:
    return round(seconds_or_ns / count, 3)


# -- interest --------------------------------------------------------------------------


def interest(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="simplew-bench-"))
    redis = start_redis(tmp, unix=True)
    a = App(redis["url"]).wait_ready()
    b = App(redis["url"]).wait_ready()
    try:
        hot = Receiver(a.port, "hot")
        burst = lambda sent, n: f"/burst?room=hot&n={n}"  # noqa: E731
        pump([a], [hot], args.burst, args.burst, args.window, burst, lambda s: s)  # warm-up
        time.sleep(1.0)
        before = (cpu_ns(a.pid), cpu_ns(b.pid), redis_cpu(redis["port"]))
        stats_b0 = b.http("GET", "/stats")["stats"]
        seconds = pump([a], [hot], args.publications, args.burst, args.window, burst, lambda s: s)
        after = (cpu_ns(a.pid), cpu_ns(b.pid), redis_cpu(redis["port"]))
        stats_b = b.http("GET", "/stats")["stats"]
        n = args.publications
        cpu_a = (after[0] - before[0]) / 1000 / n
        cpu_b = (after[1] - before[1]) / 1000 / n
        cpu_r = (after[2] - before[2]) * 1e6 / n
        return {
            "publications": n,
            "burst": args.burst,
            "seconds": round(seconds, 3),
            "per_second": round(n / seconds),
            "cpu_us_per_pub_A": round(cpu_a, 3),
            "cpu_us_per_pub_B": round(cpu_b, 3),
            "cpu_us_per_pub_redis": round(cpu_r, 3),
            "B_over_A": round(cpu_b / cpu_a, 4),
            "client_got": hot.got,
            "client_bad_offsets": hot.bad,
            "B_received": stats_b["received"] - stats_b0["received"],
            "B_followed": stats_b["followed"],
        }
    finally:
        a.stop()
        b.stop()
        stop_redis(redis)
        shutil.rmtree(tmp, ignore_errors=True)


def interest_table(r: dict[str, Any]) -> str:
    return table(
        [
            "publications",
            "pubs/s",
            "A µs CPU/pub",
            "B µs CPU/pub",
            "Redis µs CPU/pub",
            "B / A",
            "B received",
            "client got (bad offsets)",
        ],
        [
            [
                r["publications"],
                r["per_second"],
                r["cpu_us_per_pub_A"],
                r["cpu_us_per_pub_B"],
                r["cpu_us_per_pub_redis"],
                f"{r['B_over_A']:.1%}",
                r["B_received"],
                f"{r['client_got']:,} ({r['client_bad_offsets']})",
            ]
        ],
    )


# -- throughput ------------------------------------------------------------------------


def throughput_case(redis: dict[str, Any], recovery: bool, args: argparse.Namespace) -> dict:
    apps = [App(redis["url"], recovery=recovery).wait_ready() for _ in range(2)]
    try:
        receivers = [Receiver(app.port, "hot", v2=recovery) for app in apps]
        time.sleep(0.5)
        path = lambda sent, n: f"/burst?room=hot&n={n}"  # noqa: E731
        pump(apps, receivers, args.burst * 10, args.burst, args.window, path, lambda s: 2 * s)
        time.sleep(0.5)
        cpu0 = redis_cpu(redis["port"])
        seconds = pump(
            apps, receivers, args.publications, args.burst, args.window, path, lambda s: 2 * s
        )
        cpu = redis_cpu(redis["port"]) - cpu0
        n = args.publications
        return {
            "publications": n,
            "seconds": round(seconds, 3),
            "per_second": round(n / seconds),
            "redis_cpu_us_per_pub": us(cpu * 1e6, n),
            "bad_offsets": sum(r.bad for r in receivers),
        }
    finally:
        for app in apps:
            app.stop()


def redis_benchmark(redis: dict[str, Any], n: int, command: list[str]) -> dict[str, Any]:
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return {"error": "redis-benchmark is not installed"}
    cpu0 = redis_cpu(redis["port"])
    out = subprocess.run(
        [tool, "-s", redis["socket"], "-P", "64", "-n", str(n), "-c", "50", "--csv", *command],
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    cpu = redis_cpu(redis["port"]) - cpu0
    rows = [line for line in out.splitlines() if line and not line.startswith('"test"')]
    rps = float(rows[-1].split(",")[1].strip('"'))
    return {"requests": n, "per_second": round(rps), "redis_cpu_us_per_op": us(cpu * 1e6, n)}


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="simplew-bench-"))
    redis = start_redis(tmp, unix=True)
    value = "v" * 64
    try:
        return {
            "simplew.v2 streams (recovery on)": throughput_case(redis, True, args),
            "pub/sub backplane (recovery off)": throughput_case(redis, False, args),
            "redis-benchmark XADD MAXLEN ~ 10000": redis_benchmark(
                redis, args.bench_n, ["XADD", "bench:x", "MAXLEN", "~", "10000", "*", "r", value]
            ),
            "redis-benchmark PUBLISH": redis_benchmark(
                redis, args.bench_n, ["PUBLISH", "bench:c", value]
            ),
        }
    finally:
        stop_redis(redis)
        shutil.rmtree(tmp, ignore_errors=True)


def throughput_table(result: dict[str, Any]) -> str:
    rows = []
    for name, r in result.items():
        if "error" in r:
            rows.append([name, r["error"], "", ""])
        elif "publications" in r:
            rows.append(
                [
                    name,
                    f"{r['per_second']:,}",
                    f"{r['redis_cpu_us_per_pub']:.2f}",
                    f"{r['publications']:,} publications, both clients got all"
                    + (f", {r['bad_offsets']} bad offsets" if r["bad_offsets"] else ""),
                ]
            )
        else:
            rows.append(
                [
                    name,
                    f"{r['per_second']:,}",
                    f"{r['redis_cpu_us_per_op']:.2f}",
                    f"{r['requests']:,} requests, -P 64 -c 50",
                ]
            )
    return table(["path", "publications/s", "Redis µs CPU per publication", "note"], rows)


# -- shards ----------------------------------------------------------------------------


def shards_case(urls: list[str], ports: list[int], label: str, args: argparse.Namespace) -> dict:
    app = App(urls, cpus=None).wait_ready()
    rooms = args.rooms
    try:
        receivers = [Receiver(app.port, f"r{k}") for k in range(rooms)]

        def expected(sent: int) -> int:
            return sent

        def path(sent: int, n: int) -> str:
            return f"/spread?rooms={rooms}&n={n}&start={sent}&prefix=r"

        pump([app], receivers, rooms * 2, args.burst, args.window, path, expected)  # warm-up
        time.sleep(1.0)
        cpu0 = [redis_cpu(port) for port in ports]
        app0 = cpu_ns(app.pid)
        seconds = pump([app], receivers, args.publications, args.burst, args.window, path, expected)
        cpu = [redis_cpu(port) - c for port, c in zip(ports, cpu0)]
        n = args.publications
        return {
            "topology": label,
            "shards": len(ports),
            "publications": n,
            "seconds": round(seconds, 3),
            "per_second": round(n / seconds),
            "server_cpu_us_per_pub": us((cpu_ns(app.pid) - app0) / 1000, n),
            "redis_cpu_us_per_pub": [us(c * 1e6, n) for c in cpu],
            "redis_cpu_us_per_pub_total": us(sum(cpu) * 1e6, n),
            "bad_offsets": sum(r.bad for r in receivers),
            "all_received": all(r.got == n // rooms + 2 for r in receivers)
            if n % rooms == 0
            else None,
        }
    finally:
        for r in locals().get("receivers", []):
            r.raw.close()
        app.stop()


def shards(args: argparse.Namespace) -> list[dict[str, Any]]:
    from topology import Cluster

    out = []
    tmp = Path(tempfile.mkdtemp(prefix="simplew-bench-"))
    try:
        for count in [int(c) for c in args.shards.split(",")]:
            instances = [start_redis(tmp / f"{count}-{i}") for i in range(count)]
            try:
                out.append(
                    shards_case(
                        [r["url"] for r in instances],
                        [r["port"] for r in instances],
                        f"{count} plain instance{'s' if count > 1 else ''}",
                        args,
                    )
                )
            finally:
                for r in instances:
                    stop_redis(r)
            print(json.dumps(out[-1]), file=sys.stderr)
        if args.cluster:
            with Cluster(tmp / "cluster", masters=3, replicas=0) as cluster:
                masters = sorted({m for _s, _e, m in cluster._slot_ranges(cluster.ports[0])})
                out.append(shards_case([cluster.url], masters, "Cluster, 3 masters", args))
            print(json.dumps(out[-1]), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def shards_table(result: list[dict[str, Any]]) -> str:
    rows = []
    for r in result:
        rows.append(
            [
                r["topology"],
                f"{r['per_second']:,}",
                f"{r['server_cpu_us_per_pub']:.2f}",
                " / ".join(f"{c:.2f}" for c in r["redis_cpu_us_per_pub"]),
                f"{r['redis_cpu_us_per_pub_total']:.2f}",
                f"{r['publications']:,}; all received: {r['all_received']}; bad offsets: {r['bad_offsets']}",
            ]
        )
    return table(
        [
            "Redis",
            "publications/s",
            "server µs CPU/pub",
            "Redis µs CPU/pub, each shard",
            "all shards",
            "check",
        ],
        rows,
    )


# -- one session in many rooms resuming ----------------------------------------------------


def _cut(raw: Raw) -> None:
    """Close with a TCP reset."""
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.sock.close()


def _resume_once(port: int, session: str, held: dict, pid: int, missed: int) -> dict[str, Any]:
    rooms = sorted((r for r in held if r is not None), key=lambda r: r.encode())
    message = {
        "type": "resume",
        "session": session,
        "streams": [[r, *held[r]] for r in [None, *rooms]],
    }
    cpu0 = cpu_ns(pid)
    start = time.monotonic()
    raw = Raw(port, path="/ws?resume=1")
    raw.send(json.dumps(message, separators=(",", ":")))
    hello = welcome(raw)
    got = 0
    while got < hello["missed"]:
        for payload in raw.read(30):
            if payload.startswith(PUB):
                pub = json.loads(payload)
                held[pub["room"]] = [pub["epoch"], pub["offset"]]
                got += 1
    seconds = time.monotonic() - start
    cpu = cpu_ns(pid) - cpu0
    raw.close()
    return {
        "recovered": hello["recovered"],
        "streams": len(hello["streams"]),
        "streams_recovered": sum(1 for s in hello["streams"] if s[3]),
        "missed": hello["missed"],
        "expected_missed": missed,
        "ms": round(seconds * 1000, 1),
        "server_cpu_ms": round(cpu / 1e6, 1),
    }


def resume(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="simplew-bench-"))
    redis = start_redis(tmp, unix=True)
    max_rooms = max(2000, args.rooms)
    app = App(redis["url"], max_rooms=max_rooms).wait_ready()
    rooms = [f"r{k}" for k in range(args.rooms)]
    out: dict[str, Any] = {"rooms": args.rooms}
    try:
        raw = Raw(app.port)
        hello = welcome(raw)
        session = hello["session"]
        held: dict[str | None, list] = {None: hello["streams"][0][1:3]}
        raw.request("/ws/bench/join", rooms)
        while len(held) < args.rooms + 1:
            for payload in raw.read(30):
                if payload.startswith(b'{"type":"join"'):
                    message = json.loads(payload)
                    held[message["room"]] = [message["epoch"], message["offset"]]
        spread = f"/spread?rooms={args.rooms}&n={args.rooms}&prefix=r"
        _cut(raw)
        time.sleep(0.3)
        # (a) the same process, rooms still followed (linger)
        app.http("POST", spread)
        time.sleep(0.5)
        out["same process"] = _resume_once(app.port, session, held, app.pid, args.rooms)
        # (b) a restarted process: it follows every room again; (a)'s connection is
        # closed by now, so the session misses both rounds
        time.sleep(0.5)
        app.http("POST", spread)
        app.http("POST", spread)
        time.sleep(0.5)
        app.stop()
        app = App(redis["url"], max_rooms=max_rooms, port=app.port).wait_ready()
        time.sleep(1.0)
        out["restarted process"] = _resume_once(app.port, session, held, app.pid, 2 * args.rooms)
        return out
    finally:
        app.stop()
        stop_redis(redis)
        shutil.rmtree(tmp, ignore_errors=True)


def resume_table(result: dict[str, Any]) -> str:
    rows = []
    for name in ("same process", "restarted process"):
        r = result[name]
        rows.append(
            [
                name,
                f"{r['recovered']}",
                f"{r['streams_recovered']} / {r['streams']}",
                f"{r['missed']:,} (expected {r['expected_missed']:,})",
                r["ms"],
                r["server_cpu_ms"],
            ]
        )
    return table(
        [
            f"resume of 1 session in {result['rooms']} rooms",
            "recovered",
            "streams recovered",
            "missed pubs",
            "ms to the last missed pub",
            "server CPU ms",
        ],
        rows,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["interest", "throughput", "shards", "resume"])
    parser.add_argument("--publications", type=int, default=100_000)
    parser.add_argument("--burst", type=int, default=None)
    parser.add_argument("--window", type=int, default=20_000, help="publications unreceived")
    parser.add_argument("--bench-n", type=int, default=1_000_000, help="redis-benchmark -n")
    parser.add_argument("--shards", default="1,2,3")
    parser.add_argument("--cluster", action="store_true", help="also a Cluster of 3 masters")
    parser.add_argument("--rooms", type=int, default=1000)
    args = parser.parse_args()
    if args.burst is None:
        args.burst = {"interest": 1000, "throughput": 100, "shards": 10_000}.get(args.part, 1000)
    part = {
        "interest": (interest, interest_table),
        "throughput": (throughput, throughput_table),
        "shards": (shards, shards_table),
        "resume": (resume, resume_table),
    }[args.part]
    result = part[0](args)
    print(json.dumps(result, indent=2))
    print()
    print(part[1](result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
