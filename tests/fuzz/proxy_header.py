"""Harness 8: the PROXY protocol reader (simplew._fast.proxy) against a reference.

Input: the first bytes a balancer sends on a connection.

Invariants: ``parse_proxy_header`` either returns a header, returns None
(a valid start of one: more bytes needed), or raises ProxyHeaderError; never
anything else. It agrees with the small pure-Python parser below (written
from the protocol's text, with ``ipaddress``) on which of the three it is and,
for a header, on its version, length, and the source and destination (same
address bytes, same ports). A header never takes more than 107 bytes (v1) or
16 + MAX_V2_LENGTH (v2), nor more than the input. Fed to a ``ProxyReader`` in
two or three pieces, the same input gives the same outcome, and ``rest`` is
exactly the bytes fed after the header. The input read as an ``X-Forwarded-For``
value gives no client or a valid address and port.
"""

from __future__ import annotations

import ipaddress
import re
import struct

import support
from simplew._fast.proxy import (
    MAX_V2_LENGTH,
    ProxyHeaderError,
    ProxyPolicy,
    ProxyReader,
    parse_proxy_header,
)

stats = support.stats
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MORE = "more"
ERROR = "error"
PORT = re.compile(r"0|[1-9][0-9]{0,4}")
POLICY = ProxyPolicy(["10.0.0.0/8", "::1"])


def _address(version: int, text: str) -> bytes | None:
    if "%" in text or (version == 4 and ":" in text) or (version == 6 and ":" not in text):
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address.packed if address.version == version else None


def _port(text: str) -> int | None:
    return int(text) if PORT.fullmatch(text) and int(text) <= 65535 else None


def reference_v1(data: bytes) -> tuple:
    end = data.find(b"\n", 0, 107)
    if end < 0:
        return (ERROR,) if len(data) >= 107 else (MORE,)
    length = end + 1
    if length < 8 or data[end - 1] != 13:
        return (ERROR,)
    line = data[6 : end - 1]
    if any(b < 0x20 or b > 0x7E for b in line):
        return (ERROR,)
    fields = line.decode("ascii").split(" ")
    if fields[0] == "UNKNOWN":
        return (1, length, None, None)
    if fields[0] not in ("TCP4", "TCP6") or len(fields) != 5:
        return (ERROR,)
    version = 4 if fields[0] == "TCP4" else 6
    source, destination = _address(version, fields[1]), _address(version, fields[2])
    ports = _port(fields[3]), _port(fields[4])
    if source is None or destination is None or None in ports:
        return (ERROR,)
    return (1, length, (source, ports[0]), (destination, ports[1]))


def reference_v2(data: bytes) -> tuple:
    if len(data) < 16:
        return (MORE,)
    version, command = data[12] >> 4, data[12] & 0xF
    family, transport = data[13] >> 4, data[13] & 0xF
    (size,) = struct.unpack("!H", data[14:16])
    if version != 2 or command > 1 or family > 3 or transport > 2 or size > MAX_V2_LENGTH:
        return (ERROR,)
    if len(data) < 16 + size:
        return (MORE,)
    block = data[16 : 16 + size]
    if command == 0 or family == 0:
        return (2, 16 + size, None, None)
    if family == 3:
        return (2, 16 + size, None, None) if size >= 216 else (ERROR,)
    width = 4 if family == 1 else 16  # bytes of one address
    if transport != 1 or size < 2 * width + 4:
        return (ERROR,)
    sport, dport = struct.unpack("!HH", block[2 * width : 2 * width + 4])
    return (2, 16 + size, (block[:width], sport), (block[width : 2 * width], dport))


def reference(data: bytes) -> tuple:
    """("more",), ("error",) or (version, length, source, destination), addresses packed."""
    if not data:
        return (MORE,)
    if data[0] == ord("P"):
        if data[:6] != b"PROXY "[: len(data[:6])]:
            return (ERROR,)
        return reference_v1(data) if len(data) >= 6 else (MORE,)
    if data[:12] != SIGNATURE[: len(data[:12])]:
        return (ERROR,)
    return reference_v2(data) if len(data) >= 12 else (MORE,)


def _packed(address: tuple[str, int] | None) -> tuple[bytes, int] | None:
    if address is None:
        return None
    host, port = address
    assert isinstance(port, int) and 0 <= port <= 65535, address
    return ipaddress.ip_address(host).packed, port


def outcome(data: bytes) -> tuple:
    try:
        header = parse_proxy_header(data)
    except ProxyHeaderError as exc:
        assert str(exc).startswith("a PROXY") or "PROXY protocol header" in str(exc), exc
        return (ERROR,)
    if header is None:
        return (MORE,)
    assert header.length <= len(data)
    assert header.length <= (107 if header.version == 1 else 16 + MAX_V2_LENGTH)
    return (header.version, header.length, _packed(header.source), _packed(header.destination))


def in_pieces(data: bytes) -> tuple:
    """The outcome of a ProxyReader fed ``data`` in up to three pieces."""
    a = data[-1] % (len(data) + 1) if data else 0
    b = max(a, (data[len(data) // 2] * 7) % (len(data) + 1)) if data else 0
    reader = ProxyReader()
    fed = 0
    for piece in (data[:a], data[a:b], data[b:]):
        if not piece:
            continue
        fed += len(piece)
        try:
            header = reader.feed(piece)
        except ProxyHeaderError:
            return (ERROR,)
        if header is not None:  # the pieces not fed yet go to the HTTP parser as they come
            assert reader.rest == data[header.length : fed], (reader.rest, header)
            return (
                header.version,
                header.length,
                _packed(header.source),
                _packed(header.destination),
            )
    return (MORE,)


def test_one_input(data: bytes) -> None:
    got = outcome(data)
    expected = reference(data)
    assert got == expected, (data, got, expected)
    support.note(f"v{got[0]}" if len(got) > 1 else got[0])
    if data:
        assert in_pieces(data) == got, (data, in_pieces(data), got)
    client = POLICY.forwarded_client({"x-forwarded-for": data.decode("latin-1")})
    if client is not None:
        _packed(client)  # a valid address and port
        support.note("forwarded client")


def seeds() -> dict[str, bytes]:
    v4 = bytes([203, 0, 113, 7, 127, 0, 0, 1]) + struct.pack("!HH", 40001, 80)
    v6 = bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack("!HH", 40002, 443)
    return {
        "v1-tcp4": b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 80\r\nGET / HTTP/1.1\r\n\r\n",
        "v1-tcp6": b"PROXY TCP6 2001:db8::7 ::ffff:1.2.3.4 40002 443\r\n",
        "v1-unknown": b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n",
        "v2-tcp4": SIGNATURE + b"\x21\x11" + struct.pack("!H", len(v4)) + v4,
        "v2-tcp6-tlv": SIGNATURE
        + b"\x21\x21"
        + struct.pack("!H", len(v6) + 6)
        + v6
        + b"\x04\x00\x03abc",
        "v2-local": SIGNATURE + b"\x20\x00\x00\x00GET",
        "v2-unix": SIGNATURE + b"\x21\x31\x00\xd8" + bytes(216),
        "forwarded": b"198.51.100.1, [2001:db8::2]:8080, 10.0.0.3:1",
    }


if __name__ == "__main__":
    support.main(test_one_input)
