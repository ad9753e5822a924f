# cython: language_level=3
"""The client's address when a proxy stands between it and the server.

Two ways, both from trusted peers only (:class:`ProxyPolicy`, made of
``forwarded_allow_ips``):

- the PROXY protocol (version 1, a text line, and version 2, binary), which
  a TCP balancer (HAProxy, nginx's stream module, cloud load balancers) sends
  before anything else on each connection: :class:`ProxyReader` reads it from
  a connection's first bytes, however they are split, and never holds more
  than one header (107 bytes for version 1, 16 + ``MAX_V2_LENGTH`` for 2);
- the ``Forwarded`` (RFC 7239) and ``X-Forwarded-For`` request headers of an
  HTTP proxy: :meth:`ProxyPolicy.forwarded_client` takes the right-most address
  that is not itself a trusted proxy.

Addresses are ``(host, port)`` with ``host`` in its canonical text form
(``inet_ntop``); a port a header does not give is 0.
"""
import ipaddress

from libc.string cimport memchr, memcmp

cdef extern from "arpa/inet.h":
    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, unsigned int size)

cdef extern from "sys/socket.h":
    int AF_INET
    int AF_INET6

MAX_V1_LENGTH = 107         # the longest version 1 line, CRLF included
MAX_V2_LENGTH = 2048        # the longest version 2 address block and TLVs accepted

cdef Py_ssize_t _V1_MAX = MAX_V1_LENGTH
cdef Py_ssize_t _V2_MAX = MAX_V2_LENGTH
cdef bytes V1_PREFIX = b"PROXY "
cdef bytes V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class ProxyHeaderError(ValueError):
    """A connection's first bytes are not a valid PROXY protocol header."""


cdef class ProxyHeader:
    """A PROXY protocol header read in full.

    ``source`` is the client's ``(host, port)``, or None when the header names
    none (version 1 ``UNKNOWN``, version 2 ``LOCAL`` or an unspecified or Unix
    family): then the connection's own peer is the client. ``length`` is the
    bytes the header took.
    """

    def __repr__(self):
        return (f"<ProxyHeader v{self.version} source={self.source!r} "
                f"destination={self.destination!r} length={self.length}>")


cdef ProxyHeader _header(int version, source, destination, Py_ssize_t length):
    cdef ProxyHeader header = ProxyHeader.__new__(ProxyHeader)
    header.version = version
    header.source = source
    header.destination = destination
    header.length = length
    return header


cdef str _ntop(int family, const unsigned char *address):
    cdef char text[64]
    inet_ntop(family, address, text, sizeof(text))
    return text.decode("ascii")


cdef object _port(str text):
    """A decimal port 0-65535 without sign or leading zero, else None."""
    if not 1 <= len(text) <= 5 or not text.isdigit() or not text.isascii():
        return None
    if len(text) > 1 and text[0] == "0":
        return None
    cdef long value = int(text)
    return value if value <= 65535 else None


cdef str _host(int family, str text):
    """``text`` as the canonical form of an address of ``family``, else None."""
    cdef unsigned char binary[16]
    if not text.isascii() or len(text) > 45:
        return None
    cdef bytes raw = text.encode("ascii")
    if inet_pton(family, raw, binary) != 1:
        return None
    return _ntop(family, binary)


cdef ProxyHeader _parse_v1(const unsigned char *p, Py_ssize_t n):
    cdef Py_ssize_t limit = n if n < _V1_MAX else _V1_MAX
    cdef const unsigned char *end = <const unsigned char *>memchr(p, 10, limit)
    if end == NULL:
        if n >= _V1_MAX:
            raise ProxyHeaderError("a PROXY protocol v1 line is longer than 107 bytes")
        return None
    cdef Py_ssize_t length = end - p + 1
    if length < 8 or p[length - 2] != 13:
        raise ProxyHeaderError("a PROXY protocol v1 line must end with CRLF")
    cdef Py_ssize_t i
    for i in range(6, length - 2):
        if p[i] < 0x20 or p[i] > 0x7e:
            raise ProxyHeaderError("a PROXY protocol v1 line has a byte that is not "
                                   "printable ASCII")
    fields = (<bytes>p[6:length - 2]).decode("ascii").split(" ")
    if fields[0] == "UNKNOWN":
        return _header(1, None, None, length)
    if fields[0] == "TCP4":
        family = AF_INET
    elif fields[0] == "TCP6":
        family = AF_INET6
    else:
        raise ProxyHeaderError("a PROXY protocol v1 line names TCP4, TCP6 or UNKNOWN")
    if len(fields) != 5:
        raise ProxyHeaderError("a PROXY protocol v1 line has 4 fields after its protocol")
    source = _host(family, fields[1])
    destination = _host(family, fields[2])
    if source is None or destination is None:
        raise ProxyHeaderError(f"a PROXY protocol v1 line has an invalid {fields[0]} address")
    source_port = _port(fields[3])
    destination_port = _port(fields[4])
    if source_port is None or destination_port is None:
        raise ProxyHeaderError("a PROXY protocol v1 line has an invalid port")
    return _header(1, (source, source_port), (destination, destination_port), length)


