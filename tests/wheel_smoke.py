"""Smoke test of an installed simplew (a built wheel): ``python tests/wheel_smoke.py``.

Run by cibuildwheel's test-command on every wheel it builds and by
tests/test_wheel.py. Standard library only: it imports every compiled module
of ``simplew._fast``, starts a server on a free loopback port, fetches a
static file, and does a WebSocket echo, a routed controller call and a
multicast with a raw-socket client, then closes cleanly and stops the server.
Run it from outside the source tree, or it tests the sources instead.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import importlib
import importlib.machinery
import json
import os
import socket
import struct
import sys
import tempfile

EXPECTED = {"frames", "deflate", "gate", "connection", "router", "hub", "http"}
TIMEOUT = 10.0


def compiled_modules() -> set[str]:
    import simplew._fast as fast

    found = set()
    for name in os.listdir(os.path.dirname(fast.__file__)):
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if name.endswith(suffix):
                found.add(name[: -len(suffix)])
                break
    return found


class Client:
    """A minimal blocking WebSocket client (masked frames, no extensions)."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
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
        )
        assert b"sec-websocket-accept: " + accept.lower() in head.lower(), head

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv(self) -> tuple[int, bytes]:
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        assert b0 & 0x80, "fragmented frame"
        return b0 & 0x0F, self._read(n)


def main() -> None:
    import simplew
    from simplew import Controller, SimpleWServer, WebSocketMessage, route

    found = compiled_modules()
    assert EXPECTED <= found, f"compiled modules missing: {sorted(EXPECTED - found)}"
    for name in sorted(found):
        importlib.import_module(f"simplew._fast.{name}")

    @route("/smoke")
    class SmokeController(Controller):
        @route("WEBSOCKET", "/echo")
        def echo(self, message: WebSocketMessage) -> dict:
            return {"echo": message.body}

    def echo(session, data) -> None:
        if isinstance(data, str):
            session.send_text(data)
        else:
            session.send_binary(data)

    with tempfile.TemporaryDirectory() as www:
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write("<!doctype html><title>smoke</title>")
        server = SimpleWServer("127.0.0.1", 0)
        server.add_static_content(www, "/")
        server.add_websocket_content("/echo", on_message=echo)
        server.add_websocket_content(SmokeController, "/ws")
        server.start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.status == 200, response.status
            assert b"smoke" in response.read()
            conn.close()

            client = Client(server.port, "/echo")
            client.send(0x1, "héllo".encode())
            assert client.recv() == (0x1, "héllo".encode())
            big = os.urandom(100_000)
            client.send(0x2, big)
            assert client.recv() == (0x2, big)

            routed = Client(server.port, "/ws")
            routed.send(0x1, json.dumps({"url": "/ws/smoke/echo", "body": [1, 2]}).encode())
            opcode, data = routed.recv()
            assert opcode == 0x1 and json.loads(data) == {"echo": [1, 2]}, data

            server.multicast_text("to all")
            for c in (client, routed):
                assert c.recv() == (0x1, b"to all")

            client.send(0x8, struct.pack("!H", 1000))
            assert client.recv() == (0x8, struct.pack("!H", 1000))
            routed.sock.close()
            client.sock.close()
        finally:
            server.stop()
    print(
        f"simplew wheel smoke test passed: {simplew.__file__} on Python "
        f"{sys.version.split()[0]} ({sys.platform})"
    )


if __name__ == "__main__":
    main()
