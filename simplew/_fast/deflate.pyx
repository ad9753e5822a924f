# cython: language_level=3
"""permessage-deflate (RFC 7692) for the server side of a connection.

* :func:`negotiate` answers the client's ``Sec-WebSocket-Extensions`` offers
  and returns the agreed :class:`DeflateSettings`.
* :class:`Inflater` decompresses the frames of compressed client messages,
  bounded by a maximum message size (decompression bombs never get further
  than ``max_size + 1`` bytes of output).
* :class:`Deflater` compresses whole server messages for one client.
* :func:`deflate_standalone` / :func:`deflate_once` compress a message without
  any history, so the same bytes are valid for every client (multicast).

Only Python's ``zlib`` module is used (raw deflate, negative ``wbits``), so no
C library has to be linked. zlib cannot compress with a 256-byte window
(``wbits=8`` is rejected for raw deflate), so an offer that limits the
server's window to 8 bits is declined.
"""
import re
import threading
import zlib

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcmp, memcpy

EXTENSION_NAME = "permessage-deflate"
DEFAULT_LEVEL = 6
DEFAULT_MEM_LEVEL = 8

# What the receiver appends to a message before inflating it, and what the
# sender strips after a sync flush (RFC 7692 section 7.2.1-7.2.2).
cdef bytes TRAILER = b"\x00\x00\xff\xff"
# An empty message: one empty stored block, less the trailer (section 7.2.3.6).
cdef bytes EMPTY_MESSAGE = b"\x00"

cdef object _compressobj = zlib.compressobj
cdef object _decompressobj = zlib.decompressobj
cdef object _zlib_error = zlib.error
cdef int DEFLATED = zlib.DEFLATED
cdef int Z_SYNC_FLUSH = zlib.Z_SYNC_FLUSH
cdef int Z_FULL_FLUSH = zlib.Z_FULL_FLUSH


class MessageTooBig(ValueError):
    """The decompressed message would exceed the maximum size (close with 1009)."""
    close_code = 1009


class InflateError(ValueError):
    """The compressed data is not a valid deflate stream (close with 1002)."""
    close_code = 1002


cdef class DeflateSettings:
    """The parameters agreed for one connection (immutable, hashable).

    ``*_max_window_bits`` are 15 when not limited by the negotiation. ``key``
    is the tuple of the four fields, for grouping clients by settings.
    """

    def __cinit__(self, bint server_no_context_takeover=False,
                  bint client_no_context_takeover=False,
                  int server_max_window_bits=15, int client_max_window_bits=15):
        if not 9 <= server_max_window_bits <= 15:
            raise ValueError("server_max_window_bits must be between 9 and 15")
        if not 8 <= client_max_window_bits <= 15:
            raise ValueError("client_max_window_bits must be between 8 and 15")
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        self.key = (self.server_no_context_takeover, self.client_no_context_takeover,
                    server_max_window_bits, client_max_window_bits)

    def __eq__(self, other):
        if not isinstance(other, DeflateSettings):
            return NotImplemented
        return self.key == (<DeflateSettings>other).key

    def __hash__(self):
        return hash(self.key)

    def __reduce__(self):
        return DeflateSettings, self.key

    def __repr__(self):
        return ("DeflateSettings(server_no_context_takeover=%r, client_no_context_takeover=%r, "
                "server_max_window_bits=%d, client_max_window_bits=%d)" % self.key)


# --------------------------------------------------------------------------
# Negotiation (RFC 7692 section 5 and 7.1, RFC 6455 section 9.1)

cdef object _PARAM = re.compile(
    r"[ \t]*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]*"
    r"(?:=[ \t]*(?:([!#$%&'*+\-.^_`|~0-9A-Za-z]+)|\"((?:[^\"\\]|\\.)*)\")[ \t]*)?")
cdef object _UNESCAPE = re.compile(r"\\(.)")
cdef dict _WINDOW_BITS = {str(bits): bits for bits in range(8, 16)}   # no leading zeros


