"""Harness 1: the HTTP front (simplew._fast.http.HttpProtocol) fed arbitrary bytes.

Input: byte 0 chooses how the bytes arrive (bits 0-2: number of cuts,
bits 3-4: the write buffer's high-water mark, bit 5: the client stops reading,
bit 6: 6 s pass between pieces, so the header timeout fires); byte 1 seeds the
cut positions; the rest is what the client sends. After it the client shuts
its side and time passes until the server lets go.

Invariants: no exception escapes and nothing is logged at ERROR; what the
server writes is a sequence of well-formed HTTP/1.1 responses (status line,
headers without line breaks, a Content-Length that matches the body; nothing
after ``Connection: close``), optionally followed after a 101 by well-formed
WebSocket frames; unless the connection ends early (Connection: close, an
upgrade, a timeout), exactly one final answer per complete request; no 500; no file from
outside the static root, no dotfile; the
connection is always released; while the transport is paused (the client
does not read) the server writes at most one more answer.
"""

from __future__ import annotations

import httptools

import support
from support import Client
from targets import SECRET, check_released, server
from wire import close_code, parse_responses, parse_server_frames, split_points, upgrade_request

HIGH_WATER = (1 << 16, 64, 512, 1)
stats = support.stats


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    s = server()
    s.head_flags = []
    flags, seed, payload = data[0], data[1], data[2:]
    pieces = split_points(payload, seed, flags & 7)
    support.run(_drive(s, pieces, HIGH_WATER[(flags >> 3) & 3], bool(flags & 32), bool(flags & 64)))


async def _drive(s, pieces: list[bytes], high: int, stalled_reader: bool, slow: bool) -> None:
    client = Client(s, high, reads=not stalled_reader)
    t = client.transport
    for piece in pieces:
        if t.lost:
            break
        await client.send(piece)
        if slow:
            support.loop().advance(6.0)
            await support.settle()
    await client.finish()
    out = bytes(t.out)
    assert SECRET not in out, "a file outside the static root, or a dotfile, was served"
    responses, rest = parse_responses(out, s.head_flags)
    closing = any(r.headers.get("connection", "").lower() == "close" for r in responses)
    expected = None if slow or closing or rest < len(out) else _complete_requests(b"".join(pieces))
    if expected is not None:
        answers = sum(1 for r in responses if r.status >= 200)
        assert answers == expected, f"{expected} complete requests, {answers} answers"
        support.note("answers counted")
    for r in responses:
        support.note(f"status {r.status}")
        assert r.status != 500, f"500 for client input: {r.body[:200]!r}"
        assert r.status < 500 or r.status == 503, r
    if rest == len(out):
        # back-pressure: once paused, at most the answer already computed goes out
        assert t.most_paused_writes <= 1, f"{t.most_paused_writes} writes in one pause"
    if rest < len(out):
        frames = parse_server_frames(out[rest:])
        support.note("upgraded")
        for f in frames:
            if f[2] == 8:
                support.note(f"ws close {close_code(f)}")
    check_released(s)


class _Counter:
    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


def _complete_requests(data: bytes) -> int | None:
    """How many whole requests ``data`` holds, by a parser of its own (None
    when it asks for an upgrade, which this count does not follow)."""
    counter = _Counter()
    try:
        httptools.HttpRequestParser(counter).feed_data(data)
    except httptools.HttpParserUpgrade:
        return None
    except httptools.HttpParserError:
        pass
    return counter.complete


def seeds() -> dict[str, bytes]:
    up = upgrade_request
    plain = b"\x00\x00"
    cut = bytes((3, 77))
    return {
        "get_index": plain + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "pipelined": plain + b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /sub/ HTTP/1.1\r\nHost: x\r\n\r\n"
        b'GET /cached/sub/b.css HTTP/1.1\r\nHost: x\r\nIf-None-Match: "x"\r\n\r\n',
        "http10_keepalive": plain + b"GET /hello?name=z HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        b"GET /healthz HTTP/1.0\r\n\r\n",
        "rest_get": cut + b"GET /api/items/7?verbose=yes&limit=3&kind=b&when=2024-01-02T03:04:05Z"
        b"&uid=12345678-1234-5678-1234-567812345678 HTTP/1.1\r\nHost: x\r\n\r\n",
        "rest_post_chunked": cut + b"POST /api/users HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n"
        b'10\r\n{"name":"a","age\r\n4\r\n":3}\r\n0\r\n\r\n',
        "rest_expect": plain + b"PUT /api/users/bob HTTP/1.1\r\nExpect: 100-continue\r\n"
        b'Content-Length: 7\r\n\r\n{"a":1}',
        "async_pipelined": bytes((0x28, 0)) + b"GET /api/slow?n=1 HTTP/1.1\r\n\r\n"
        b"GET /api/slow?n=2 HTTP/1.1\r\n\r\n" * 3,
        "cors_preflight": plain + b"OPTIONS /api/users HTTP/1.1\r\nOrigin: http://a.example\r\n"
        b"Access-Control-Request-Method: POST\r\n\r\n",
        "upgrade": cut
        + up("/ws")
        + b"\x81\x85\x11\x22\x33\x44"
        + bytes(c ^ m for c, m in zip(b"hello", b"\x11\x22\x33\x44\x11")),
        "upgrade_deflate": plain
        + up("/wsz", b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"),
        "upgrade_h2c": plain + b"GET /a.txt HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        b"GET / HTTP/1.1\r\n\r\n",
        "upgrade_no_endpoint": plain + up("/nowhere"),
        "bad_request": plain + b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        "traversal": plain + b"GET /%2e%2e/secret.txt HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /leak.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        "slow_header": bytes((0x42, 5)) + b"GET / HTTP/1.1\r\nHost: x\r\nX: y\r\n\r\n",
        "metrics": plain + b"GET /metrics HTTP/1.1\r\n\r\n",
        "ranges": plain + b"GET /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n"
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=-7\r\n\r\n"
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=299-\r\n\r\n"
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=999-\r\n\r\n"
        b'GET /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2\r\nIf-Range: "x"\r\n\r\n'
        b"GET /sub/b.css HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1,3-4\r\n\r\n",
        "dotfiles": plain + b"GET /.env HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /%2egit/config HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /cached/.git/ HTTP/1.1\r\nHost: x\r\n\r\n",
        # header bytes are Latin-1: "\xb2" is "²", which str.isdigit() takes and int() refuses
        "range_latin1_digits": plain
        + b"GET /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=\xb2-\r\n\r\n"
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=-\xb9\r\n\r\n"
        b"GET /index.html HTTP/1.1\r\nHost: x\r\nRange: bytes=0-\xb3\r\n\r\n",
    }


if __name__ == "__main__":
    support.main(test_one_input)
