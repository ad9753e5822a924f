"""Receiving data from the client: the second example of the WebSockets guide.

Serves ``www/receiving`` (a page with two buttons) and a WebSocket endpoint
whose messages ``{"url": "/websocket/test/index"}`` and
``{"url": "/websocket/test/create"}`` are routed to ``TestController``.

    python examples/receiving.py [--host 0.0.0.0] [--port 2015]
"""
from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from simplew import Controller, SimpleWServer, WebSocketMessage, route

WWW = Path(__file__).resolve().parent.parent / "www" / "receiving"


@route("/test")
class TestController(Controller):

    @route("WEBSOCKET", "/index")
    def index(self, message: WebSocketMessage) -> None:
        self.session.send_text("index")

    @route("WEBSOCKET", "/create")
    def create(self, message: WebSocketMessage) -> None:
        self.session.send_text("create")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=2015)
    args = parser.parse_args()

    server = SimpleWServer(args.host, args.port)
    server.add_static_content(str(WWW), "/", timeout=86400)
    server.add_websocket_content("/websocket")
    server.start()
    host = "localhost" if args.host in ("0.0.0.0", "::", "") else args.host
    host = f"[{host}]" if ":" in host else host
    print(f"serving http://{host}:{server.port}/", flush=True)

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
