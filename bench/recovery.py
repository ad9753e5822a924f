"""What recovery costs: fan-out CPU, Redis throughput, history memory.

    python bench/recovery.py fanout [--n 1000 --rounds 300 --repeats 3]
    python bench/recovery.py redis  [--publications 100000]  (bench/streams.py throughput)
    python bench/recovery.py memory [--history-size 10000 --size 1024]

``fanout``: server CPU per delivered message of one 64-byte multicast to N
clients, for three servers measured in the same run, interleaved: recovery
off with plain clients (the reference), recovery on with plain clients, and
recovery on with simplew.v2 clients (who get the ``pub`` JSON message). The
server is pinned to CPU 0, the clients (raw sockets, epoll, two processes) to
CPU 1. CPU is read from ``/proc/PID/task/*/schedstat``.

``redis``: publications per second through one Redis with two server processes
(as ``--workers 2`` makes), each with a simplew.v2 client in the room: the
streams per room against the plain pub/sub backplane, and redis-benchmark's
XADD and PUBLISH on the same instance (``bench/streams.py throughput``).

``memory``: server RSS growth when the history fills (``history_size``
publications of ``--size`` bytes).
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import select
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from loadgen import cpu_ns, rss_kib  # noqa: E402  (bench/ is this script's directory)

PAYLOAD = "x" * 64

SERVE = """
import sys
from simplew import SimpleWServer
recovery = sys.argv[2] == "1"
server = SimpleWServer("127.0.0.1", int(sys.argv[1]), recovery=recovery, access_log=False,
                       ping_interval=None, history_size=int(sys.argv[3]), metrics=True)
server.add_websocket_content("/ws", on_message=lambda session, data: None)
def bcast(request):
    n = int(request.query.get("n", "1"))
    size = int(request.query.get("size", "64"))
    for i in range(n):
        server.multicast_text("x" * size)
    return {"n": n}
