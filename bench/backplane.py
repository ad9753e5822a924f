#!/usr/bin/env python3
"""Cross-worker multicast through the Redis backplane: deliveries per second and
per-process CPU, for ``simplew serve --workers W [--redis URL]``.

    python bench/backplane.py                       # N=200, 100 multicasts x 20 rounds per case
    python bench/backplane.py --n 1000 --rounds 10 --count 50 --json out.json

Cases (each a fresh ``simplew serve backplane_app:server`` from bench/servers/):

* ``1 worker``: one process, no Redis: the reference.
* ``1 worker + Redis``: the same, publishing every multicast to Redis (and
  ignoring its own echo): what the backplane costs the publisher.
* ``2 workers + Redis``: ``--workers 2`` on one port (SO_REUSEPORT spreads the N
  clients); the control client's worker delivers locally and publishes, the
  other worker delivers what it reads from Redis.

Per round the control client (one of the N, on ``/ctl``) sends ``BCAST <count>
<size> <round> <t_ns>``; the worker it landed on calls ``multicast_text``
``count`` times. The load generator (bench/loadgen.py's client processes)
checks that every client got every message in order and records latency
(receive time minus trigger time). Reported: deliveries/s (messages received by
all clients / time from trigger to the last delivery, summed over the rounds),
p50/p99 latency, and the CPU time of each process over the measured rounds
(server workers, redis-server, load generator) from /proc/PID/task/*/schedstat.
Nothing is pinned: on a 2-CPU machine the clients, the workers and Redis share
the CPUs, so read CPU per delivery as well as deliveries/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(ROOT / "tests"))
import psutil  # noqa: E402

import loadgen  # noqa: E402
from multiproc import RedisServer, free_port, redis_server_path, wait_until  # noqa: E402

CASES = [("1 worker", 1, False), ("1 worker + Redis", 1, True), ("2 workers + Redis", 2, True)]


def start_server(port: int, workers: int, redis_url: str | None) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "simplew",
        "serve",
        "backplane_app:server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--shutdown-grace",
        "1",
    ]
    if redis_url:
        argv += ["--redis", redis_url]
    proc = subprocess.Popen(
        argv, cwd=BENCH_DIR / "servers", start_new_session=True, stdin=subprocess.DEVNULL
    )
    return proc


def server_pids(proc: subprocess.Popen, workers: int) -> list[int]:
    """The processes that serve: the CLI itself with 1 worker, else its children."""
    if workers == 1:
        return [proc.pid]
    pids = []
    for child in psutil.Process(proc.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):  # not the resource tracker
                pids.append(child.pid)
        except psutil.Error:
            pass
    return pids


def listening(pid: int, port: int) -> bool:
    try:
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr.port == port
            for c in psutil.Process(pid).net_connections(kind="tcp")
        )
    except psutil.Error:
        return False


def established(pid: int, port: int) -> int:
    try:
        return sum(
            1
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
        )
    except psutil.Error:
        return 0


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_case(label: str, workers: int, redis: RedisServer | None, opts: argparse.Namespace) -> dict:
    port = free_port()
    proc = start_server(port, workers, redis.url if redis else None)
    try:
        wait_until(
            lambda: (
                proc.poll() is not None
                or (
                    len(server_pids(proc, workers)) == workers
                    and all(listening(p, port) for p in server_pids(proc, workers))
                )
            ),
            30,
            "workers listening",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        pids = server_pids(proc, workers)
        if redis is not None:
            import redis as redis_py

            with redis_py.Redis.from_url(redis.url) as client:
                wait_until(
                    lambda: client.pubsub_numsub("simplew:multicast")[0][1] == workers,
                    30,
                    "backplanes subscribed",
                )
        with loadgen.ClientPool("127.0.0.1", port, opts.n, opts.client_procs) as pool:
            conn = pool.connect(60)
            if conn["connected"] < opts.n or not pool.control_ok:
                raise RuntimeError(f"connected {conn['connected']}/{opts.n}: {conn['errors']}")
            split = [established(p, port) for p in pids]
            watched = {f"worker{i}": p for i, p in enumerate(pids)}
            if redis is not None:
                watched["redis-server"] = redis.proc.pid
            for i, (p, _) in enumerate(pool.workers):
                watched[f"client{i}"] = p.pid
            rounds, rnd = [], 1
            for i in range(opts.warmup + opts.rounds):
                if i == opts.warmup:
                    cpu_before = {k: loadgen.cpu_ns(p) for k, p in watched.items()}
                res = pool.fanout_round(rnd, opts.count, opts.size, pids[0], 60)
                rnd += 1
                if i >= opts.warmup:
                    lats = sorted(res.pop("lats"))
                    res["p50_ms"] = loadgen._pct(lats, 0.50) / 1e6
                    res["p99_ms"] = loadgen._pct(lats, 0.99) / 1e6
                    rounds.append(res)
                time.sleep(opts.gap)
            cpu = {k: (loadgen.cpu_ns(p) - cpu_before[k]) / 1e6 for k, p in watched.items()}
        received = sum(r["received"] for r in rounds)
        expected = sum(r["expected"] for r in rounds)
        wall = sum(r["wall_s"] for r in rounds)
        backplane_ms = sum(v for k, v in cpu.items() if k.startswith("worker"))
        return {
            "case": label,
            "workers": workers,
            "redis": redis is not None,
            "n": opts.n,
            "split": split,
            "count": opts.count,
            "size": opts.size,
            "rounds": opts.rounds,
            "deliveries": received,
            "expected": expected,
            "all_delivered": received == expected and not any(r["bad_order"] for r in rounds),
            "deliveries_per_s": received / wall if wall else float("nan"),
            "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
            "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
            "cpu_ms": cpu,
            "server_cpu_us_per_delivery": backplane_ms * 1e3 / received if received else None,
        }
    finally:
        stop_server(proc)


def table(results: list[dict]) -> str:
    lines = [
        "| case | clients per worker | deliveries/s | p50 ms | p99 ms | server CPU µs/delivery "
        "| CPU ms per process (measured rounds) | all delivered |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in results:
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_ms"].items())
        lines.append(
            f"| {r['case']} | {'/'.join(map(str, r['split']))} | "
            f"{r['deliveries_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['server_cpu_us_per_delivery']:.2f} | {cpu} | "
            f"{'yes' if r['all_delivered'] else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="clients (default 200)")
    parser.add_argument("--count", type=int, default=100, help="multicasts per round (100)")
    parser.add_argument("--size", type=int, default=64, help="message size in bytes (64, min 32)")
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up rounds (3)")
    parser.add_argument("--gap", type=float, default=0.02, help="pause between rounds, s")
    parser.add_argument("--client-procs", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--cases",
        default=",".join(str(i) for i in range(len(CASES))),
        help="indexes of the cases to run: "
        + "; ".join(f"{i}={c[0]}" for i, c in enumerate(CASES)),
    )
    parser.add_argument("--json", help="also write the results to this file")
    opts = parser.parse_args(argv)
    if redis_server_path() is None:
        print("redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    redis = RedisServer().start()
    results = []
    try:
        for index in (int(i) for i in opts.cases.split(",")):
            label, workers, with_redis = CASES[index]
            loadgen.progress(
                f"{label}: N={opts.n}, {opts.count} x {opts.size} B, {opts.rounds} rounds",
                final=True,
            )
            results.append(run_case(label, workers, redis if with_redis else None, opts))
    finally:
        redis.stop()
    print(
        f"\nsimplew backplane bench: N={opts.n} clients, {opts.count} multicasts of "
        f"{opts.size} B per round, {opts.rounds} rounds; {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.machine()}\n"
    )
    print(table(results))
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["all_delivered"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
