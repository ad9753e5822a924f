"""A test application: its WebSocket clients drive the server's multicast.

    simplew serve tests.apps.relay:server --port 8765 [--redis redis://...] [--workers 2]

One endpoint, ``/ws``; each TEXT message is a command, answered to its sender
only where it says so:

    pid                      -> "pid <process id>"   (which worker the client is on)
    join <room>              -> "joined <room>"
    leave <room>             -> "left <room>"
    rooms                    -> "rooms <json list>"
    all <text>               server.multicast_text(text)
    room <room> <text>       server.multicast_text(text, room=room)
    burst <count> <size>     count multicasts of size bytes ("<i>:xxx..."), in one callback
    stats                    -> "stats <json>": sessions, rooms and the backplane's counters

A BINARY message is multicast as it is, to every client.
"""

from __future__ import annotations

import json
import os

from simplew import Session, SimpleWServer


def on_message(session: Session, data: str | bytes) -> None:
    if isinstance(data, bytes):
        server.multicast_binary(data)
        return
    command, _, rest = data.partition(" ")
    if command == "all":
        server.multicast_text(rest)
    elif command == "room":
        room, _, text = rest.partition(" ")
        server.multicast_text(text, room=room)
    elif command == "join":
        session.join(rest)
        session.send_text(f"joined {rest}")
    elif command == "leave":
        session.leave(rest)
        session.send_text(f"left {rest}")
    elif command == "rooms":
        session.send_text("rooms " + json.dumps(sorted(session.rooms)))
    elif command == "pid":
        session.send_text(f"pid {os.getpid()}")
    elif command == "burst":
        count, size = (int(x) for x in rest.split())
        for i in range(count):
            head = f"{i}:"
            server.multicast_text(head + "x" * max(0, size - len(head)))
    elif command == "stats":
        backplane = server.backplane
        session.send_text(
            "stats "
            + json.dumps(
                {
                    "pid": os.getpid(),
                    "sessions": len(server.sessions),
                    "rooms": server.rooms,
                    "backplane": None if backplane is None else backplane.stats(),
                }
            )
        )
    else:
        session.send_text(f"unknown {command}")


server = SimpleWServer("127.0.0.1", 8765)
server.add_websocket_content("/ws", on_message=on_message)