cdef inline int _u16(const unsigned char *p):
    return (p[0] << 8) | p[1]


cdef ProxyHeader _parse_v2(const unsigned char *p, Py_ssize_t n):
    if n < 16:
        return None
    if p[12] >> 4 != 2:
        raise ProxyHeaderError("a PROXY protocol v2 header must have version 2")
    cdef int command = p[12] & 0xF
    cdef int family = p[13] >> 4
    cdef int transport = p[13] & 0xF
    cdef Py_ssize_t size = _u16(p + 14)
    if command > 1:
        raise ProxyHeaderError("a PROXY protocol v2 command is LOCAL or PROXY")
    if family > 3 or transport > 2:
        raise ProxyHeaderError("a PROXY protocol v2 header has an unknown address family")
    if size > _V2_MAX:
        raise ProxyHeaderError(f"a PROXY protocol v2 header is longer than {_V2_MAX} bytes")
    if n < 16 + size:
        return None
    if command == 0 or family == 0:     # LOCAL (the balancer's own), or no address given
        return _header(2, None, None, 16 + size)
    if family == 3:                     # Unix sockets: the peer stands for the client
        if size < 216:
            raise ProxyHeaderError("a PROXY protocol v2 Unix address block is short")
        return _header(2, None, None, 16 + size)
    if transport != 1:
        raise ProxyHeaderError("a PROXY protocol v2 header must be for a stream (TCP)")
    cdef const unsigned char *a = p + 16
    if family == 1:
        if size < 12:
            raise ProxyHeaderError("a PROXY protocol v2 IPv4 address block is short")
        return _header(2, (_ntop(AF_INET, a), _u16(a + 8)),
                       (_ntop(AF_INET, a + 4), _u16(a + 10)), 16 + size)
    if size < 36:
        raise ProxyHeaderError("a PROXY protocol v2 IPv6 address block is short")
    return _header(2, (_ntop(AF_INET6, a), _u16(a + 32)),
                   (_ntop(AF_INET6, a + 16), _u16(a + 34)), 16 + size)


cdef ProxyHeader _parse(const unsigned char *p, Py_ssize_t n):
    """The header at the start of ``p[:n]``; None when more bytes are needed."""
    cdef Py_ssize_t m
    if n == 0:
        return None
    if p[0] == 80:      # "P"
        m = n if n < 6 else 6
        if memcmp(p, <const char *>V1_PREFIX, m) != 0:
            raise ProxyHeaderError("the connection does not start with a PROXY protocol header")
        return _parse_v1(p, n) if n >= 6 else None
    m = n if n < 12 else 12
    if memcmp(p, <const char *>V2_SIGNATURE, m) != 0:
        raise ProxyHeaderError("the connection does not start with a PROXY protocol header")
    return _parse_v2(p, n) if n >= 12 else None


cdef ProxyHeader _parse_view(const unsigned char[::1] data):
    if data.shape[0] == 0:
        return None
    return _parse(&data[0], data.shape[0])


def parse_proxy_header(data):
    """The PROXY protocol header at the start of ``data`` (bytes-like), or None
    when ``data`` is a valid start of one; :class:`ProxyHeaderError` otherwise."""
    return _parse_view(data)


cdef class ProxyReader:
    """Reads the PROXY protocol header of one connection from its first chunks.

    :meth:`feed` returns None until the header is complete, then the
    :class:`ProxyHeader`, with ``rest`` the bytes that followed it; it raises
    :class:`ProxyHeaderError` as soon as the bytes cannot start a header. A
    header that arrives whole is read in place, without a copy.
    """

    cpdef ProxyHeader feed(self, data):
        cdef ProxyHeader header
        if self._buffer is None:
            header = _parse_view(data)
            if header is None:
                self._buffer = bytearray(data)
            else:
                self.rest = bytes(data[header.length:])
            return header
        self._buffer += data
        header = _parse_view(self._buffer)
        if header is not None:
            self.rest = bytes(self._buffer[header.length:])
            self._buffer = None
        return header


