"""A raw HTTP/1.1 client for the tests: requests are written byte for byte, so
that nothing fixes them up, and responses are parsed off the byte stream.

Used by test_http.py and test_hardening.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Response:
    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:60]!r}>"


class Conn:
    """One TCP connection; reads HTTP/1.1 responses off the byte stream."""

    def __init__(self, port: int, timeout: float = 5.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise EOFError(f"connection closed; unparsed: {self.buf[:200]!r}")
        self.buf += chunk

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, head: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        version, status, reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            assert name.lower() not in headers, f"duplicate header {name}"
            headers[name.lower()] = value.strip()
        code = int(status)
        if head or code < 200 or code in (204, 304):
            body = b""
        else:
            body = self.read_exact(int(headers["content-length"]))
        return Response(code, reason, headers, body)

    def at_eof(self, timeout: float = 3.0) -> bool:
        """True when the server closes within ``timeout`` with nothing more unread."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return not self.buf
                self.buf += chunk
        except TimeoutError:
            return False
        except ConnectionResetError:
            return False

    def still_open(self, wait: float = 0.2) -> bool:
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(1)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(5.0)
        self.buf += chunk
        return bool(chunk)


def get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: test\r\n{extra}\r\n".encode("latin-1")


def exchange(port: int, data: bytes, head: bool = False) -> Response:
    conn = Conn(port)
    try:
        conn.send(data)
        return conn.read_response(head)
    finally:
        conn.close()


def assert_serving(port: int) -> None:
    """A new client gets 200: whatever happened before did not break the server."""
    response = exchange(port, get("/hello.txt"))
    assert response.status == 200
    assert response.body == b"hello\n"


def assert_rejected(port: int, data: bytes, status: int, *, lingering: bool = False) -> Response:
    """``data`` gets ``status`` with Connection: close, the server closes, and keeps serving."""
    conn = Conn(port)
    try:
        conn.send(data)
        response = conn.read_response()
        assert response.status == status, response
        assert response.headers.get("connection") == "close"
        assert conn.at_eof(), "the server should close the connection"
    finally:
        conn.close()
    assert_serving(port)
    return response


# -- the WebSocket upgrade, by hand ------------------------------------------


def upgrade_request(path: str = "/ws") -> tuple[bytes, str]:
    key = base64.b64encode(os.urandom(16)).decode()
    data = (
        f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
    return data, accept
