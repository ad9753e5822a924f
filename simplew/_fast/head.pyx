# cython: language_level=3
"""The common HTTP/1.1 request, read in one pass ahead of httptools.

httptools reports a request through a Python callback per piece (message
begin, URL, each header, headers complete, body, message complete) and a
separate URL parse; for a small request that costs more than answering it.
:class:`RequestScanner` reads a whole request from the bytes of one
``data_received`` in C, but only requests of a strict, common shape:

- the method is GET, HEAD, POST, PUT, DELETE, PATCH or OPTIONS;
- the target is in origin form (starts with ``/``) and holds only RFC 3986
  path and query characters (no ``#``, no byte outside them);
- the version is ``HTTP/1.1`` or ``HTTP/1.0``; lines end with CRLF;
- header names are tokens, values printable ASCII (SP and HTAB inside);
- no header name appears twice; exactly one ``Host`` for HTTP/1.1;
- no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``; ``Connection`` is
  ``close`` or ``keep-alive``; ``Content-Length`` is 1 to 15 digits;
- the request is complete in the bytes given, body included, and within the
  URL, header and body size limits.

Anything else (a request cut across reads, chunked bodies, upgrades, odd
bytes, every malformed request) gets 0 from :meth:`RequestScanner.scan`, and
the caller feeds those bytes to httptools, which gives the answers it always
gave. A scanned request yields what the httptools callbacks and
``httptools.parse_url`` yield for it: the same method, path, query, header
values (leading whitespace dropped, trailing kept), body and keep-alive.
tests/fuzz/request_head.py checks that against httptools on arbitrary bytes.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.string cimport memcmp

cdef enum:
    TOKEN = 1           # tchar (RFC 9110 5.6.2)
    TARGET = 2          # pchar, "/" and "?" (RFC 3986), the origin-form target
    VALUE = 4           # field-value bytes kept here: HTAB, SP, VCHAR

cdef enum:
    MAX_NAME = 64       # a longer header name is left to httptools
    MAX_LENGTH_DIGITS = 15

cdef unsigned char CLASS[256]


cdef void _classes():
    cdef int c
    for c in range(256):
        CLASS[c] = 0
    for c in b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
        CLASS[c] |= TOKEN
    for c in b"-._~!$&'()*+,;=:@%/?0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
        CLASS[c] |= TARGET
    for c in range(0x20, 0x7f):
        CLASS[c] |= VALUE
    CLASS[9] |= VALUE


_classes()

cdef str EMPTY = ""
cdef bytes NO_BODY = b""


cdef inline bint _is(const unsigned char* p, Py_ssize_t n, const char* lower, Py_ssize_t m):
    """Whether the ``n`` bytes at ``p`` are ``lower`` (``m`` bytes), ignoring ASCII case."""
    if n != m:
        return False
    cdef Py_ssize_t k
    cdef unsigned char c
    for k in range(n):
        c = p[k]
        if 65 <= c <= 90:
            c += 32
        if c != <unsigned char>lower[k]:
            return False
    return True


cdef inline str _method(const unsigned char* p, Py_ssize_t n):
    if n == 3:
        if memcmp(p, b"GET", 3) == 0:
            return "GET"
        if memcmp(p, b"PUT", 3) == 0:
            return "PUT"
    elif n == 4:
        if memcmp(p, b"POST", 4) == 0:
            return "POST"
        if memcmp(p, b"HEAD", 4) == 0:
            return "HEAD"
    elif n == 5:
        if memcmp(p, b"PATCH", 5) == 0:
            return "PATCH"
    elif n == 6:
        if memcmp(p, b"DELETE", 6) == 0:
            return "DELETE"
    elif n == 7:
        if memcmp(p, b"OPTIONS", 7) == 0:
            return "OPTIONS"
    return None


cdef class RequestScanner:
    """Reads complete requests of the common shape; see the module's doc.

    After :meth:`scan` returns a length, ``method``, ``path``, ``query``,
    ``headers`` (lower-case names), ``body``, ``keep_alive`` and ``http10``
    describe that request.
    """

    def __init__(self, Py_ssize_t max_url_size=8192, Py_ssize_t max_header_size=16384,
                 Py_ssize_t max_body_size=1 << 20):
        self.max_url_size = max_url_size
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size

    def scan_bytes(self, bytes data, Py_ssize_t start=0):
        """:meth:`scan` for Python callers (tests and the fuzz harness)."""
        if start < 0 or start > len(data):
            raise ValueError("start is outside the data")
        return self.scan(data, start)

    cdef Py_ssize_t scan(self, bytes data, Py_ssize_t start) except -1:
        """The length of the request at ``data[start:]``, or 0 when it is not
        complete there or not of the common shape (then httptools reads it)."""
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t i = start, mark, target_at, query_at = -1, target_end
        cdef Py_ssize_t name_len, value_at, value_len, header_size = 0, k
        cdef long long length = -1
        cdef int hosts = 0, connection = 0          # connection: 1 close, 2 keep-alive
        cdef bint http10
        cdef unsigned char c
        cdef unsigned char name[MAX_NAME]

        # request line: method SP origin-form SP HTTP/1.x CRLF
        while i < n and i - start < 8 and buf[i] != 32:
            i += 1
        if i >= n or buf[i] != 32:
            return 0
        method = _method(buf + start, i - start)
        if method is None:
            return 0
        i += 1
        if i >= n or buf[i] != 47:                  # "/"
            return 0
        target_at = i
        while i < n and CLASS[buf[i]] & TARGET:
            if buf[i] == 63 and query_at < 0:      # "?"
                query_at = i
            i += 1
        target_end = i
        if target_end - target_at > self.max_url_size or n - i < 11:
            return 0
        if memcmp(buf + i, b" HTTP/1.", 8) != 0 or buf[i + 9] != 13 or buf[i + 10] != 10:
            return 0
        if buf[i + 8] == 49:                        # "1"
            http10 = False
        elif buf[i + 8] == 48:                      # "0"
            http10 = True
        else:
            return 0
        i += 11

        # header lines, up to the empty line
        headers = {}
        while True:
            if n - i < 2:
                return 0
            if buf[i] == 13:
                if buf[i + 1] != 10:
                    return 0
                i += 2
                break
            mark = i
            while i < n and CLASS[buf[i]] & TOKEN:
                i += 1
            name_len = i - mark
            if name_len == 0 or name_len > MAX_NAME or i >= n or buf[i] != 58:    # ":"
                return 0
            i += 1
            while i < n and (buf[i] == 32 or buf[i] == 9):
                i += 1
            value_at = i
            while i < n and CLASS[buf[i]] & VALUE:
                i += 1
            if n - i < 2 or buf[i] != 13 or buf[i + 1] != 10:
                return 0
            value_len = i - value_at
            i += 2
            header_size += name_len + value_len + 4
            if header_size > self.max_header_size:
                return 0
            for k in range(name_len):
                c = buf[mark + k]
                name[k] = c + 32 if 65 <= c <= 90 else c
            if name_len == 4 and memcmp(name, b"host", 4) == 0:
                hosts += 1
            elif name_len == 14 and memcmp(name, b"content-length", 14) == 0:
                if value_len == 0 or value_len > MAX_LENGTH_DIGITS:
                    return 0
                length = 0
                for k in range(value_len):
                    c = buf[value_at + k]
                    if c < 48 or c > 57:
                        return 0
                    length = length * 10 + (c - 48)
            elif name_len == 10 and memcmp(name, b"connection", 10) == 0:
                if _is(buf + value_at, value_len, "close", 5):
                    connection = 1
                elif _is(buf + value_at, value_len, "keep-alive", 10):
                    connection = 2
                else:
                    return 0
            elif ((name_len == 17 and memcmp(name, b"transfer-encoding", 17) == 0)
                    or (name_len == 7 and memcmp(name, b"upgrade", 7) == 0)
                    or (name_len == 6 and memcmp(name, b"expect", 6) == 0)):
                return 0
            key = PyUnicode_DecodeLatin1(<char*>name, name_len, NULL)
            if key in headers:
                return 0
            headers[key] = PyUnicode_DecodeLatin1(<char*>buf + value_at, value_len, NULL)
        if hosts == 0 and not http10:
            return 0

        # the body, whole
        if length > 0:
            if length > self.max_body_size or n - i < length:
                return 0
            self.body = PyBytes_FromStringAndSize(<char*>buf + i, length)
            i += length
        else:
            self.body = NO_BODY
        self.method = method
        if query_at < 0:
            self.path = PyUnicode_DecodeLatin1(<char*>buf + target_at, target_end - target_at, NULL)
            self.query = EMPTY
        else:
            self.path = PyUnicode_DecodeLatin1(<char*>buf + target_at, query_at - target_at, NULL)
            self.query = PyUnicode_DecodeLatin1(<char*>buf + query_at + 1,
                                                target_end - query_at - 1, NULL)
        self.headers = headers
        self.http10 = http10
        self.keep_alive = connection == 2 if http10 else connection != 1
        return i - start