cdef object _parse_address(str text):
    """``(host, port)`` of ``1.2.3.4``, ``1.2.3.4:80``, ``::1``, ``[::1]`` or
    ``[::1]:80`` (spaces around ignored), else None."""
    text = text.strip(" \t")
    port = 0
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        tail = text[close + 1:]
        if tail:
            if tail[0] != ":":
                return None
            port = _port(tail[1:])
            if port is None:
                return None
        host = _host(AF_INET6, text[1:close])
    elif text.count(":") == 1:
        name, _, number = text.partition(":")
        port = _port(number)
        if port is None:
            return None
        host = _host(AF_INET, name)
    elif ":" in text:
        host = _host(AF_INET6, text)
    else:
        host = _host(AF_INET, text)
    return None if host is None else (host, port)


cdef object _forwarded_for(str element):
    """The ``for=`` address of one element of a ``Forwarded`` value; None when it
    has none, or an ``unknown`` or obfuscated one."""
    for pair in element.split(";"):
        name, eq, node = pair.partition("=")
        if eq and name.strip(" \t").lower() == "for":
            node = node.strip(" \t")
            if len(node) >= 2 and node[0] == '"' and node[len(node) - 1] == '"':
                node = node[1:len(node) - 1]
            return _parse_address(node)
    return None


cdef class ProxyPolicy:
    """Which peers are trusted proxies, and whether a PROXY header is required.

    ``forwarded_allow_ips``: addresses and CIDR networks (``"10.0.0.0/8"``), or
    ``"*"`` for every peer; a list, or one comma-separated str. ``proxy_protocol``:
    every connection must start with a PROXY protocol header, from a trusted peer;
    otherwise the ``Forwarded`` and ``X-Forwarded-For`` headers of the requests of
    a trusted peer give the client. ``refused`` counts the connections closed for
    a PROXY header that was missing, malformed or sent by an untrusted peer.
    """

    def __init__(self, forwarded_allow_ips, bint proxy_protocol=False):
        if isinstance(forwarded_allow_ips, str):
            forwarded_allow_ips = [s for s in forwarded_allow_ips.split(",") if s.strip()]
        networks = []
        self.any = False
        for entry in forwarded_allow_ips:
            if not isinstance(entry, str):
                raise ValueError(f"a trusted proxy is a str, not {type(entry).__name__}")
            text = entry.strip()
            if text == "*":
                self.any = True
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ValueError(f"a trusted proxy is an address, a CIDR network or '*', "
                                 f"not {entry!r}") from None
        if not networks and not self.any:
            raise ValueError("forwarded_allow_ips names no trusted proxy")
        self.entries = tuple(forwarded_allow_ips)
        self._networks = tuple(networks)
        self.protocol = proxy_protocol
        self.refused = 0

    cpdef bint trusts(self, host) except -1:
        """True when ``host`` (an address as text, or None) is a trusted proxy."""
        if self.any:
            return True
        if host is None:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for network in self._networks:
            if address in network:
                return True
        return False

    cpdef object forwarded_client(self, dict headers):
        """The client a trusted peer's request names (``Forwarded``, else
        ``X-Forwarded-For``): the right-most address that is not a trusted proxy,
        the left-most when all are; None when the headers name no address, or
        the right-most one is not one."""
        value = headers.get("forwarded")
        cdef bint forwarded = value is not None
        if not forwarded:
            value = headers.get("x-forwarded-for")
            if value is None:
                return None
        cdef list items = value.split(",")
        cdef Py_ssize_t i
        client = None
        for i in range(len(items) - 1, -1, -1):     # parsed from the right, as far as needed
            hop = _forwarded_for(items[i]) if forwarded else _parse_address(items[i])
            if hop is None:
                break           # unknown or garbage: nothing further left can be believed
            client = hop
            if not self.trusts(hop[0]):
                break
        return client

    def __repr__(self):
        return f"ProxyPolicy({list(self.entries)!r}, proxy_protocol={bool(self.protocol)})"
