"""Server RSS per idle WebSocket connection, for each peer (issue target: ≤ 8 KiB at 10,000).

    python bench/memory.py --n 10000 --peers simplew,picows

Starts each peer in its own process, reads its RSS, connects N idle clients (the
load generator's processes), waits for the server to settle and reads RSS again:
(after − before) / N is the figure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import ClientPool, PeerServer, default_procs, free_port, rss_kib  # noqa: E402


def measure(peer: str, n: int, log_dir: str) -> dict:
    server = PeerServer(peer, free_port(), None, log_dir)
    try:
        time.sleep(0.5)
        before = rss_kib(server.pid)
        with ClientPool("127.0.0.1", server.port, n, default_procs(n), ctl_path=None) as pool:
            connected = pool.connect()["connected"]
            time.sleep(2.0)
            after = rss_kib(server.pid)
        return {
            "peer": peer,
            "n": n,
            "connected": connected,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "kib_per_connection": (after - before) / max(connected, 1),
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--peers", default="simplew,picows")
    parser.add_argument("--log-dir", default="/tmp")
    args = parser.parse_args()
    print("| peer | N | connected | RSS before (MiB) | RSS after (MiB) | KiB per connection |")
    print("|---|---:|---:|---:|---:|---:|")
    for peer in args.peers.split(","):
        r = measure(peer, args.n, args.log_dir)
        print(
            f"| {r['peer']} | {r['n']} | {r['connected']} | {r['rss_before_kib'] / 1024:.1f} | "
            f"{r['rss_after_kib'] / 1024:.1f} | {r['kib_per_connection']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
