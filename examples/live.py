"""A live feed that loses nothing across disconnects: the simplew.v2 example.

Serves ``www/live`` (a page that shows every publication with its room, epoch
and offset, through ``/simplew.js``) and a WebSocket endpoint with recovery on.
Every ``--interval`` milliseconds a tick is multicast to every client (the
broadcast stream) and one to each of the rooms red, green and blue (a stream
each); the page joins and leaves rooms with ``/websocket/live/join`` and
``/websocket/live/leave``. Reload the page, drop the network or restart this
program: the page reconnects and gets what it missed, room by room. With
``--redis URL`` the history lives in Redis, so a restart of this program (or
several processes behind one port) keeps it too.

    python examples/live.py [--host 0.0.0.0] [--port 2015] [--interval 500] [--redis redis://localhost:6379]
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from _serve import options, serve
from simplew import Controller, SimpleWServer, WebSocketMessage, route

WWW = Path(__file__).resolve().parent.parent / "www" / "live"
ROOMS = ("red", "green", "blue")


@route("/live")
class Rooms(Controller):
    """``{"url": "/websocket/live/join", "body": "red"}`` and ``.../leave``: the
    session joins or leaves one of ROOMS (the server then sends a ``join`` or a
    ``leave`` message, with the room's position)."""

    @route("WEBSOCKET", "/join")
    def join(self, message: WebSocketMessage) -> dict[str, str] | None:
        if message.body not in ROOMS:
            return {"error": f"no room {message.body!r}"}
        self.session.join(message.body)
        return None

    @route("WEBSOCKET", "/leave")
    def leave(self, message: WebSocketMessage) -> None:
        if message.body in ROOMS:
            self.session.leave(message.body)


def tick(server: SimpleWServer, interval: float, done: threading.Event) -> None:
    """Multicast ``tick N at HH:MM:SS.mmm`` to every client, and ``<room> tick N``
    to each room, every ``interval`` seconds until ``done``."""
    count = 0
    while not done.wait(interval):
        count += 1
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        server.multicast_text(f"tick {count} at {stamp}")
        for room in ROOMS:
            server.multicast_text(f"{room} tick {count}", room=room)


def main() -> None:
    parser = options(__doc__)
    parser.add_argument(
        "--interval",
        type=float,
        default=500,
        metavar="MS",
        help="milliseconds between two ticks (default 500)",
    )
    parser.add_argument(
        "--redis", metavar="URL", help="keep the history in Redis (survives a restart)"
    )
    args = parser.parse_args()

    server = SimpleWServer(args.host, args.port, recovery=True, redis_url=args.redis)
    server.add_static_content(str(WWW), "/", timeout=60)
    server.add_websocket_content(Rooms, "/websocket")
    done = threading.Event()
    threading.Thread(target=tick, args=(server, args.interval / 1000, done), daemon=True).start()
    serve(server, note=" (a live feed; restart me and the page misses nothing)", done=done)


if __name__ == "__main__":
    main()
