"""A small blocking simplew.v2 test client (docs/protocol.md section 5) on
websockets' sync client, for the in-memory recovery tests.

It keeps the client's position in every stream it holds (welcome, ``join``,
``leave``, ``reset`` and ``pub`` update it) and resumes with them; it checks
nothing beyond what a test asserts, so a test can send anything it likes.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

from websockets.sync.client import connect

TIMEOUT = 5.0


def compact(message: Any) -> str:
    return json.dumps(message, separators=(",", ":"))


def resume_message(session: str, streams: dict[str | None, tuple[str, int]]) -> dict[str, Any]:
    return {
        "type": "resume",
        "session": session,
        "streams": [[room, epoch, offset] for room, (epoch, offset) in streams.items()],
    }


class V2:
    """One ``simplew.v2`` connection.

    ``V2(port)`` opens a fresh session and reads its welcome. ``V2(port,
    resume=other)`` resumes ``other``'s session with ``other``'s positions;
    ``first`` replaces the resume message (a dict or str is sent as TEXT,
    bytes as BINARY, None sends nothing). ``welcome=False`` reads nothing.
    """

    def __init__(
        self,
        port: int,
        resume: V2 | None = None,
        *,
        path: str = "/ws",
        token: str | None = None,
        first: Any = ...,
        welcome: bool = True,
        query: str = "",
    ) -> None:
        self.session: str | None = None
        self.positions: dict[str | None, tuple[str, int]] = {}
        self.pubs: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        params = [query] if query else []
        if resume is not None or first is not ...:
            params.append("resume=1")
        url = f"ws://127.0.0.1:{port}{path}" + ("?" + "&".join(params) if params else "")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.ws = connect(
            url,
            subprotocols=["simplew.v2"],
            additional_headers=headers,
            proxy=None,
            compression=None,
            open_timeout=TIMEOUT,
            close_timeout=1,
            max_size=None,
        ).__enter__()
        if first is ...:
            first = None if resume is None else resume.resume_message()
        if first is not None:
            self.ws.send(first if isinstance(first, (str, bytes)) else compact(first))
        self.welcome: dict[str, Any] = {}
        if welcome:
            self.welcome = self.next()
            assert self.welcome["type"] == "welcome", self.welcome

    @property
    def subprotocol(self) -> str | None:
        return self.ws.subprotocol

    def resume_message(self) -> dict[str, Any]:
        assert self.session is not None
        return resume_message(self.session, self.positions)

    def next(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next message, applied to the positions held."""
        message = json.loads(self.ws.recv(timeout=timeout))
        self.messages.append(message)
        kind = message.get("type")
        if kind == "welcome":
            self.session = message["session"]
            self.positions = {e[0]: (e[1], e[2]) for e in message["streams"]}
        elif kind in ("join", "reset"):
            self.positions[message["room"]] = (message["epoch"], message["offset"])
        elif kind == "leave":
            self.positions.pop(message["room"], None)
        elif kind == "pub":
            self.pubs.append(message)
            self.positions[message["room"]] = (message["epoch"], message["offset"])
        return message

    def until(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Read until a message of type ``kind`` and return it."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(timeout=max(0.01, deadline - time.monotonic()))
            if message["type"] == kind:
                return message

    def ask(self, url: str, body: Any = None) -> Any:
        """Send a routed message; its ``msg`` reply (JSON decoded when it is)."""
        self.ws.send(compact({"url": url, "body": body}))
        text = self.until("msg")["text"]
        try:
            return json.loads(text)
        except ValueError:
            return text

    def within(self, seconds: float) -> list[dict[str, Any]]:
        """Every message that arrives within ``seconds``."""
        seen = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                seen.append(self.next(timeout=left))
            except TimeoutError:
                break
        return seen

    def texts_within(self, seconds: float) -> list[str]:
        return [m["text"] for m in self.within(seconds) if m["type"] == "pub"]

    def pubs_until(self, text: str, timeout: float = TIMEOUT) -> None:
        """Read until the pub of ``text`` arrived (it may have already)."""
        deadline = time.monotonic() + timeout
        while not (self.pubs and self.pubs[-1].get("text") == text):
            self.next(timeout=max(0.01, deadline - time.monotonic()))

    def reset(self) -> None:
        """Cut the TCP connection with a reset (no close handshake, no FIN)."""
        self.ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.ws.socket.close()
        self.close()

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
