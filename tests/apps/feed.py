"""A test application for recovery: simplew.v2 clients on ``/ws``.

    simplew serve tests.apps.feed:server --recovery [--redis URL] [--workers 2]

Routed messages (``{"url": ..., "body": ...}``):

    /ws/feed/join   body: room   -> joins it, answers "joined <room>"
    /ws/feed/pid                 -> {"pid": process id, "recovered": bool, "rooms": [...]}
    /ws/feed/burst  body: n      -> n multicasts of 64 bytes, in one callback
    /ws/feed/stats               -> the stream's counters
    /ws/feed/presence body: room -> who is in the room (public ids, users), on every process

A plain ``POST /publish?room=R`` (body: text) multicasts, for publishers.
"""

from __future__ import annotations

import os
from typing import Any

from simplew import Controller, SimpleWServer, WebSocketMessage, route


@route("/feed")
class FeedController(Controller):
    @route("WEBSOCKET", "/join")
    def join(self, message: WebSocketMessage) -> str:
        self.session.join(message.body)
        return "joined " + message.body

    @route("WEBSOCKET", "/pid")
    def pid(self, message: WebSocketMessage) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "recovered": self.session.recovered,
            "rooms": sorted(self.session.rooms),
        }

    @route("WEBSOCKET", "/burst")
    def burst(self, message: WebSocketMessage) -> None:
        for i in range(int(message.body)):
            server.multicast_text(f"b{i}:" + "x" * 60)

    @route("WEBSOCKET", "/stats")
    def stats(self, message: WebSocketMessage) -> dict[str, Any]:
        backplane = server.backplane
        return {"pid": os.getpid(), "stats": None if backplane is None else backplane.stats()}

    @route("WEBSOCKET", "/presence")
    async def presence(self, message: WebSocketMessage) -> list[dict[str, object]]:
        return await server.presence_async(message.body)


def publish(request: Any) -> dict[str, Any]:
    room = request.query.get("room") or None
    server.multicast_text(request.body.decode("utf-8"), room=room)
    return {"room": room}


server = SimpleWServer("127.0.0.1", 8765)
server.add_websocket_content(FeedController, "/ws")
server.map_post("/publish", publish)
