"""The bytes on the wire: parsers for what the server writes (HTTP/1.1
responses, WebSocket frames) that raise AssertionError on anything malformed,
a builder for client frames, and the helpers harnesses read their input with.
"""

from __future__ import annotations

import re
import struct

UPGRADE_HEAD = (
    b"Host: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def upgrade_request(path: str = "/ws", extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\n" + UPGRADE_HEAD + extra + b"\r\n"


# -- parsing what the server writes ------------------------------------------------

_STATUS = re.compile(rb"HTTP/1\.1 ([1-5]\d\d) [^\r\n]+\r\n")
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+): ?([^\r\n]*)\r\n")


class Response(tuple):
    """(status, headers dict with lower-case names, body)."""

    @property
    def status(self) -> int:
        return self[0]

    @property
    def headers(self) -> dict:
        return self[1]

    @property
    def body(self) -> bytes:
        return self[2]


def parse_responses(out: bytes, head_flags: list[bool]) -> tuple[list[Response], int]:
    """Split ``out`` into HTTP/1.1 responses; raise AssertionError on anything
    malformed. ``head_flags[i]``: the i-th answer by the handler was to a HEAD
    request (its body is left out); answers past the list are rejections.
    Returns the responses and the offset where the bytes after a
    ``101 Switching Protocols`` start (``len(out)`` without one)."""
    responses: list[Response] = []
    pos = 0
    answered = 0
    while pos < len(out):
        m = _STATUS.match(out, pos)
        if m is None:
            raise AssertionError(
                f"not an HTTP status line at {pos}: {bytes(out[pos : pos + 80])!r}"
            )
        status = int(m.group(1))
        pos = m.end()
        headers: dict[bytes, bytes] = {}
        while not out.startswith(b"\r\n", pos):
            h = _HEADER.match(out, pos)
            if h is None:
                raise AssertionError(f"malformed header line: {bytes(out[pos : pos + 80])!r}")
            name = h.group(1).lower().decode()
            if name in headers and name not in ("vary", "allow"):
                raise AssertionError(f"header {name} twice in one response")
            headers[name] = h.group(2).decode("latin-1")
            pos = h.end()
        pos += 2
        if status == 101:
            responses.append(Response((status, headers, b"")))
            return responses, pos
        if status == 100:
            if headers:
                raise AssertionError("100 Continue with headers")
            responses.append(Response((status, headers, b"")))
            continue
        is_head = head_flags[answered] if answered < len(head_flags) else False
        answered += 1
        bodiless = status in (204, 304)
        length = headers.get("content-length")
        if bodiless:
            if length is not None:
                raise AssertionError(f"{status} with a Content-Length")
            body = b""
        else:
            if length is None or not length.isdigit():
                raise AssertionError(f"{status} without a valid Content-Length: {headers}")
            n = 0 if is_head else int(length)
            body = bytes(out[pos : pos + n])
            if len(body) != n:
                raise AssertionError(f"{status} body shorter than its Content-Length")
            pos += n
        responses.append(Response((status, headers, body)))
        if headers.get("connection", "").lower() == "close" and pos != len(out):
            raise AssertionError(
                f"bytes after a Connection: close response: {bytes(out[pos : pos + 80])!r}"
            )
    return responses, pos


class Frame(tuple):
    """(fin, rsv1, opcode, payload) of a server frame."""


def parse_server_frames(data: bytes) -> list[Frame]:
    """Frames the server sent; raise AssertionError on anything a client must
    reject (masked, rsv2/3, unknown opcode, fragmented control frame, a
    non-minimal length, bytes cut short, anything after a CLOSE)."""
    frames = []
    pos = 0
    closed = False
    while pos < len(data):
        if closed:
            raise AssertionError(f"bytes after the server's CLOSE: {bytes(data[pos : pos + 40])!r}")
        if len(data) - pos < 2:
            raise AssertionError("truncated frame header")
        b0, b1 = data[pos], data[pos + 1]
        fin, rsv1, rsv23, opcode = b0 >> 7, (b0 >> 6) & 1, (b0 >> 4) & 3, b0 & 15
        if rsv23:
            raise AssertionError("server frame with RSV2/RSV3")
        if b1 & 0x80:
            raise AssertionError("masked server frame")
        if opcode not in (0, 1, 2, 8, 9, 10):
            raise AssertionError(f"server frame with opcode {opcode}")
        n = b1 & 127
        pos += 2
        if n == 126:
            n = struct.unpack_from("!H", data, pos)[0]
            pos += 2
            if n < 126:
                raise AssertionError("non-minimal 16-bit length")
        elif n == 127:
            n = struct.unpack_from("!Q", data, pos)[0]
            pos += 8
            if n < 65536:
                raise AssertionError("non-minimal 64-bit length")
        if opcode >= 8 and (n > 125 or not fin):
            raise AssertionError("bad control frame from the server")
        payload = bytes(data[pos : pos + n])
        if len(payload) != n:
            raise AssertionError("frame payload cut short")
        pos += n
        if opcode == 8:
            closed = True
            if n == 1:
                raise AssertionError("CLOSE with a one-byte payload")
            if n >= 2:
                code = struct.unpack("!H", payload[:2])[0]
                if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
                    raise AssertionError(f"server sent close code {code}")
                payload[2:].decode("utf-8")
        frames.append(Frame((fin, rsv1, opcode, payload)))
    return frames


def close_code(frame: Frame) -> int | None:
    payload = frame[3]
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


# -- building client frames ----------------------------------------------------------


def client_frame(
    opcode: int,
    payload: bytes,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x11\x22\x33\x44",
    length_form: int = 0,
) -> bytes:
    """One client frame. ``length_form``: 0 minimal, 1 16-bit, 2 64-bit
    (non-minimal forms are a protocol error); ``mask=None`` leaves it unmasked."""
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 15)
    n = len(payload)
    mbit = 0x80 if mask is not None else 0
    if length_form == 0 and n < 126:
        head = bytes((b0, mbit | n))
    elif length_form <= 1 and n < 65536:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    if not n:
        return head + mask
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


class Reader:
    """Reads a fuzzer input front to back (simpler to write seeds for than
    atheris.FuzzedDataProvider); past the end every read gives zeros/empty."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def int_in(self, lo: int, hi: int) -> int:
        """An int in [lo, hi], from 1 byte (a span under 256) or 2 big-endian bytes."""
        span = hi - lo + 1
        raw = self.byte() if span <= 256 else (self.byte() << 8) | self.byte()
        return lo + raw % span

    def flag(self) -> bool:
        return bool(self.byte() & 1)

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


def split_points(data: bytes, seed: int, count: int) -> list[bytes]:
    """``data`` cut into at most ``count + 1`` pieces at positions drawn from ``seed``."""
    if count <= 0 or len(data) < 2:
        return [data]
    cuts = set()
    x = seed or 1
    for _ in range(count):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        cuts.add(1 + x % (len(data) - 1))
    out, prev = [], 0
    for c in sorted(cuts):
        out.append(data[prev:c])
        prev = c
    out.append(data[prev:])
    return out
