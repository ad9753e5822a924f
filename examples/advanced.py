"""Advanced client/server communication: the third example of the WebSockets guide.

Serves ``www/advanced`` and a WebSocket endpoint routed to ``UserController``:
``{"url": "/websocket/user/index", "body": "hello"}`` is answered
``{"hello": "world"}``; ``{"url": "/websocket/user/create", "body": {"name":
"John Doe", "enabled": true}}`` is mapped onto a ``User``, given an id and a
creation time, and sent back. A body that does not fit ``User`` is answered
``{"error": "bad_body", ...}`` by the server.

    python examples/advanced.py [--host 0.0.0.0] [--port 2015]
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _serve import options, serve
from simplew import Controller, SimpleWServer, WebSocketMessage, route

WWW = Path(__file__).resolve().parent.parent / "www" / "advanced"


@dataclass
class User:
    id: uuid.UUID | None = None
    name: str = ""
    creation: datetime | None = None
    enabled: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id) if self.id else None,
            "name": self.name,
            "creation": self.creation.isoformat() if self.creation else None,
            "enabled": self.enabled,
        }


@route("/user")
class UserController(Controller):
    @route("WEBSOCKET", "/index")
    def index(self, message: WebSocketMessage) -> dict[str, str]:
        print(f"index received {message.body!r}", flush=True)
        return {"hello": "world"}  # a dict return value is sent as JSON text

    @route("WEBSOCKET", "/create")
    def create(self, message: WebSocketMessage) -> dict[str, Any]:
        user = message.map_body(User)  # BodyMappingError → {"error": "bad_body", ...}
        user.id = uuid.uuid4()
        user.creation = datetime.now(timezone.utc)
        return user.to_json()


def main() -> None:
    parser = options(__doc__)
    args = parser.parse_args()

    server = SimpleWServer(args.host, args.port)
    server.add_static_content(str(WWW), "/", timeout=86400)
    server.add_websocket_content("/websocket")
    serve(server)


if __name__ == "__main__":
    main()