server.map_post("/bcast", bcast)
server.run()
"""


def post(port: int, path: str) -> None:
    with urllib.request.urlopen(
        urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"", method="POST"),
        timeout=30,
    ) as r:
        r.read()


def start_server(recovery: bool, history_size: int = 10000) -> tuple[subprocess.Popen, int]:
    from multiproc import free_port, port_open, wait_until

    port = free_port()
    argv = [sys.executable, "-c", SERVE, str(port), "1" if recovery else "0", str(history_size)]
    if sys.platform == "linux":
        argv = ["taskset", "-c", "0", *argv]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: port_open(port), 15, "server")
    return proc, port


# -- clients: raw sockets counting frames ----------------------------------------


def fanout_case(recovery: bool, v2: bool, n: int, rounds: int) -> float:
    """Server CPU µs per delivered message."""
    proc, port = start_server(recovery)
    ctx = multiprocessing.get_context("fork")
    counters = [ctx.Value("q", 0) for _ in range(2)]
    ready = ctx.Value("q", 0)
    procs = []
    try:
        for i in range(2):
            p = ctx.Process(target=_client_main, args=(port, n // 2, v2, counters[i], ready))
            p.start()
            procs.append(p)
        deadline = time.monotonic() + 60
        while ready.value < n and time.monotonic() < deadline:
            time.sleep(0.05)
        if v2:
            expected = n  # the welcome of each client
            while sum(c.value for c in counters) < expected:
                time.sleep(0.01)
        else:
            expected = 0
        for _ in range(5):  # warm-up rounds
            expected += n
            post(port, "/bcast?n=1")
            while sum(c.value for c in counters) < expected:
                time.sleep(0.0005)
        cpu0 = cpu_ns(proc.pid)
        for _ in range(rounds):
            expected += n
            post(port, "/bcast?n=1")
            while sum(c.value for c in counters) < expected:
                time.sleep(0.0005)
        cpu = cpu_ns(proc.pid) - cpu0
        return cpu / 1000 / (rounds * n)
    finally:
        for p in procs:
            p.kill()
        proc.kill()
        proc.wait()


def _client_main(port, count, v2, counter, ready) -> None:
    """A client process: ``count`` sockets; ``counter`` = frames received so far."""
    if sys.platform == "linux":
        os.sched_setaffinity(0, {1 % os.cpu_count()})
    socks = {}
    extra = "Sec-WebSocket-Protocol: simplew.v2\r\n" if v2 else ""
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"no upgrade: {head[:80]!r}")
        s.setblocking(False)
        socks[s.fileno()] = [s, head.split(b"\r\n\r\n", 1)[1]]
    ep = select.epoll()
    for fd in socks:
        ep.register(fd, select.EPOLLIN)
    with ready.get_lock():
        ready.value += count
    frames = 0
    for entry in socks.values():
        frames += _count_frames(entry)
    counter.value = frames
    while True:
        for fd, _ in ep.poll(1.0):
            entry = socks[fd]
            try:
                data = entry[0].recv(65536)
            except BlockingIOError:
                continue
            if not data:
                return
            entry[1] += data
            frames += _count_frames(entry)
        counter.value = frames


def _count_frames(entry: list) -> int:
    from v2bench import frame_spans

    spans, pos = frame_spans(entry[1])
    entry[1] = entry[1][pos:]
    return len(spans)


def fanout(args: argparse.Namespace) -> dict:
    cases = {
        "off, plain clients": (False, False),
        "on, plain clients": (True, False),
        "on, simplew.v2 clients": (True, True),
    }
    figures: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (recovery, v2) in cases.items():
            figures[name].append(fanout_case(recovery, v2, args.n, args.rounds))
    base = statistics.median(figures["off, plain clients"])
    return {
        name: {
            "us_per_delivery": round(statistics.median(values), 3),
            "runs": [round(v, 3) for v in values],
            "ratio_vs_off": round(statistics.median(values) / base, 3),
        }
        for name, values in figures.items()
    }


# -- Redis ----------------------------------------------------------------------------


def redis(args: argparse.Namespace) -> dict:
    import streams

    args.burst = args.burst or 100
    args.window = 20_000
    return streams.throughput(args)


# -- memory -----------------------------------------------------------------------------


def memory(args: argparse.Namespace) -> dict:
    proc, port = start_server(True, args.history_size)
    try:
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        for _ in range(args.history_size // 1000):
            post(port, f"/bcast?n=1000&size={args.size}")
        time.sleep(0.5)
        after = rss_kib(proc.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
            metrics = {
                line.split()[0]: line.split()[1]
                for line in r.read().decode().splitlines()
                if line.startswith("simplew_history")
            }
        return {
            "history_size": args.history_size,
            "payload_bytes": args.size,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "growth_mib": round((after - before) / 1024, 1),
            **metrics,
        }
    finally:
        proc.kill()
        proc.wait()


def markdown(part: str, result: dict) -> str:
    from v2bench import table

    if part == "redis":
        import streams

        return streams.throughput_table(result)
    if part == "fanout":
        return table(
            ["recovery, clients", "µs CPU per delivery", "runs", "vs recovery off"],
            [
                [
                    name,
                    f"{r['us_per_delivery']:.2f}",
                    " ".join(f"{v:.2f}" for v in r["runs"]),
                    f"{r['ratio_vs_off']:.2f}×",
                ]
                for name, r in result.items()
            ],
        )
    return table(list(result), [list(result.values())])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["fanout", "redis", "memory"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--publications", type=int, default=100_000)
    parser.add_argument("--burst", type=int, default=None, help="redis: multicasts per request")
    parser.add_argument("--bench-n", type=int, default=1_000_000, help="redis: redis-benchmark -n")
    parser.add_argument("--history-size", type=int, default=10000)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    result = {"fanout": fanout, "redis": redis, "memory": memory}[args.part](args)
    print(json.dumps(result, indent=2))
    print()
    print(markdown(args.part, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
