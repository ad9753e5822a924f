"""Receiving data from the client: the second example of the WebSockets guide.

Serves ``www/receiving`` (a page with two buttons) and a WebSocket endpoint
whose messages ``{"url": "/websocket/test/index"}`` and
``{"url": "/websocket/test/create"}`` are routed to ``TestController``.

    python examples/receiving.py [--host 0.0.0.0] [--port 2015]
"""

from __future__ import annotations

from pathlib import Path

from _serve import options, serve
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
    parser = options(__doc__)
    args = parser.parse_args()

    server = SimpleWServer(args.host, args.port)
    server.add_static_content(str(WWW), "/", timeout=86400)
    server.add_websocket_content("/websocket")
    serve(server)


if __name__ == "__main__":
    main()
