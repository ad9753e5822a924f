"""A plain echo WebSocket: every message is sent back as it came.

Text comes back as text and binary as binary. Used as the server under test
by WebSocket conformance and load tools.

    python examples/echo.py --port 9001 [--host 0.0.0.0]
"""
from __future__ import annotations

import argparse
import signal
import threading

from simplew import SimpleWServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=2015)
    parser.add_argument("--max-message-size", type=int, default=16 * 1024 * 1024,
                        help="bytes; 16 MiB by default, the largest message Autobahn sends")
    parser.add_argument("--no-compression", dest="compression", action="store_false",
                        help="refuse permessage-deflate (negotiated by default here)")
    args = parser.parse_args()

    server = SimpleWServer(args.host, args.port, max_message_size=args.max_message_size,
                           max_write_buffer=64 << 20, compression=args.compression)
    server.add_websocket_content("/", on_message=lambda session, data: session.send(data))
    server.start()
    host = "localhost" if args.host in ("0.0.0.0", "::", "") else args.host
    host = f"[{host}]" if ":" in host else host
    print(f"serving ws://{host}:{server.port}/", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: done.set())
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
