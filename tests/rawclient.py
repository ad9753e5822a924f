"""A blocking WebSocket client on a plain socket that can send any frame, valid or not."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
from typing import Any

TIMEOUT = 5.0


class RawClient:
    """A blocking WebSocket client on a plain socket that sends any frame it is told to."""

    def __init__(self, port: int, path: str = "/echo", extensions: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n"
                + (f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else "")
                + "\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed during the handshake"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        assert f"sec-websocket-accept: {accept}".lower().encode() in head.lower()
        self.head = head.decode("latin-1")
        self.rsv_allowed = extensions is not None

    @staticmethod
    def frame(
        opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, mask: bool = True
    ) -> bytes:
        head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
        n = len(payload)
        bit = 0x80 if mask else 0
        if n < 126:
            head += bytes([bit | n])
        elif n < 65536:
            head += bytes([bit | 126]) + struct.pack("!H", n)
        else:
            head += bytes([bit | 127]) + struct.pack("!Q", n)
        if not mask:
            return head + payload
        key = os.urandom(4)
        masked = (
            bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            if n < 4096
            else (
                int.from_bytes(payload, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")
            ).to_bytes(n, "big")
        )
        return head + key + masked

    def send(self, opcode: int, payload: bytes = b"", **kwargs: Any) -> None:
        self.sock.sendall(self.frame(opcode, payload, **kwargs))

    def send_close(self, code: int | None = 1000, reason: bytes = b"") -> None:
        self.send(0x8, b"" if code is None else struct.pack("!H", code) + reason)

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"EOF with {len(self.buf)} of {n} bytes")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv(self) -> tuple[int, bool, bytes]:
        """The next frame: (opcode, fin, payload); server frames are never masked."""
        b0, b1 = self._read(2)
        assert not b1 & 0x80, "server frames must not be masked"
        assert not b0 & (0x30 if self.rsv_allowed else 0x70), "server set reserved bits"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read(8))
        self.last_rsv1 = bool(b0 & 0x40)
        return b0 & 0x0F, bool(b0 & 0x80), self._read(n)

    def recv_close(self) -> tuple[int, str]:
        """Read up to the CLOSE frame (skipping data frames); return its code and reason."""
        while True:
            opcode, fin, payload = self.recv()
            if opcode == 0x8:
                assert len(payload) >= 2
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8")

    def expect_eof(self) -> None:
        """The server drops the TCP connection (EOF or reset) with nothing more to read."""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return
            if not chunk:
                return
            self.buf += chunk
            raise AssertionError(f"unexpected data after CLOSE: {self.buf[:50]!r}")

    def expect_failure(self, code: int) -> str:
        """The server fails the connection with ``code``; answer like a client, see EOF."""
        got, reason = self.recv_close()
        assert got == code, (got, reason)
        try:
            self.send_close(got)
        except OSError:
            pass  # it may already have dropped us
        self.expect_eof()
        return reason

    def close(self) -> None:
        self.sock.close()
