"""Harness 2: WebSocket frame reassembly and the close handshake.

A client upgrades through the real HTTP front (so http.pyx hands the socket
to picows as in production) on one of three endpoints - routed ``/ws``, the
echo callback ``/raw``, or ``/wsz`` with permessage-deflate negotiated from
one of several offers - and then sends frames the fuzzer composes: any
fin/rsv/opcode byte, masked or not, minimal or non-minimal lengths, CLOSE
frames with any code and reason, fragmented messages with control frames in
between, compressed messages (valid deflate of fuzzer bytes, fragmented),
oversized frames; the byte stream is cut at fuzzer-chosen points, and the
client may stop reading or let time pass.

Invariants: no exception escapes, nothing logged at ERROR (picows logs an
exception raised by our listener at ERROR); the server's bytes are a 101
then well-formed frames (unmasked, no RSV2/3, RSV1 only with deflate,
minimal lengths, control frames short and final, at most one CLOSE with a
valid code, nothing after it); on ``/raw`` the messages echoed back are, in
order, exactly the messages the client sent (truncated to 200 as the
callback does) while the client's frames are ones this harness models; when
every frame before the client's CLOSE is valid, the server echoes that
CLOSE's code (1000 for an empty one) after delivering every message before
it (unless it dropped a client that does not read, 1008); the connection is
always released and leaves no session in the hub.
"""

from __future__ import annotations

import zlib

import support
from support import Client
from targets import check_released, server
from wire import (
    Reader,
    client_frame,
    close_code,
    parse_responses,
    parse_server_frames,
    split_points,
    upgrade_request,
)

stats = support.stats
PATHS = ("/ws", "/raw", "/wsz")
# (offer, client window bits, client keeps its context, server keeps its context)
OFFERS = (
    (b"permessage-deflate", 15, True, True),
    (
        b"permessage-deflate; client_no_context_takeover; server_no_context_takeover",
        15,
        False,
        False,
    ),
    (b"permessage-deflate; client_max_window_bits=9", 9, True, True),
    (
        b"x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=10; client_max_window_bits",
        15,
        True,
        True,
    ),
)
HIGH_WATER = (1 << 16, 256, 4096, 1)
MASKS = (b"\x00\x00\x00\x00", b"\x11\x22\x33\x44", b"\xff\x80\x01\x7f")


class Session:
    """What the client did, for the echo oracle."""

    def __init__(self, offer) -> None:
        self.sent: list[object] = []  # messages, str or bytes, in order
        self.exact = True  # every frame sent is one this harness models
        self.valid = True  # every frame before the first CLOSE is valid
        self.close: int | None = None  # the code of the client's first CLOSE, if valid so far
        self.before_close = 0  # messages sent before it
        self.offer = offer
        self.compressor = None

    def frame(self, valid: bool) -> None:
        """Record whether the frame just composed is valid (until the first CLOSE)."""
        if self.close is None:
            self.valid = self.valid and valid

    def compress(self, data: bytes) -> bytes:
        _, bits, keep, _ = self.offer
        if self.compressor is None or not keep:
            self.compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
        out = self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(b"\x00\x00\xff\xff")
        return out[:-4] or b"\x00"


