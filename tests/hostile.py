"""A hostile ``simplew.v2`` server for the client tests: a ``websockets`` server on
a loopback port that selects ``simplew.v2`` and sends, on its n-th connection,
the messages a script gives it (crafted welcomes, pubs, joins, nested JSON...).

It records each connection: its request path (``resume=1`` in the query), the
resume message the client sent first when it resumed, when it opened, when it
ended and the CLOSE code and reason the client sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

SESSION = "hostile_session_0123456789"  # 26 characters of [A-Za-z0-9_-]
EPOCH = "hostileEpoch"
OMIT = object()  # a field value: leave the field out


def entry(
    room: Any = None, epoch: Any = EPOCH, offset: Any = 5, recovered: Any = False, missed: Any = 0
) -> list[Any]:
    """One entry of a welcome's ``streams`` (any values: the tests craft bad ones)."""
    return [room, epoch, offset, recovered, missed]


def welcome(**fields: Any) -> str:
    """A valid fresh welcome (the broadcast stream at offset 5), with ``fields``
    changed, added or left out (``OMIT``)."""
    message = {
        "type": "welcome",
        "session": SESSION,
        "recovered": False,
        "missed": 0,
        "streams": [entry()],
    }
    return encode(message, fields)


def recovered(*streams: list[Any], **fields: Any) -> str:
    """A valid recovered welcome of ``streams`` (entries; by default the broadcast
    stream recovered at offset 6), ``missed`` their sum, with ``fields`` changed."""
    entries = list(streams) or [entry(offset=6, recovered=True)]
    message = {
        "type": "welcome",
        "session": SESSION,
        "recovered": True,
        "missed": sum(e[4] for e in entries),
        "streams": entries,
    }
    return encode(message, fields)


def pub(**fields: Any) -> str:
    """A valid text pub of the broadcast stream (offset 7), with ``fields`` changed,
    added or left out."""
    message = {"type": "pub", "room": None, "epoch": EPOCH, "offset": 7, "text": "x"}
    return encode(message, fields)


def join(room: str = "red", **fields: Any) -> str:
    """A valid join of ``room`` at offset 3, with ``fields`` changed."""
    return encode({"type": "join", "room": room, "epoch": EPOCH, "offset": 3}, fields)


def leave(room: str = "red", **fields: Any) -> str:
    return encode({"type": "leave", "room": room}, fields)


def reset(room: str | None = "red", **fields: Any) -> str:
    """A valid reset of ``room`` to epoch ``newEpoch`` offset 0, with ``fields`` changed."""
    return encode({"type": "reset", "room": room, "epoch": "newEpoch", "offset": 0}, fields)


def encode(message: dict[str, Any], fields: dict[str, Any]) -> str:
    message = {**message, **fields}
    return json.dumps({k: v for k, v in message.items() if v is not OMIT}, separators=(",", ":"))


def nested(depth: int = 100_000) -> str:
    """JSON nested ``depth`` arrays deep (Python's json raises RecursionError)."""
    return "[" * depth + "]" * depth


@dataclass
class Connection:
    path: str
    opened: float
    resume: Any = None  # the client's first message (parsed) when the path has resume=1
    ended: float = 0.0
    code: int | None = None  # the client's CLOSE code, None without a CLOSE
    reason: str = ""
    done: threading.Event = field(default_factory=threading.Event)


# script(index, path) -> (messages to send: str as TEXT, bytes as BINARY;
# seconds to hold the connection after them: None until the client closes it)
Script = Callable[[int, str], tuple[list[str | bytes], float | None]]


class HostileServer:
    """``with HostileServer(script) as server:`` serves ``ws://127.0.0.1:{server.port}/``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._server = serve(
            self._handle,
            "127.0.0.1",
            0,
            subprotocols=["simplew.v2"],
            compression=None,
            max_size=None,  # a resume message of thousands of rooms
            ping_interval=None,
            close_timeout=2,
        )
        self.port = self._server.socket.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join(5)

    def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        with self._lock:
            index = len(self.connections)
            record = Connection(path, time.monotonic())
            self.connections.append(record)
        try:
            if "resume=1" in path:
                record.resume = json.loads(ws.recv(timeout=5))
            messages, hold = self.script(index, path)
            for message in messages:
                ws.send(message)
            if hold is None:
                for _ in ws:  # until the client closes
                    pass
            else:
                time.sleep(hold)
                ws.close()
        except ConnectionClosed:
            pass
        finally:
            record.ended = time.monotonic()
            if ws.protocol.close_rcvd is not None:
                record.code, record.reason = (
                    ws.protocol.close_rcvd.code,
                    ws.protocol.close_rcvd.reason,
                )
            record.done.set()

    def wait_connections(self, count: int, timeout: float = 10.0) -> list[Connection]:
        """The first ``count`` connections, once each has ended."""
        deadline = time.monotonic() + timeout
        while len(self.connections) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} connections not made within {timeout} s")
            time.sleep(0.01)
        for record in self.connections[:count]:
            if not record.done.wait(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"connection to {record.path} not ended in time")
        return self.connections[:count]
