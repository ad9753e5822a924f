"""simplew._fast.frames: server frames checked against a tiny pure-Python RFC 6455 parser."""

from __future__ import annotations

import os
import struct

import pytest

from simplew._fast import frames


def parse_frame(data: bytes) -> tuple[dict, bytes]:
    """One frame from the start of ``data`` → (header fields and payload, rest)."""
    b0, b1 = data[0], data[1]
    pos = 2
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack_from("!H", data, pos)
        pos += 2
        assert length >= 126, "16-bit length used for a short payload"
    elif length == 127:
        (length,) = struct.unpack_from("!Q", data, pos)
        pos += 8
        assert length >= 65536 and not length >> 63, "bad 64-bit length"
    masked = bool(b1 & 0x80)
    mask = b""
    if masked:
        mask = data[pos : pos + 4]
        pos += 4
    payload = data[pos : pos + length]
    assert len(payload) == length, "truncated frame"
    if masked:
        payload = py_mask(payload, mask)
    frame = {
        "fin": bool(b0 & 0x80),
        "rsv1": bool(b0 & 0x40),
        "rsv2": bool(b0 & 0x20),
        "rsv3": bool(b0 & 0x10),
        "opcode": b0 & 0x0F,
        "masked": masked,
        "header_size": pos,
        "payload": payload,
    }
    return frame, data[pos + length :]


def py_mask(data: bytes, mask: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


SIZES = [0, 1, 125, 126, 127, 65535, 65536, 65537, 1 << 20]


@pytest.mark.parametrize("size", SIZES)
def test_binary_frame_round_trip(size):
    payload = os.urandom(size)
    frame, rest = parse_frame(frames.binary_frame(payload))
    assert rest == b""
    assert frame["fin"] and not frame["masked"]
    assert not (frame["rsv1"] or frame["rsv2"] or frame["rsv3"])
    assert frame["opcode"] == frames.OPCODE_BINARY == 2
    assert frame["payload"] == payload
    assert frame["header_size"] == (2 if size < 126 else 4 if size < 65536 else 10)


@pytest.mark.parametrize("size", SIZES)
def test_text_frame_round_trip(size):
    text = ("é" * (size // 2)) + ("x" * (size % 2))  # exactly ``size`` UTF-8 bytes
    raw = frames.text_frame(text)
    frame, rest = parse_frame(raw)
    assert rest == b""
    assert frame["opcode"] == frames.OPCODE_TEXT == 1 and frame["fin"]
    assert len(frame["payload"]) == size
    assert frame["payload"].decode("utf-8") == text


@pytest.mark.parametrize(
    "data",
    [bytearray(b"abc" * 50), memoryview(b"xyz" * 30000), memoryview(bytearray(300))[10:200], b""],
)
def test_binary_frame_accepts_bytes_like(data):
    frame, _ = parse_frame(frames.binary_frame(data))
    assert frame["payload"] == bytes(data)


def test_binary_frame_of_typed_memoryview():
    import array

    arr = array.array("i", range(100))
    frame, _ = parse_frame(frames.binary_frame(memoryview(arr)))
    assert frame["payload"] == arr.tobytes()


@pytest.mark.parametrize("opcode", [0x0, 0x1, 0x2, 0x8, 0x9, 0xA])
@pytest.mark.parametrize("rsv1", [False, True])
def test_build_any_opcode(opcode, rsv1):
    frame, _ = parse_frame(frames.build(opcode, b"payload", rsv1))
    assert frame["opcode"] == opcode
    assert frame["rsv1"] is rsv1
    assert frame["payload"] == b"payload"


def test_close_frame():
    frame, _ = parse_frame(frames.close_frame(4000, "bye"))
    assert frame["opcode"] == 8 and frame["fin"]
    assert frame["payload"] == b"\x0f\xa0bye"
    frame, _ = parse_frame(frames.close_frame(1000))
    assert frame["payload"] == b"\x03\xe8"


def test_close_frame_reason_is_cut_on_a_character_boundary():
    frame, _ = parse_frame(frames.close_frame(1001, "é" * 100))  # 200 bytes of UTF-8
    payload = frame["payload"]
    assert len(payload) <= 125  # control frame limit
    assert payload[:2] == b"\x03\xe9"
    assert payload[2:].decode("utf-8") == "é" * 61  # 122 bytes, never half a char


def test_frames_concatenate_into_a_stream():
    stream = (
        frames.text_frame("a") + frames.binary_frame(b"\x00" * 70000) + frames.close_frame(1000)
    )
    first, stream = parse_frame(stream)
    second, stream = parse_frame(stream)
    third, stream = parse_frame(stream)
    assert (first["opcode"], second["opcode"], third["opcode"]) == (1, 2, 8)
    assert len(second["payload"]) == 70000 and stream == b""


@pytest.mark.parametrize("size", [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 125, 4096, 65537])
def test_apply_mask_matches_python_xor(size):
    data = os.urandom(size)
    mask = os.urandom(4)
    masked = frames.apply_mask(data, mask)
    assert masked == py_mask(data, mask)
    assert frames.apply_mask(masked, mask) == data  # involution


def test_apply_mask_accepts_bytes_like_and_rejects_bad_masks():
    mask = b"\x01\x02\x03\x04"
    assert frames.apply_mask(bytearray(b"abcdefghij"), mask) == py_mask(b"abcdefghij", mask)
    assert frames.apply_mask(memoryview(b"abcdefghij")[1:], mask) == py_mask(b"bcdefghij", mask)
    with pytest.raises(ValueError):
        frames.apply_mask(b"data", b"\x01\x02\x03")


def test_masked_client_frame_parses():
    """The test parser itself handles masked frames (used by the raw-socket tests)."""
    mask = b"\xaa\xbb\xcc\xdd"
    payload = b"hello world"
    raw = bytes([0x81, 0x80 | len(payload)]) + mask + py_mask(payload, mask)
    frame, rest = parse_frame(raw)
    assert frame["masked"] and frame["payload"] == payload and rest == b""
