# The response encoders of simplew._fast.http (included there; one extension).
#
# ``_encode`` writes a response head into one C buffer when the header names and
# values are ASCII ``str`` and the body is ``bytes`` (or a FileBody, whose bytes
# the connection streams after the head); ``_encode_any`` writes the same bytes
# for any answer. Both add ``Server``, ``Date`` (formatted once a second),
# ``Content-Length`` and, when asked, ``Connection``.
from email.utils import formatdate

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcpy
from libc.time cimport time as c_time, time_t

REASONS = {
    100: "Continue", 101: "Switching Protocols",
    200: "OK", 204: "No Content", 206: "Partial Content",
    301: "Moved Permanently", 302: "Found", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
    416: "Range Not Satisfiable", 426: "Upgrade Required", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
}
cdef dict _REASONS = REASONS

cdef time_t _date_second = 0
cdef bytes _date_header = b""


cdef bytes http_date():
    global _date_second, _date_header
    cdef time_t now = c_time(NULL)
    if now != _date_second:
        _date_second = now
        _date_header = formatdate(<double>now, usegmt=True).encode("latin-1")
    return _date_header


cdef inline bint _bodiless(int status):
    return status < 200 or status == 204 or status == 304


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)

cdef enum:
    HEAD_MAX = 4096         # a longer response head is written by _encode_any

# status -> b"HTTP/1.1 <status> <reason>\r\nServer: simplew\r\nDate: "
cdef dict _status_lines = {}


cdef bytes _status_line(int status):
    line = _status_lines.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\nServer: simplew\r\nDate: " % (
            status, _REASONS.get(status, "Unknown").encode())
        if len(_status_lines) < 1000:
            _status_lines[status] = line
    return <bytes>line


cdef inline Py_ssize_t _put(char* buf, Py_ssize_t at, const char* src, Py_ssize_t n):
    """Copy ``n`` bytes to ``buf`` at ``at``; the new end, or -1 past HEAD_MAX."""
    if at < 0 or at + n > HEAD_MAX:
        return -1
    memcpy(buf + at, src, n)
    return at + n


cdef inline Py_ssize_t _put_text(char* buf, Py_ssize_t at, text):
    """Copy an ASCII ``str``; -1 for anything else (then _encode_any writes the head)."""
    if type(text) is not str or not PyUnicode_IS_ASCII(text):
        return -1
    return _put(buf, at, <const char*>PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text))


cdef bytes _encode(int status, list headers, content, bint keep_alive, bint head, bint echo):
    """The bytes of a response; ``head`` leaves the body out (HEAD). A FileBody
    ``content`` gives the Content-Length only: the caller streams it.

    The head is assembled in one buffer when its header names and values are
    ASCII ``str`` and ``content`` is ``bytes`` (or a FileBody); other answers
    go through :func:`_encode_any`, which writes the same bytes."""
    cdef bint bodiless = _bodiless(status)
    cdef bint file_body = type(content) is FileBody
    if not file_body and not isinstance(content, bytes):
        return _encode_any(status, headers, content, keep_alive, head, echo)
    cdef char buf[HEAD_MAX]
    cdef char digits[24]
    cdef Py_ssize_t at = 0, mark, k, length
    cdef bytes part = _status_line(status)
    at = _put(buf, at, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part))
    part = http_date()
    at = _put(buf, at, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part))
    at = _put(buf, at, b"\r\n", 2)
    for item in headers:
        if type(item) is not tuple or len(<tuple>item) != 2:
            return _encode_any(status, headers, content, keep_alive, head, echo)
        mark = at
        at = _put_text(buf, at, (<tuple>item)[0])
        at = _put(buf, at, b": ", 2)
        at = _put_text(buf, at, (<tuple>item)[1])
        if at < 0 or memchr(buf + mark, 13, at - mark) != NULL \
                or memchr(buf + mark, 10, at - mark) != NULL:
            return _encode_any(status, headers, content, keep_alive, head, echo)
        at = _put(buf, at, b"\r\n", 2)
    if not bodiless:
        length = (<FileBody>content).length if file_body else PyBytes_GET_SIZE(content)
        k = 24
        while True:
            k -= 1
            digits[k] = 48 + length % 10
            length //= 10
            if length == 0:
                break
        at = _put(buf, at, b"Content-Length: ", 16)
        at = _put(buf, at, digits + k, 24 - k)
        at = _put(buf, at, b"\r\n", 2)
    if not keep_alive:
        at = _put(buf, at, b"Connection: close\r\n\r\n", 21)
    elif echo:
        at = _put(buf, at, b"Connection: keep-alive\r\n\r\n", 26)
    else:
        at = _put(buf, at, b"\r\n", 2)
    if at < 0:
        return _encode_any(status, headers, content, keep_alive, head, echo)
    length = 0 if head or bodiless or file_body else PyBytes_GET_SIZE(content)
    out = PyBytes_FromStringAndSize(NULL, at + length)
    cdef char* dest = PyBytes_AS_STRING(out)
    memcpy(dest, buf, at)
    if length:
        memcpy(dest + at, PyBytes_AS_STRING(content), length)
    return out


def _both_encodings(int status, list headers, content, bint keep_alive=True, bint head=False,
                    bint echo=False):
    """(``_encode``'s bytes, ``_encode_any``'s bytes) for one answer: tests check they agree."""
    return (_encode(status, headers, content, keep_alive, head, echo),
            _encode_any(status, headers, content, keep_alive, head, echo))


cdef bytes _encode_any(int status, list headers, content, bint keep_alive, bint head, bint echo):
    """:func:`_encode` for any answer: header names and values of any type
    (written as ``str``), bodies of any bytes-like type, heads of any size."""
    cdef bint bodiless = _bodiless(status)
    reason = _REASONS.get(status, "Unknown")
    cdef list out = [b"HTTP/1.1 %d %s\r\nServer: simplew\r\nDate: " % (status, reason.encode()),
                     http_date(), b"\r\n"]
    for name, value in headers:
        line = f"{name}: {value}"
        if "\r" in line or "\n" in line:
            raise ValueError(f"line break in response header {name!r}")
        out.append((line + "\r\n").encode("latin-1"))
    if not bodiless:
        out.append(b"Content-Length: %d\r\n" % len(content))
    if not keep_alive:
        out.append(b"Connection: close\r\n\r\n")
    elif echo:
        out.append(b"Connection: keep-alive\r\n\r\n")
    else:
        out.append(b"\r\n")
    if not head and not bodiless and type(content) is not FileBody:
        out.append(content)
    return b"".join(out)
