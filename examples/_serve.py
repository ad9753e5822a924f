"""What the example programs share: the ``--host``/``--port`` options, the
``serving ...`` line, and running until SIGTERM or Ctrl+C."""

from __future__ import annotations

import argparse
import signal
import threading

from simplew import SimpleWServer


def options(doc: str) -> argparse.ArgumentParser:
    """An argument parser with ``--host`` (0.0.0.0) and ``--port`` (2015)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=2015)
    return parser


def serve(
    server: SimpleWServer, scheme: str = "http", note: str = "", done: threading.Event | None = None
) -> None:
    """Start ``server``, print where it serves, block until SIGTERM, Ctrl+C or
    ``done`` is set, then stop it (clients get close 1001)."""
    server.start()
    host = "localhost" if server.host in ("0.0.0.0", "::", "") else server.host
    host = f"[{host}]" if ":" in host else host
    print(f"serving {scheme}://{host}:{server.port}/{note}", flush=True)
    done = done or threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: done.set())
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
