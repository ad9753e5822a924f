"""Harness 4: the permessage-deflate Inflater (simplew._fast.deflate).

Input: byte 0 chooses the negotiated settings (client window bits 8-15,
client_no_context_takeover), bytes 1-2 the maximum message size (0 = none,
else up to 64 KiB), then frames, each ``flags, length, data``: bit 0 of
flags is fin; bit 1 makes the data a valid deflate stream of the following
bytes (so the fuzzer reaches real decompression, bombs included) instead of
raw bytes.

Invariants: ``inflate`` raises nothing but MessageTooBig or InflateError; no
call returns more than the bytes left under the maximum size; and the output
equals a plain zlib reference decoder's (same window, same reset rules, no
size limit): when the reference decodes a message within the limit the
Inflater gives exactly those bytes, when it exceeds the limit the Inflater
raises MessageTooBig, when the reference fails the Inflater fails too.
"""

from __future__ import annotations

import zlib

import support
from wire import Reader

support.instrumented_simplew()

from simplew._fast.deflate import DeflateSettings, InflateError, Inflater, MessageTooBig  # noqa: E402

stats = support.stats
TRAILER = b"\x00\x00\xff\xff"


class Reference:
    """What a client's message must decode to, with zlib alone."""

    def __init__(self, wbits: int, fresh_per_message: bool) -> None:
        self.wbits = max(wbits, 9)
        self.fresh = fresh_per_message
        self.decoder = None

    def inflate(self, data: bytes, fin: bool) -> bytes:
        if self.decoder is None:
            self.decoder = zlib.decompressobj(-self.wbits)
        out = self.decoder.decompress(data + TRAILER if fin else data)
        if fin and (self.fresh or self.decoder.eof):
            self.decoder = None
        return out


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    cfg = r.byte()
    bits = 8 + (cfg & 7)
    no_takeover = bool(cfg & 8)
    max_size = r.int_in(0, 65535)
    settings = DeflateSettings(False, no_takeover, 15, bits)
    inflater = Inflater(settings, max_size)
    reference = Reference(bits, no_takeover)
    compressor = None
    message_size = 0
    reference_message = b""
    for _ in range(32):
        if r.remaining() == 0:
            break
        flags = r.byte()
        fin = bool(flags & 1)
        chunk = r.take(r.int_in(0, 1024))
        if flags & 2:
            if compressor is None or flags & 4:
                compressor = zlib.compressobj(9, zlib.DEFLATED, -max(bits, 9))
            if flags & 8:  # a bomb: many copies of the chunk
                chunk = chunk * 64
            chunk = compressor.compress(chunk) + compressor.flush(
                zlib.Z_SYNC_FLUSH if fin else zlib.Z_NO_FLUSH
            )
            if fin and chunk.endswith(TRAILER):
                chunk = chunk[:-4]
        try:
            expected = reference.inflate(chunk, fin)
            reference_error = None
        except zlib.error as exc:
            expected, reference_error = b"", exc
        reference_message += expected
        left = max_size - message_size if max_size else None
        view = memoryview(chunk) if flags & 16 else chunk
        try:
            out = inflater.inflate(view, fin)
        except MessageTooBig:
            support.note("MessageTooBig")
            assert max_size and (
                reference_error is not None or len(reference_message) > max_size
            ), f"MessageTooBig for a message of {len(reference_message)} <= {max_size} bytes"
            return
        except InflateError:
            support.note("InflateError")
            assert reference_error is not None, "InflateError for data zlib decodes"
            return
        assert reference_error is None, (
            f"the Inflater accepted what zlib rejects: {reference_error}"
        )
        if left is not None:
            assert len(out) <= left, f"{len(out)} bytes out with {left} left"
        assert out == expected, "the Inflater's output differs from zlib's"
        support.note("frames")
        message_size += len(out)
        if fin:
            support.note("messages")
            message_size = 0
            reference_message = b""


def seeds() -> dict[str, bytes]:
    def frame(flags: int, data: bytes) -> bytes:
        return bytes((flags, len(data) >> 8, len(data) & 255)) + data

    text = b"the quick brown fox jumps over the lazy dog " * 4
    return {
        "one_message": bytes((7, 0x10, 0)) + frame(3, text),
        "fragmented": bytes((7, 0x10, 0))
        + frame(2, text[:50])
        + frame(2, text[50:100])
        + frame(3, text[100:]),
        "takeover": bytes((7, 0x10, 0)) + frame(3, text) + frame(3, text),
        "no_takeover": bytes((15, 0x10, 0)) + frame(3 | 4, text) + frame(3 | 4, text),
        "bomb": bytes((7, 0x01, 0)) + frame(3 | 8, b"\x00" * 1000),
        "small_window": bytes((1, 0, 0)) + frame(3 | 16, text),
        "raw_garbage": bytes((7, 0, 100)) + frame(1, b"\xff\xfe\xfd garbage"),
        "empty": bytes((7, 0, 100)) + frame(1, b"\x00") + frame(1, b""),
    }


if __name__ == "__main__":
    support.main(test_one_input)
