#!/usr/bin/env python3
"""User-space cost of one HTTP request, without the kernel's TCP work.

    python bench/userspace.py      # µs per request: static files, GET /json, the httptools floor

Feeds keep-alive GET requests (as wrk sends them) straight to a protocol
whose transport only counts writes, and reports the best of five runs of
100,000 requests per case: parsing, the handler chain, the static cache or the
REST route, and encoding the response. The cases are the 13 B and 100 KiB
static files and ``GET /json`` of bench/servers/simplew_server.py, and the
raw uvloop + httptools protocol of bench/servers/httptools_server.py on the
same request (the floor of ``GET /json``).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "servers"))
import loadgen  # noqa: E402
from _common import JSON_PATH  # noqa: E402
from httptools_server import FixedJson  # noqa: E402
from simplew import SimpleWServer  # noqa: E402


class CountingTransport:
    """Takes writes and says the socket always keeps up."""

    def __init__(self) -> None:
        self.writes = 0
        self.last = b""

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.last = data

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default=None):
        return default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def best_of(protocol, path: str, requests: int, runs: int) -> tuple[float, int]:
    """(best µs per request over ``runs``, size of the response) for ``GET path``."""
    transport = CountingTransport()
    protocol.connection_made(transport)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n".encode()
    for _ in range(2000):
        protocol.data_received(request)
    assert transport.last.startswith(b"HTTP/1.1 200 "), transport.last[:100]
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(requests):
            protocol.data_received(request)
        best = min(best, (time.perf_counter() - start) / requests * 1e6)
    return best, len(transport.last)


async def measure(static_dir: str, requests: int = 100_000, runs: int = 5) -> None:
    server = SimpleWServer("127.0.0.1", 0)  # defaults, as bench/servers/simplew_server.py
    server.add_static_content(static_dir, "/static", timeout=86400)
    server.map_get(JSON_PATH, lambda: {"message": "Hello, World!"})
    server._compile()
    cases = [(path, server._protocol) for _, path in loadgen.STATIC_CASES]
    cases += [(JSON_PATH, server._protocol), (JSON_PATH, FixedJson)]
    for path, make in cases:
        us, size = best_of(make(), path, requests, runs)
        who = "raw httptools" if make is FixedJson else "simplew"
        print(f"{who} {path}: {us:.2f} µs per request ({size}-byte response)")


def main() -> None:
    static_dir = loadgen.make_static_dir()
    try:
        asyncio.run(measure(static_dir))
    finally:
        shutil.rmtree(static_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