cdef list _split(str text, Py_UCS4 separator):
    """``text`` cut at each ``separator`` outside quoted strings."""
    cdef list parts = []
    cdef Py_ssize_t start = 0, i = 0, n = len(text)
    cdef bint quoted = False
    cdef Py_UCS4 ch
    while i < n:
        ch = text[i]
        if quoted:
            if ch == u'\\':
                i += 1
            elif ch == u'"':
                quoted = False
        elif ch == u'"':
            quoted = True
        elif ch == separator:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


cdef dict _offer_params(list parts):
    """``{name: value or None}`` of one offer, None if the syntax is wrong or a
    parameter is repeated."""
    cdef dict params = {}
    for part in parts:
        match = _PARAM.fullmatch(part)
        if match is None:
            return None
        name = match.group(1).lower()
        if name in params:
            return None
        value = match.group(2)
        if value is None and match.group(3) is not None:
            value = _UNESCAPE.sub(r"\1", match.group(3))
        params[name] = value
    return params


def negotiate(header_value, *, bint enabled=True,
              bint server_no_context_takeover=False, bint client_no_context_takeover=False,
              int server_max_window_bits=15, client_max_window_bits=None):
    """Answer a ``Sec-WebSocket-Extensions`` request header.

    ``header_value`` is the header (several header lines may be given as a
    list, or joined with ", "). The keyword arguments are the server's wishes:
    ``server_no_context_takeover`` / ``client_no_context_takeover`` are always
    granted (the server may impose them); ``server_max_window_bits`` (9-15)
    caps the server's window; ``client_max_window_bits`` (8-15) caps the
    client's window, but only when the client announced it supports that.

    The first acceptable ``permessage-deflate`` offer wins; an offer with an
    unknown, repeated or invalid parameter is declined (RFC 7692 section 7.1),
    as is one limiting the server to an 8-bit window (zlib can't honour it).
    Returns ``(response header value, DeflateSettings)``, or ``(None, None)``
    to use no compression. A malformed offer never fails the handshake.
    """
    cdef int server_bits, client_bits
    cdef bint snct, cnct
    if not 9 <= server_max_window_bits <= 15:
        raise ValueError("server_max_window_bits must be between 9 and 15")
    if client_max_window_bits is not None and not 8 <= client_max_window_bits <= 15:
        raise ValueError("client_max_window_bits must be between 8 and 15")
    if not enabled or not header_value:
        return None, None
    if not isinstance(header_value, str):
        header_value = ", ".join(header_value)

    for element in _split(header_value, u','):
        parts = _split(element, u';')
        if parts[0].strip(" \t").lower() != EXTENSION_NAME:
            continue
        params = _offer_params(parts[1:])
        if params is None:
            continue
        snct = server_no_context_takeover
        cnct = client_no_context_takeover
        server_bits = server_max_window_bits
        client_bits = 15
        response = [EXTENSION_NAME]
        show_server_bits = server_bits < 15
        show_client_bits = False
        acceptable = True
        for name, value in params.items():
            if name == "server_no_context_takeover" and value is None:
                snct = True                     # must be granted (7.1.1.1)
            elif name == "client_no_context_takeover" and value is None:
                cnct = True                     # echoed: we may drop the inflater between messages
            elif name == "server_max_window_bits" and value in _WINDOW_BITS:
                server_bits = min(server_bits, <int>_WINDOW_BITS[value])
                show_server_bits = True         # accepting it means answering it (7.1.2.1)
            elif name == "client_max_window_bits" and (value is None or value in _WINDOW_BITS):
                if value is not None:
                    client_bits = _WINDOW_BITS[value]
                    show_client_bits = True
                if client_max_window_bits is not None and client_max_window_bits < client_bits:
                    client_bits = client_max_window_bits
                    show_client_bits = True
            else:
                acceptable = False              # unknown, valueless bits, value on a flag...
                break
        if not acceptable or server_bits < 9:
            continue
        if snct:
            response.append("server_no_context_takeover")
        if cnct:
            response.append("client_no_context_takeover")
        if show_server_bits:
            response.append("server_max_window_bits=%d" % server_bits)
        if show_client_bits:
            response.append("client_max_window_bits=%d" % client_bits)
        return "; ".join(response), DeflateSettings(snct, cnct, server_bits, client_bits)
    return None, None