def _message(fdp: Reader, text: bool, n: int) -> tuple[int, bytes]:
    data = fdp.take(n)
    if text:
        return 1, data.decode("utf-8", "replace").encode("utf-8")
    return 2, data


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _valid_close_code(code: int) -> bool:
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def compose(fdp: Reader, session: Session, wire: list) -> None:
    """Append the client's actions to ``wire``: bytes, or ("flush", seconds)."""
    op = fdp.int_in(0, 9)
    mask = MASKS[fdp.int_in(0, 2)]
    if op <= 2:  # any single frame
        b0 = fdp.byte()
        form = fdp.int_in(0, 3)
        payload = fdp.take(fdp.int_in(0, 140))
        fin, rsv, opcode = b0 >> 7, (b0 >> 4) & 7, b0 & 15
        wire.append(
            client_frame(
                opcode,
                payload,
                bool(fin),
                rsv,
                None if form == 3 else mask,
                form if form < 3 else 0,
            )
        )
        if opcode in (1, 2) and fin and not rsv and form == 0:
            session.sent.append(payload.decode("utf-8", "replace") if opcode == 1 else payload)
        elif opcode in (0, 1, 2) or form != 0 or rsv:
            session.exact = False
        session.frame(
            form == 0
            and not rsv
            and bool(fin)
            and (
                opcode == 2
                or (opcode == 1 and _utf8(payload))
                or (opcode in (9, 10) and len(payload) <= 125)
            )
        )
    elif op == 3:  # CLOSE
        code = fdp.int_in(0, 5000) if fdp.flag() else 1000
        reason = fdp.take(fdp.int_in(0, 130))
        body = b"" if fdp.int_in(0, 5) == 0 else code.to_bytes(2, "big") + reason
        wire.append(client_frame(8, body, True, 0, mask))
        valid = not body or (len(body) <= 125 and _valid_close_code(code) and _utf8(reason))
        session.frame(valid)
        if session.close is None:  # the first CLOSE; -1: after an invalid frame
            session.close = (code if body else 1000) if session.valid else -1
            session.before_close = len(session.sent)
    elif op == 4:  # PING / PONG
        payload = fdp.take(fdp.int_in(0, 130))
        wire.append(client_frame(9 if fdp.flag() else 10, payload, True, 0, mask))
        session.frame(len(payload) <= 125)
    elif op in (5, 6):  # a fragmented message, maybe compressed
        text = fdp.flag()
        opcode, data = _message(fdp, text, fdp.int_in(0, 300))
        compressed = op == 6 and session.offer is not None
        payload = session.compress(data) if compressed else data
        parts = fdp.int_in(1, 4)
        step = max(1, len(payload) // parts)
        chunks = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            wire.append(
                client_frame(
                    opcode if i == 0 else 0, chunk, last, 4 if compressed and i == 0 else 0, mask
                )
            )
            if not last and fdp.int_in(0, 3) == 0:
                wire.append(client_frame(9, b"between", True, 0, mask))
        session.sent.append(data.decode("utf-8") if text else data)
    elif op == 7:  # oversized
        n = fdp.int_in(4097, 70000)
        wire.append(client_frame(2, b"x" * n, fdp.flag(), 0, mask))
        session.sent.append(None)  # over max_message_size: never echoed
        session.frame(False)
    else:  # deliver now; time may pass
        wire.append(("flush", (0.0, 1.0, 6.0, 30.0)[fdp.int_in(0, 3)]))


def test_one_input(data: bytes) -> None:
    fdp = Reader(data)
    cfg = fdp.byte()
    path = PATHS[(cfg & 3) % 3]
    offer = OFFERS[(cfg >> 2) & 3] if path == "/wsz" else None
    session = Session(offer)
    wire: list = []
    for _ in range(64):
        if fdp.remaining() == 0:
            break
        compose(fdp, session, wire)
    s = server()
    s.head_flags = []
    extra = b"Sec-WebSocket-Extensions: " + offer[0] + b"\r\n" if offer else b""
    support.run(
        _drive(
            s,
            upgrade_request(path, extra),
            wire,
            session,
            HIGH_WATER[(cfg >> 4) & 3],
            (cfg >> 6) & 3,
        )
    )


async def _drive(s, head: bytes, wire: list, session: Session, high: int, cuts: int) -> None:
    client = Client(s, high, reads=high != 1)
    t = client.transport
    pending = [head]
    for item in wire + [("flush", 0.0)]:
        if isinstance(item, tuple):
            for piece in split_points(b"".join(pending), len(pending) * 31 + cuts, cuts):
                await client.send(piece)
            pending = []
            if item[1]:
                support.loop().advance(item[1])
                await support.settle()
        else:
            pending.append(item)
    await client.finish()
    out = bytes(t.out)
    responses, rest = parse_responses(out, s.head_flags)
    assert responses and responses[0].status == 101, responses[:1]
    frames = parse_server_frames(out[rest:])
    decompressor = None
    echoed: list[object] = []
    server_close = None
    for fin, rsv1, opcode, payload in frames:
        if opcode == 8:
            server_close = close_code((fin, rsv1, opcode, payload))
            code = close_code((fin, rsv1, opcode, payload))
            support.note(f"close {'3000-4999' if code and code >= 3000 else code}")
            continue
        if opcode in (9, 10):
            support.note(f"control {opcode}")
            continue
        assert fin, "the server fragments nothing"
        if rsv1:
            assert session.offer is not None, "RSV1 without negotiated deflate"
            if decompressor is None or not session.offer[3]:
                decompressor = zlib.decompressobj(-15)
            payload = decompressor.decompress(payload + b"\x00\x00\xff\xff")
        support.note(f"data {opcode}")
        echoed.append(payload.decode("utf-8") if opcode == 1 else payload)
    echo = head.startswith(b"GET /raw ")
    if echo and session.exact:
        expected = [m[:200] if m is not None else None for m in session.sent[: len(echoed)]]
        assert echoed == expected, f"echo mismatch: {echoed[:3]!r} vs {expected[:3]!r}"
        if echoed:
            support.note("echo verified")
    if session.close is not None and session.close >= 0 and server_close != 1008:
        # every frame before the client's CLOSE was valid: the server answers
        # that CLOSE with its code, having delivered every message before it
        assert server_close == session.close, (
            f"client closed with {session.close}, server {server_close}"
        )
        if echo:
            expected = [m[:200] for m in session.sent[: session.before_close]]
            assert echoed == expected, f"{len(expected)} messages sent, {len(echoed)} echoed"
        support.note("close handshake verified")
    check_released(s)


def seeds() -> dict[str, bytes]:
    """Reader streams: config byte, then per action: op, mask, operands."""
    echo = b'{"url":"/ws/app/echo","body":[1,2]}'
    zecho = b'{"url":"/wsz/app/echo","body":"compress compress compress compress!"}'
    return {
        "raw_text": bytes((1, 0, 1, 0x81, 0, 5)) + b"hello",
        "raw_fragmented": bytes((0x41, 5, 1, 1, 0, 20))
        + b"fragmented message!!"
        + bytes((3, 1, 0)),
        "ws_envelope_close": bytes((0, 0, 1, 0x81, 0, len(echo)))
        + echo
        + bytes((3, 1, 1, 0x03, 0xE8, 2))
        + b"ok"
        + bytes((1,)),
        "wsz_compressed": bytes((2, 6, 1, 1, 0, len(zecho))) + zecho + bytes((2, 1)),
        "wsz_no_takeover": bytes((6, 6, 1, 0, 0, 30))
        + b"abcabcabcabcabcabcabcabcabcabc"
        + bytes((0,))
        + bytes((6, 1, 0, 0, 30))
        + b"abcabcabcabcabcabcabcabcabcabc"
        + bytes((0,)),
        "wsz_small_window": bytes((10, 6, 1, 1, 0, len(zecho))) + zecho + bytes((1,)),
        "oversized": bytes((1, 7, 1, 0, 200, 1)),
        "ping_then_close": bytes((1, 4, 1, 1, 4)) + b"ping" + bytes((3, 1, 0, 0, 0)),
        "unmasked": bytes((1, 0, 0, 0x81, 3, 2)) + b"hi",
        "bad_close_code": bytes((1, 3, 1, 1, 0x03, 0xED, 0, 1)),
        "stalled_fragment": bytes((0, 0, 1, 0x01, 0, 3)) + b"abc" + bytes((9, 0, 3)),
    }


if __name__ == "__main__":
    support.main(test_one_input)
