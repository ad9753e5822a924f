"""Shared by every peer server of the benchmark: arguments, the trigger, the envelope.

Trigger (TEXT message from the control client)::

    BCAST <count> <size> [<round> [<t_ns>]]

The server sends ``count`` TEXT messages of ``size`` bytes to every connected
client, back to back in the callback that received the trigger. Each payload is
ASCII: ``B`` + round (8 digits) + index (4 digits) + trigger time (19 digits,
``time.time_ns()`` of the control client) + ``x`` padding up to ``size``
(at least 32 bytes).

Request/response: ``{"url": "/ws/test/echo", "body": ...}`` is answered with the
body (a ``str`` body as is, anything else as JSON).

REST: ``GET /json`` is answered ``200`` with ``JSON_BODY`` (the simplew and
Starlette peers encode the dict per request; the raw httptools peer writes it
pre-built).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HEADER_SIZE = 32
ECHO_URL = "/ws/test/echo"
# what ``GET /json`` answers on every HTTP peer (the REST case: a dict encoded per request)
JSON_PATH = "/json"
JSON_BODY = b'{"message":"Hello, World!"}'


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--static-dir", default=None, help="directory served under /static/ (optional)"
    )
    return parser.parse_args()


def bcast_payloads(text: str) -> list[str]:
    """The ``count`` payloads that ``BCAST <count> <size> [<round> [<t_ns>]]`` asks for."""
    parts = text.split()
    count = int(parts[1])
    size = max(HEADER_SIZE, int(parts[2]))
    rnd = int(parts[3]) if len(parts) > 3 else 0
    t_ns = int(parts[4]) if len(parts) > 4 else time.time_ns()
    pad = "x" * (size - HEADER_SIZE)
    return [f"B{rnd:08d}{i:04d}{t_ns:019d}{pad}" for i in range(count)]


def reply_text(body) -> str:
    return body if isinstance(body, str) else json.dumps(body)


async def serve_until_signal(server) -> None:
    """Announce ``server`` (an asyncio server) as ready, run until SIGTERM/SIGINT, close it."""
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready(server.sockets[0].getsockname()[1])
    await stop.wait()
    server.close()


def ready(port: int) -> None:
    """Tell the harness that the server listens (it waits for this line)."""
    sys.stdout.write(f"READY {port} {os.getpid()}\n")
    sys.stdout.flush()
