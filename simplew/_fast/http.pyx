# cython: language_level=3
"""The HTTP/1.1 side of a connection, on httptools.

Each accepted socket starts with an :class:`HttpProtocol`. Plain requests are
answered in order (keep-alive and pipelining) by the server's ``http_handler``;
an upgrade on a WebSocket endpoint path hands the socket to picows: the
request is re-serialised from what httptools parsed, followed by any bytes the
client sent after it, and fed to a fresh picows ``WSProtocol``.
"""
import asyncio
import logging
import time
from email.utils import formatdate

import httptools
from picows.picows import WSProtocol, WSAutoPingStrategy

from simplew.request import Request

log = logging.getLogger("simplew.http")
picows_log = logging.getLogger("simplew.picows")

cdef object HttpParserUpgrade = httptools.HttpParserUpgrade
cdef object HttpParserError = httptools.HttpParserError
cdef object parse_url = httptools.parse_url

REASONS = {
    200: "OK", 101: "Switching Protocols", 204: "No Content", 206: "Partial Content",
    301: "Moved Permanently", 302: "Found", 304: "Not Modified",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
    426: "Upgrade Required", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
}

cdef double _date_second = 0
cdef bytes _date_header = b""


cdef bytes http_date():
    global _date_second, _date_header
    cdef double now = time.time()
    if <long>now != <long>_date_second:
        _date_second = now
        _date_header = formatdate(<long>now, usegmt=True).encode("latin-1")
    return _date_header


cdef class HttpLimits:
    """Size limits of the HTTP layer, set by the server facade."""
    cdef public Py_ssize_t max_body_size
    cdef public Py_ssize_t max_header_size
    cdef public Py_ssize_t max_url_size

    def __init__(self, max_body_size=1 << 20, max_header_size=16384, max_url_size=8192):
        self.max_body_size = max_body_size
        self.max_header_size = max_header_size
        self.max_url_size = max_url_size