# --------------------------------------------------------------------------
# Decompression of client messages

cdef class Inflater:
    """Inflates the frames of compressed client messages on one connection.

    ``max_size`` bounds the decompressed size of each message (0: no bound).
    After an exception the context is dropped; the connection must be failed.
    """

    def __init__(self, DeflateSettings settings not None, Py_ssize_t max_size):
        self.settings = settings
        self.max_size = max_size if max_size > 0 else 0
        # A larger window than the client's always decodes its data; 9 bits
        # tolerates the "8 means 9" zlib clients.
        self._wbits = max(settings.client_max_window_bits, 9)
        # Without context takeover, the client never refers to earlier
        # messages: the decoder is dropped between messages to free its window.
        self._fresh_per_message = settings.client_no_context_takeover
        self._decoder = None
        self._size = 0

    cpdef bytes inflate(self, object data, bint fin):
        """The decompressed payload of one frame (``fin``: the message's last)
        of a compressed message. Raises :class:`MessageTooBig` as soon as the
        message would exceed ``max_size``, :class:`InflateError` on bad data."""
        cdef bytes out
        cdef Py_ssize_t left
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = _decompressobj(-self._wbits)
        if fin:
            data = data + TRAILER if type(data) is bytes else b"".join((data, TRAILER))
        try:
            if self.max_size:
                left = self.max_size - self._size
                # One byte more than allowed tells "too big" from "just fits".
                out = decoder.decompress(data, left + 1)
                if PyBytes_GET_SIZE(out) > left:
                    self.reset()
                    raise MessageTooBig(f"message exceeds {self.max_size} bytes once decompressed")
            else:
                out = decoder.decompress(data)
        except _zlib_error as exc:
            self.reset()
            raise InflateError(f"invalid compressed data: {exc}") from exc
        if fin:
            self._size = 0
            # eof: the client ended the message with a BFINAL block; what
            # follows can only start a new stream (see the module caveats).
            if self._fresh_per_message or decoder.eof:
                self._decoder = None
        else:
            self._size += PyBytes_GET_SIZE(out)
        return out

    cpdef reset(self):
        """Forget the current message and the context (after an error)."""
        self._decoder = None
        self._size = 0


# --------------------------------------------------------------------------
# Compression of server messages

cdef inline bytes _strip_trailer(bytes head, bytes tail):
    """``head + tail`` without the 00 00 ff ff a flush ends ``tail`` with."""
    cdef Py_ssize_t n1 = PyBytes_GET_SIZE(head), n2 = PyBytes_GET_SIZE(tail)
    cdef bytes out
    if n2 < 4 or memcmp(PyBytes_AS_STRING(tail) + n2 - 4, b"\x00\x00\xff\xff", 4) != 0:
        raise RuntimeError("zlib flush did not end with an empty stored block")
    out = PyBytes_FromStringAndSize(NULL, n1 + n2 - 4)
    memcpy(PyBytes_AS_STRING(out), PyBytes_AS_STRING(head), n1)
    memcpy(PyBytes_AS_STRING(out) + n1, PyBytes_AS_STRING(tail), n2 - 4)
    return out


cdef object _local = threading.local()


