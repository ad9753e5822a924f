# cython: language_level=3
"""Build complete server-to-client WebSocket frames as one ``bytes`` object.

A frame built here is immutable, so the same object can be queued on any
number of transports (multicast) without copies and without the risk of a
reused buffer being overwritten while it waits in a send queue.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8String
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

OPCODE_CONTINUATION = 0x0
OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA


cdef inline Py_ssize_t _header_size(Py_ssize_t size) noexcept:
    if size < 126:
        return 2
    if size < 65536:
        return 4
    return 10


cdef inline void _write_header(uint8_t* out, int opcode, Py_ssize_t size, bint rsv1) noexcept:
    cdef uint64_t length = <uint64_t>size
    cdef int i
    out[0] = 0x80 | (0x40 if rsv1 else 0) | (opcode & 0x0F)
    if size < 126:
        out[1] = <uint8_t>size
    elif size < 65536:
        out[1] = 126
        out[2] = <uint8_t>(length >> 8)
        out[3] = <uint8_t>length
    else:
        out[1] = 127
        for i in range(8):
            out[2 + i] = <uint8_t>(length >> (56 - 8 * i))


cdef bytes build_frame(int opcode, const char* payload, Py_ssize_t size, bint rsv1=False):
    """A final (FIN) unmasked frame with ``size`` bytes of ``payload``."""
    cdef Py_ssize_t header = _header_size(size)
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, header + size)
    cdef char* out = PyBytes_AS_STRING(frame)
    _write_header(<uint8_t*>out, opcode, size, rsv1)
    if size:
        memcpy(out + header, payload, size)
    return frame


cpdef bytes text_frame(str text):
    """The TEXT frame carrying ``text`` encoded as UTF-8."""
    cdef bytes data = PyUnicode_AsUTF8String(text)
    return build_frame(OPCODE_TEXT, PyBytes_AS_STRING(data), len(data))


cpdef bytes binary_frame(object data):
    """The BINARY frame carrying ``data`` (any bytes-like object)."""
    cdef const unsigned char[::1] view
    if isinstance(data, bytes):
        return build_frame(OPCODE_BINARY, PyBytes_AS_STRING(<bytes>data), len(<bytes>data))
    view = memoryview(data).cast("B")
    if view.shape[0] == 0:
        return build_frame(OPCODE_BINARY, NULL, 0)
    return build_frame(OPCODE_BINARY, <const char*>&view[0], view.shape[0])


cpdef bytes close_frame(int code, str reason=""):
    """The CLOSE frame with ``code`` and a UTF-8 ``reason`` cut to fit 123 bytes."""
    cdef bytes data = PyUnicode_AsUTF8String(reason)[:123]
    # Cutting may split a multi-byte character: drop the incomplete tail.
    data = data.decode("utf-8", "ignore").encode("utf-8")
    cdef bytes payload = bytes(((code >> 8) & 0xFF, code & 0xFF)) + data
    return build_frame(OPCODE_CLOSE, PyBytes_AS_STRING(payload), len(payload))


def build(int opcode, payload, bint rsv1=False):
    """Python entry to :func:`build_frame` for any bytes-like ``payload``."""
    cdef const unsigned char[::1] view = memoryview(payload).cast("B")
    if view.shape[0] == 0:
        return build_frame(opcode, NULL, 0, rsv1)
    return build_frame(opcode, <const char*>&view[0], view.shape[0], rsv1)


def apply_mask(data, bytes mask):
    """XOR ``data`` with the 4-byte ``mask`` (client-to-server masking); returns new bytes."""
    if len(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    cdef const unsigned char[::1] src = memoryview(data).cast("B")
    cdef Py_ssize_t n = src.shape[0]
    cdef bytes result = PyBytes_FromStringAndSize(NULL, n)
    cdef uint8_t* out = <uint8_t*>PyBytes_AS_STRING(result)
    cdef const uint8_t* m = <const uint8_t*>PyBytes_AS_STRING(mask)
    cdef uint32_t m32
    cdef uint64_t m64
    cdef Py_ssize_t i = 0
    if n == 0:
        return result
    memcpy(&m32, m, 4)
    m64 = (<uint64_t>m32 << 32) | m32
    cdef uint64_t chunk
    while i + 8 <= n:
        memcpy(&chunk, &src[i], 8)
        chunk ^= m64
        memcpy(out + i, &chunk, 8)
        i += 8
    while i < n:
        out[i] = src[i] ^ m[i & 3]
        i += 1
    return result