class _Reject(Exception):
    """Raised from a parser callback to answer with ``status`` and close."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


cdef class HttpProtocol:
    """asyncio protocol for one HTTP/1.1 connection until it upgrades."""
    cdef object transport
    cdef object parser
    cdef object app               # the server facade: http_handler, endpoint_for
    cdef HttpLimits limits
    cdef object picows_options    # dict of WSProtocol arguments
    cdef list _url_parts
    cdef Py_ssize_t _url_size
    cdef dict _headers
    cdef Py_ssize_t _header_size
    cdef list _body_parts
    cdef Py_ssize_t _body_size
    cdef object _request
    cdef bint _closing

    def __init__(self, app, HttpLimits limits, dict picows_options):
        self.app = app
        self.limits = limits
        self.picows_options = picows_options
        self.parser = httptools.HttpRequestParser(self)
        self._closing = False
        self._request = None

    # -- asyncio ----------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.transport = None

    def eof_received(self):
        return False

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass

    def data_received(self, data):
        if self._closing:
            return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0]:])
        except _Reject as exc:
            self._reject(exc.status, exc.message)
        except HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.status, cause.message)
            else:
                self._reject(400, f"malformed HTTP request: {exc}")

    # -- httptools callbacks ----------------------------------------------

    def on_message_begin(self):
        self._url_parts = []
        self._url_size = 0
        self._headers = {}
        self._header_size = 0
        self._body_parts = []
        self._body_size = 0

    def on_url(self, bytes url):
        self._url_size += len(url)
        if self._url_size > self.limits.max_url_size:
            raise _Reject(414, "request target is too long")
        self._url_parts.append(url)

    def on_header(self, bytes name, bytes value):
        self._header_size += len(name) + len(value) + 4
        if self._header_size > self.limits.max_header_size:
            raise _Reject(431, "request headers are too large")
        key = name.decode("latin-1").lower()
        if key in self._headers:
            self._headers[key] += ", " + value.decode("latin-1")
        else:
            self._headers[key] = value.decode("latin-1")

    def on_headers_complete(self):
        length = self._headers.get("content-length")
        if length is not None:
            try:
                if int(length) > self.limits.max_body_size:
                    raise _Reject(413, f"request body exceeds {self.limits.max_body_size} bytes")
            except ValueError:
                raise _Reject(400, "invalid Content-Length")

    def on_body(self, bytes body):
        self._body_size += len(body)
        if self._body_size > self.limits.max_body_size:
            raise _Reject(413, f"request body exceeds {self.limits.max_body_size} bytes")
        self._body_parts.append(body)

    def on_message_complete(self):
        raw_url = b"".join(self._url_parts)
        try:
            url = parse_url(raw_url)
        except HttpParserError:
            raise _Reject(400, "invalid request target")
        path = url.path.decode("latin-1") if url.path else "/"
        query = url.query.decode("latin-1") if url.query else ""
        method = self.parser.get_method().decode("ascii")
        body = b"".join(self._body_parts)
        self._body_parts = None
        request = Request(method, path, query, self._headers, body)
        if self.parser.should_upgrade():
            self._request = request        # answered in _upgrade
            return
        keep_alive = self.parser.should_keep_alive()
        status, headers, content = self.app.http_handler(request)
        self._respond(status, headers, content, keep_alive, method == "HEAD")

    # -- responses --------------------------------------------------------

    cdef _respond(self, int status, list headers, bytes content, bint keep_alive, bint head):
        if self.transport is None:
            return
        cdef list out = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Unknown").encode()),
                         b"Server: simplew\r\nDate: ", http_date(), b"\r\n"]
        for name, value in headers:
            out.append(f"{name}: {value}\r\n".encode("latin-1"))
        if status != 304 and status != 204:
            out.append(b"Content-Length: %d\r\n" % len(content))
        out.append(b"\r\n" if keep_alive else b"Connection: close\r\n\r\n")
        if not head and status != 304 and status != 204:
            out.append(content)
        self.transport.write(b"".join(out))
        if not keep_alive:
            self._closing = True
            self.transport.close()

    cdef _reject(self, int status, str message):
        log.debug("rejecting request with %d: %s", status, message)
        body = (message + "\n").encode()
        self._respond(status, [("Content-Type", "text/plain; charset=utf-8")], body, False, False)

    # -- upgrade ----------------------------------------------------------

    cdef _upgrade(self, bytes rest):
        request = self._request
        self._request = None
        if request is None:
            self._reject(400, "upgrade without a request")
            return
        endpoint = self.app.endpoint_for(request.path)
        if endpoint is None or request.headers.get("upgrade", "").lower() != "websocket":
            self._respond(404, [("Content-Type", "text/plain; charset=utf-8")],
                          b"no WebSocket endpoint here\n", False, False)
            return
        lines = [f"{request.method} {request.url} HTTP/1.1\r\n"]
        for name, value in request.headers.items():
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        opts = self.picows_options
        protocol = WSProtocol(
            None, None, False,
            lambda upgrade: endpoint.connect(request),
            picows_log,
            True,                           # disconnect on exception
            opts["handshake_timeout"],
            opts["auto_ping"], opts["ping_interval"], opts["ping_timeout"],
            WSAutoPingStrategy.PING_WHEN_IDLE,
            True,                           # auto pong
            endpoint.max_message_size,      # no single frame may exceed a message
            None,
            opts["read_buffer_size"])
        transport = self.transport
        self.transport = None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        _feed(protocol, head + rest)


cdef _feed(protocol, bytes data):
    """Give ``data`` to a BufferedProtocol as if it had come from the socket."""
    cdef Py_ssize_t pos = 0, n
    cdef Py_ssize_t total = len(data)
    while pos < total:
        buf = protocol.get_buffer(total - pos)
        n = min(len(buf), total - pos)
        buf[:n] = data[pos:pos + n]
        protocol.buffer_updated(n)
        pos += n
