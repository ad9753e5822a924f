"""A small HTTP/1.1 client for the static-file tests: ``Conn.request`` writes a
request line and headers as given (bytes, so ``..`` and odd escapes reach the
server unchanged) and reads the response; ``fetch`` does one request on a new
connection.

Used by test_static.py and test_static_stream.py.
"""

from __future__ import annotations

import socket


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:60]!r}>"


class Conn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed; unparsed: {self.buf[:200]!r}")
        self.buf += chunk

    def request(self, target: bytes, method: bytes = b"GET", headers: bytes = b"") -> Response:
        self.send(target, method, headers)
        return self.read(method)

    def send(self, target: bytes, method: bytes = b"GET", headers: bytes = b"") -> None:
        self.sock.sendall(
            method + b" " + target + b" HTTP/1.1\r\nHost: test\r\n" + headers + b"\r\n"
        )

    def read(self, method: bytes = b"GET") -> Response:
        """The next response on the connection (to a request of ``method``)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, rest = bytes(self.buf).split(b"\r\n\r\n", 1)
        self.buf = bytearray(rest)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            fields[name.lower()] = value.strip()
        length = 0 if method == b"HEAD" or status == 304 else int(fields["content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = bytes(self.buf[:length]), self.buf[length:]
        return Response(status, fields, body)


def fetch(port: int, target: bytes | str, method: bytes = b"GET", headers: bytes = b"") -> Response:
    if isinstance(target, str):
        target = target.encode()
    conn = Conn(port)
    try:
        return conn.request(target, method, headers)
    finally:
        conn.close()
