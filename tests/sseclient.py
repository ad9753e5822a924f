"""A Server-Sent Events reader over a raw socket, for the tests: it parses the
event stream as a browser does (lines end with CRLF, CR or LF; a blank line
ends a block; ``data`` lines are joined with LF), and keeps every block,
comments and id-only ones too."""

from __future__ import annotations

import base64
import json
import socket
import time
from typing import Any


def decode_id(event_id: str) -> list[list[Any]]:
    """The ``[[room, epoch, offset], ...]`` of an event id."""
    return json.loads(base64.urlsafe_b64decode(event_id + "=" * (-len(event_id) % 4)))


def positions(event_id: str) -> dict[str | None, tuple[str, int]]:
    return {room: (epoch, offset) for room, epoch, offset in decode_id(event_id)}


class EventReader:
    """``GET target`` on ``port``; :meth:`read` returns the next blocks."""

    def __init__(
        self,
        port: int,
        target: str,
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5.0)
        self.sock.connect(("127.0.0.1", port))
        lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1]) if status_line else 0
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines)
        }
        self.ended = False
        self.last_id = ""
        self.received = 0  # events with data read by events()
        self.text = b""
        self._cr = b""
        if self.status == 200:
            self._feed(self.buffer)

    def body(self) -> bytes:
        """The rest of a refusal (Content-Length bytes)."""
        size = int(self.headers.get("content-length", "0"))
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        return self.buffer[:size]

    def _feed(self, chunk: bytes) -> None:
        """Add bytes read, line ends made LF (a CR at the end waits: CRLF may follow)."""
        data = self._cr + chunk
        self._cr = b"\r" if data.endswith(b"\r") else b""
        if self._cr:
            data = data[:-1]
        self.text += data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def _block(self) -> dict[str, Any] | None:
        end = self.text.find(b"\n\n")
        if end < 0:
            return None
        lines, self.text = self.text[:end], self.text[end + 2 :]
        block: dict[str, Any] = {"event": None, "data": None, "id": None, "comments": []}
        data: list[str] = []
        for line in lines.decode("utf-8").split("\n"):
            if line.startswith(":"):
                block["comments"].append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name in ("event", "id", "retry"):
                block[name] = value
        if data:
            block["data"] = "\n".join(data)
        if block["id"] is not None:
            self.last_id = block["id"]
        return block

    def read(self, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The next ``count`` blocks (fewer if the stream ends)."""
        blocks: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(blocks) < count:
            block = self._block()
            if block is not None:
                blocks.append(block)
                continue
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"only {len(blocks)} of {count} blocks") from None
            except ConnectionError:
                chunk = b""
            if not chunk:
                self.ended = True
                break
            self._feed(chunk)
        return blocks

    def events(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The next ``count`` events with data (id-only blocks and pings are skipped)."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            blocks = self.read(1, max(0.01, deadline - time.monotonic()))
            if not blocks:
                raise AssertionError(f"the stream ended after {len(found)} events")
            if blocks[0]["data"] is not None:
                found.append(blocks[0])
                self.received += 1
        return found

    def close(self) -> None:
        self.sock.close()
