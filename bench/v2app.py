"""The server of the simplew.v2 benchmarks (``bench/streams.py``, ``bench/storm.py``,
``bench/recovery.py``): one process, WebSocket endpoint ``/ws``.

    python bench/v2app.py PORT [--redis URL] [--recovery 0|1] [--max-rooms N]
        [--history-size N]

WebSocket routes (envelopes ``{"url": ..., "body": ...}``):

    /ws/bench/join  body: a room or a list of rooms -> joins them, answers their count
    /ws/bench/pid                                   -> {"pid": ..., "rooms": n}

HTTP:

    POST /burst?room=R&n=N&size=S   N multicasts of S bytes to R (none: everyone), one callback
    POST /spread?rooms=K&n=N&start=I&prefix=P
                                    N multicasts of 64 bytes, the j-th to room P<(I+j) % K>
    POST /publish?room=R            body: text, one multicast (as tests/apps/feed.py)
    POST /bcast?n=N&size=S          N multicasts to everyone (bench/recovery.py fanout)
    GET  /stats                     the Redis layer's counters (``backplane.stats()``)
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from simplew import Controller, SimpleWServer, WebSocketMessage, route

PAD = "x" * 4096


def make_server(args: argparse.Namespace) -> SimpleWServer:
    server = SimpleWServer(
        "127.0.0.1",
        args.port,
        recovery=bool(args.recovery),
        redis_url=args.redis or None,
        max_rooms_per_session=args.max_rooms,
        history_size=args.history_size,
        access_log=False,
        ping_interval=None,
        metrics=True,
        shutdown_grace=1.0,
    )

    @route("/bench")
    class BenchController(Controller):
        @route("WEBSOCKET", "/join")
        def join(self, message: WebSocketMessage) -> int:
            rooms = message.body if isinstance(message.body, list) else [message.body]
            for room in rooms:
                self.session.join(room)
            return len(rooms)

        @route("WEBSOCKET", "/pid")
        def pid(self, message: WebSocketMessage) -> dict[str, Any]:
            return {"pid": os.getpid(), "rooms": len(self.session.rooms)}

    def burst(request: Any) -> dict[str, Any]:
        room = request.query.get("room") or None
        n = int(request.query.get("n", "1"))
        size = int(request.query.get("size", "64"))
        for i in range(n):
            head = f"b{i}:"
            server.multicast_text(head + PAD[: max(0, size - len(head))], room=room)
        return {"n": n}

    def spread(request: Any) -> dict[str, Any]:
        rooms = int(request.query.get("rooms", "1000"))
        n = int(request.query.get("n", "1000"))
        start = int(request.query.get("start", "0"))
        prefix = request.query.get("prefix", "r")
        text = "s:" + PAD[:62]
        for j in range(start, start + n):
            server.multicast_text(text, room=f"{prefix}{j % rooms}")
        return {"n": n}

    def publish(request: Any) -> dict[str, Any]:
        room = request.query.get("room") or None
        server.multicast_text(request.body.decode("utf-8"), room=room)
        return {"room": room}

    def bcast(request: Any) -> dict[str, Any]:
        n = int(request.query.get("n", "1"))
        size = int(request.query.get("size", "64"))
        for _ in range(n):
            server.multicast_text(PAD[:size])
        return {"n": n}

    def stats() -> dict[str, Any]:
        backplane = server.backplane
        return {"pid": os.getpid(), "stats": None if backplane is None else backplane.stats()}

    server.add_websocket_content(BenchController, "/ws")
    server.map_post("/burst", burst)
    server.map_post("/spread", spread)
    server.map_post("/publish", publish)
    server.map_post("/bcast", bcast)
    server.map_get("/stats", stats)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--redis", default="")
    parser.add_argument("--recovery", type=int, default=1)
    parser.add_argument("--max-rooms", type=int, default=128)
    parser.add_argument("--history-size", type=int, default=10_000)
    make_server(parser.parse_args()).run()


if __name__ == "__main__":
    main()
