"""What the dead-peer pings cost the server: CPU and RSS with N idle clients, pings on and off.

    python bench/heartbeat.py --n 10000 --interval 1 --timeout 0.5 --seconds 10

Runs the simplew peer twice (SIMPLEW_BENCH_OPTIONS ``ping_interval=None``, then
``ping_interval=INTERVAL, ping_timeout=TIMEOUT``, both with /metrics), connects N
idle clients of the load generator (they answer pings), lets the server sit for
SECONDS and reports its CPU time over that span, its RSS per connection, the
sessions still connected and ``simplew_ping_timeouts_total`` (0: no client that
answers was dropped). CPU per ping = (CPU with pings - CPU without) / (N x sweeps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import ClientPool, PeerServer, cpu_ns, default_procs, free_port, rss_kib  # noqa: E402


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {
        name: float(value)
        for name, value in (
            line.rsplit(" ", 1) for line in lines if line and not line.startswith("#")
        )
    }


def measure(options: dict, n: int, seconds: float, log_dir: str) -> dict:
    os.environ["SIMPLEW_BENCH_OPTIONS"] = json.dumps({**options, "metrics": True})
    server = PeerServer("simplew", free_port(), None, log_dir)
    try:
        time.sleep(0.5)
        before_rss = rss_kib(server.pid)
        with ClientPool("127.0.0.1", server.port, n, default_procs(n), ctl_path=None) as pool:
            connected = pool.connect()["connected"]
            time.sleep(1.0)
            start = cpu_ns(server.pid)
            time.sleep(seconds)
            cpu_ms = (cpu_ns(server.pid) - start) / 1e6
            rss = rss_kib(server.pid)
            samples = scrape(server.port)
        return {
            "connected": connected,
            "cpu_ms": cpu_ms,
            "kib_per_connection": (rss - before_rss) / max(connected, 1),
            "sessions": int(samples["simplew_connections"]),
            "ping_timeouts": int(samples["simplew_ping_timeouts_total"]),
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--log-dir", default="/tmp")
    args = parser.parse_args()
    off = measure({"ping_interval": None}, args.n, args.seconds, args.log_dir)
    on = measure(
        {"ping_interval": args.interval, "ping_timeout": args.timeout},
        args.n,
        args.seconds,
        args.log_dir,
    )
    sweeps = args.seconds / args.interval
    print(
        f"N={args.n}, {args.seconds:g} s idle, pings every {args.interval:g} s "
        f"(timeout {args.timeout:g} s), about {sweeps:g} sweeps"
    )
    print(
        "| pings | connected | sessions at the end | ping timeouts | server CPU (ms) | "
        "KiB RSS per connection |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in (("off", off), ("on", on)):
        print(
            f"| {label} | {r['connected']} | {r['sessions']} | {r['ping_timeouts']} | "
            f"{r['cpu_ms']:.0f} | {r['kib_per_connection']:.2f} |"
        )
    per_ping = (on["cpu_ms"] - off["cpu_ms"]) * 1000 / (args.n * sweeps)
    print(f"CPU per client per ping (send PING, take PONG, check): {per_ping:.2f} µs")


if __name__ == "__main__":
    main()