cpdef bytes deflate_standalone(object payload, int wbits=15, int level=DEFAULT_LEVEL,
                               int mem_level=DEFAULT_MEM_LEVEL):
    """``payload`` compressed as a message that refers to no earlier message.

    Valid for every client whose ``server_max_window_bits`` is at least
    ``wbits``, whatever its context-takeover state: each compressed message
    ends on a byte boundary after an empty stored block (the sync flush the
    sender strips and the receiver appends again), so the client's decoder is
    always between blocks when a message starts; the blocks produced here
    only copy from data inside this message, so the client's window (its
    history) is never read. A client's own :class:`Deflater` with context
    takeover must then be told with :meth:`Deflater.reset`, because the
    client's history now holds a message its compressor did not see.

    Per thread, one compressor per (wbits, level, mem_level) is reused:
    ``Z_FULL_FLUSH`` ends each message and, per zlib's documentation, resets
    the compression state so that what follows never depends on what came
    before (much cheaper than a new compressobj per message).
    """
    cdef bytes head, tail
    if not 9 <= wbits <= 15:
        raise ValueError("wbits must be between 9 and 15")
    if not payload:
        return EMPTY_MESSAGE
    try:
        encoders = _local.encoders
    except AttributeError:
        encoders = _local.encoders = {}
    key = (wbits * 16 + level + 1) * 16 + mem_level
    encoder = encoders.get(key)
    if encoder is None:
        encoder = encoders[key] = _compressobj(level, DEFLATED, -wbits, mem_level)
    try:
        head = encoder.compress(payload)
        tail = encoder.flush(Z_FULL_FLUSH)
    except BaseException:
        del encoders[key]               # state unknown: never reuse it
        raise
    return _strip_trailer(head, tail)


cpdef bytes deflate_once(object settings, object payload):
    """:func:`deflate_standalone` for the window of ``settings`` (a
    :class:`DeflateSettings` or its ``key``): compress once, send to every
    client with the same ``server_max_window_bits`` (or a larger one)."""
    cdef int wbits
    if isinstance(settings, DeflateSettings):
        wbits = (<DeflateSettings>settings).server_max_window_bits
    else:
        wbits = settings[2]
    return deflate_standalone(payload, wbits)


cdef class Deflater:
    """Compresses whole server messages for one connection.

    With context takeover the connection keeps its own compressor (about
    ``2**(wbits+2) + 2**(mem_level+9)`` bytes of zlib state, 256 KiB by
    default) so messages may refer to earlier ones; without it, messages are
    compressed with :func:`deflate_standalone` and no state is kept.
    """

    def __init__(self, DeflateSettings settings not None, int level=DEFAULT_LEVEL,
                 int mem_level=DEFAULT_MEM_LEVEL):
        if not (-1 <= level <= 9 and 1 <= mem_level <= 9):
            raise ValueError("level must be between -1 and 9, mem_level between 1 and 9")
        self.settings = settings
        self.level = level
        self.mem_level = mem_level
        self._encoder = None
        self._stale = False

    cpdef bytes deflate(self, object payload):
        """The payload of the compressed frame (RSV1 set) carrying ``payload``."""
        cdef bytes head, tail
        if self.settings.server_no_context_takeover:
            return deflate_standalone(payload, self.settings.server_max_window_bits,
                                      self.level, self.mem_level)
        if not payload:
            return EMPTY_MESSAGE        # an empty stored block: no history added
        encoder = self._encoder
        try:
            if encoder is None:
                encoder = self._encoder = _compressobj(
                    self.level, DEFLATED, -self.settings.server_max_window_bits, self.mem_level)
            elif self._stale:
                # Forget the history: the empty stored block a full flush
                # emits is dropped, which leaves the client's stream intact.
                encoder.flush(Z_FULL_FLUSH)
            self._stale = False
            head = encoder.compress(payload)
            tail = encoder.flush(Z_SYNC_FLUSH)
        except BaseException:
            self._encoder = None        # a fresh compressor refers to nothing
            raise
        return _strip_trailer(head, tail)

    cpdef reset(self):
        """The client received a message this compressor did not produce (e.g.
        a shared :func:`deflate_standalone` frame): the next message must not
        refer to earlier ones. Cheap; call it for every such message."""
        self._stale = True
