# cython: language_level=3
"""The HTTP/1.1 side of a connection, on httptools.

Each accepted socket starts with an :class:`HttpProtocol`. Plain requests are
answered in order (keep-alive and pipelining) by the server's ``http_handler``;
an upgrade on a WebSocket endpoint path hands the socket to picows: the
request is re-serialised from what httptools parsed, followed by any bytes the
client sent after it, and fed to a fresh picows ``WSProtocol``.

This extension is built from ``http.pyx`` and the files it includes (pasted
in at compile time: one module, nothing added at run time):

- ``http.pyx``: :class:`HttpProtocol`: reading requests (the one-pass
  ``RequestScanner`` of simplew._fast.head, then httptools's callbacks), the
  queue of answers in request order, async answers, timeouts, admission, the
  access log, and the connection's ``State``;
- ``http_response.pxi``: reason phrases, the Date header, the two response
  encoders;
- ``http_files.pxi``: :class:`FileBody`, :class:`PreparedBody` and the
  streaming of file bodies (sendfile);
- ``http_flow.pxi``: ``_FlowControl``, a connection's two pauses (writing
  paused by the transport, reading paused by the connection);
- ``http_upgrade.pxi``: the WebSocket upgrade's checks and the hand-off of the
  socket to picows.

``HttpLimits`` and ``HttpStats`` live in simplew._fast.context with the
``ServerContext`` an :class:`HttpProtocol` is made with; this module still
exports them.

Answers go out in request order through one queue: while the transport's
write buffer is above its high-water mark (a client that does not read), the
requests already parsed wait in the queue and reading is paused, so a burst of
pipelined requests cannot make the server buffer their responses all at once.

``http_handler`` returns ``(status, headers, body)``, or an awaitable of it
(an ``async def`` REST handler): then the connection answers nothing else
until it resolves, and the requests pipelined behind it wait in the queue, so
responses always leave in request order.

Every answered request counts in the server's :class:`HttpStats` and, with
``access_log``, gets one INFO line on the ``simplew.access`` logger.

Bad input is answered with an error status and ``Connection: close``; the
server then shuts its sending side and reads and discards what the client
still sends for a short while (a lingering close), so the client reads the
error instead of a connection reset.

Timeouts (``HttpLimits``): a keep-alive connection with no request in
progress is closed after ``idle_timeout``; a request whose head (request line
and headers) is not complete ``header_timeout`` after its first byte, or whose
body stalls for ``idle_timeout``, gets 408 and the connection closes. A
response that makes no progress towards a client that does not read for
``idle_timeout`` gets the connection aborted.

Admission (``HttpLimits.admission``, simplew._fast.admission): a connection
accepted over ``max_connections`` or ``max_connections_per_ip`` gets 503 and
``Connection: close`` for its first request (upgrade or not) and is closed; it
has ``linger_timeout`` to send that request. A WebSocket upgrade needs
``Sec-WebSocket-Version: 13`` (else 426 naming version 13) and, when its
``Origin`` header is present, an origin the endpoint allows (else 403).

Client addresses (``ServerContext.proxies``, simplew._fast.proxy): with the
PROXY protocol, a connection's first bytes are its PROXY header, read before
any request and before admission; a missing or malformed one, or one from an
untrusted peer, closes the connection. Without it, a trusted peer's requests
name their client in ``Forwarded`` / ``X-Forwarded-For``; such a connection is
admitted (per-IP limit) with the client of its first request. Each
``Request.remote`` is the client's address.

Request heads: an HTTP/1.1 request needs exactly one ``Host`` header, and a
request of any version at most one (RFC 9112 section 3.2), else 400; an
HTTP/1.0 request may have none.
"""
import asyncio
import functools
import logging
import time
from collections import deque

from cpython.pyport cimport PY_SSIZE_T_MAX

import httptools

from simplew._fast.admission cimport Admission
from simplew._fast.context cimport HttpLimits, HttpStats, ServerContext
from simplew._fast.head cimport RequestScanner
from simplew._fast.proxy cimport ProxyHeader, ProxyPolicy, ProxyReader
from simplew._fast.proxy import ProxyHeaderError
from simplew._fast.request cimport Request, new_request
from simplew._fast.sse cimport SseConnection

log = logging.getLogger("simplew.http")
access_log = logging.getLogger("simplew.access")

cdef object HttpParserUpgrade = httptools.HttpParserUpgrade
cdef object HttpParserError = httptools.HttpParserError
cdef object HttpParserCallbackError = httptools.HttpParserCallbackError
cdef object parse_url = httptools.parse_url

cdef double INF = float("inf")
cdef object _perf_counter = time.perf_counter
cdef object _ensure_future = asyncio.ensure_future
cdef object _partial = functools.partial
cdef tuple _SERVER_ERROR = (500, [("Content-Type", "text/plain")], b"internal server error\n")
# requests parsed while an async answer is pending, before reading pauses
cdef Py_ssize_t MAX_QUEUED_BEHIND = 16
cdef Py_ssize_t ANY_QUEUE = PY_SSIZE_T_MAX  # no bound on the queue (HttpProtocol._read_again)

include "http_response.pxi"    # reasons, the Date header, the two response encoders
include "http_files.pxi"       # FileBody, PreparedBody and the streaming of file bodies
include "http_flow.pxi"        # the two pauses (writing, reading) of a connection
include "http_upgrade.pxi"     # the WebSocket upgrade checks and the hand-off to picows


class _Reject(Exception):
    """Raised from a parser callback to answer with ``status`` and close."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# where a connection is in its life; it only moves forward
cdef enum State:
    READING = 0     # requests are read and answered in request order
    # FINISHING: no further request is read (after the last one, a refusal, the
    # client's EOF or a WebSocket upgrade); the answers due still go out
    FINISHING = 1
    CLOSING = 2     # no further answer is written: closing, aborted, lost or upgraded

# which part of a request a connection is reading
cdef enum Phase:
    IDLE = 0        # between requests
    HEAD = 1        # request line and headers
    BODY = 2        # request body

# queued work, in request order
cdef enum Work:
    ANSWER = 0      # (ANSWER, request, keep_alive)
    FAIL = 1        # (FAIL, status, message, headers)
    UPGRADE = 2     # (UPGRADE, request, endpoint)


cdef class HttpProtocol:
    """asyncio protocol for one HTTP/1.1 connection until it upgrades.

    Its life is one ``State``: READING requests, FINISHING (no further request
    is read, the answers due still go out), CLOSING (nothing more is written).
    Orthogonal to it: ``_phase``, the part of a request being read; ``flow``,
    the two pauses; ``_eof``, the client shut its side (close once answered).
    """
    cdef object transport
    cdef object loop
    cdef object parser
    cdef RequestScanner scanner   # the common request, read without httptools's callbacks
    cdef ServerContext context    # http_handler, endpoint_for, limits, stats (_fast.context)
    cdef HttpLimits limits
    cdef object picows_options    # dict of WSProtocol arguments
    cdef set connections          # the server's open HTTP connections (never None)
    # the request being parsed
    cdef list _url_parts
    cdef Py_ssize_t _url_size
    cdef dict _headers
    cdef Py_ssize_t _header_size
    cdef int _host_count          # Host header lines
    cdef list _body_parts
    cdef Py_ssize_t _body_size
    cdef object _upgrade_request
    cdef bint _upgrade_keep_alive
    cdef State _state             # reading, finishing (answers due only) or closing
    cdef Phase _phase             # of the request being read (timeouts, 408 or 431)
    cdef bint _progress           # a parser callback ran during this feed
    cdef Py_ssize_t _stalled      # bytes fed since the parser last reported anything
    # answers
    cdef object _queue            # deque of Work tuples waiting for the client to read
    cdef bytearray _upgrade_rest  # bytes after a queued upgrade request
    cdef _FlowControl flow        # writing paused by the transport, reading paused by us
    cdef bint _eof                # the client shut its sending side
    # timeouts
    cdef double _now
    cdef double _deadline
    cdef double _period
    cdef double _idle
    cdef double _head
    cdef Py_ssize_t _sent_mark    # write buffer size at the last expiry (-1: none)
    cdef object _timer
    # answers from async handlers, statistics and the access log
    cdef object _pending          # future of the answer being computed, or None
    cdef _FileStream _stream      # the file body being written (then _pending is it too)
    cdef long long _stream_mark   # its bytes sent at the last timer expiry
    cdef HttpStats stats
    cdef object _access           # the simplew.access logger, or None when off
    cdef str _client              # "host:port" of _remote, for the access log
    cdef int _sock_fd             # the socket for sendfile (-1: not a plain socket, -2: unknown)
    # the client's address (simplew._fast.proxy)
    cdef object _remote           # (host, port): the peer, or the PROXY header's source
    cdef ProxyReader _proxy       # reading the PROXY header, or None
    cdef ProxyPolicy _forwarded   # the peer is a trusted proxy: requests name the client
    cdef bint _admit_pending      # admission waits for the first request's client
    # admission
    cdef Admission _admission     # holds a slot of it until the connection closes, or None
    cdef object _peer_host        # the host the slot is counted for (None: not per host)
    cdef bint _over_limit         # accepted over a connection limit: answered 503

    def __init__(self, ServerContext context not None):
        cdef HttpLimits limits = context.limits
        self.context = context
        self.stats = context.http_stats
        self._access = context.access_log
        self.limits = limits
        self.picows_options = context.picows_options
        self.connections = context.http_connections
        self.parser = httptools.HttpRequestParser(self)
        self.scanner = RequestScanner(limits.max_url_size, limits.max_header_size,
                                      limits.max_body_size)
        self._queue = deque()
        self.flow = _FlowControl()
        self._state = READING
        self._phase = IDLE
        self._deadline = INF
        self._period = INF
        self._sent_mark = -1

    # -- asyncio ----------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.flow.transport = transport
        self._sock_fd = -2
        self.loop = asyncio.get_running_loop()
        self.connections.add(self)
        limits = self.limits
        self._idle = limits._idle_timeout
        self._head = limits._header_timeout or self._idle
        self._now = self.loop.time()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._remote = (str(peer[0]), peer[1])
        if self.context.proxies is not None and not self._trust_peer(self.context.proxies):
            return
        if limits.admission is not None and self._proxy is None and not self._admit_pending:
            self._admit(limits.admission)
        if self._idle > 0:
            self._period = self._idle
        if self._head > 0 and self._head < self._period:
            self._period = self._head
        self._set_deadline(self._after(self._idle))

    cdef bint _trust_peer(self, ProxyPolicy proxies) except -1:
        """Set up how the client's address is read; False when the connection is refused."""
        host = None if self._remote is None else self._remote[0]
        if proxies.protocol:
            if not proxies.trusts(host):
                self._refuse_proxy(proxies, "a PROXY protocol header from an untrusted peer")
                return False
            self._proxy = ProxyReader()
        elif proxies.trusts(host):
            self._forwarded = proxies
            self._admit_pending = self.limits.admission is not None
        return True

    cdef _refuse_proxy(self, ProxyPolicy proxies, str reason):
        proxies.refused += 1
        log.debug("closing %s: %s", _peer_text(self._remote), reason)
        self._proxy = None
        self._close(False)

    cdef _read_proxy(self, data):
        """Feed the PROXY header; the bytes after it once it is read, else None."""
        cdef ProxyHeader header
        try:
            header = self._proxy.feed(data)
        except ProxyHeaderError as exc:
            self._refuse_proxy(self.context.proxies, str(exc))
            return None
        if header is None:
            return None
        rest = self._proxy.rest
        self._proxy = None
        if header.source is not None:
            self._remote = header.source
            self._client = None
        if self.limits.admission is not None:
            self._admit(self.limits.admission)
        return rest or None

    cdef _place(self, Request request):
        """Give ``request`` its client; with a pending admission, admit it now."""
        request.remote = self._remote
        if self._forwarded is not None:
            client = self._forwarded.forwarded_client(request.headers)
            if client is not None:
                request.remote = client
            if self._admit_pending:
                self._admit_pending = False
                self._admit(self.limits.admission, request.remote)

    cdef _admit(self, Admission admission, remote=None):
        if remote is None:
            remote = self._remote
        host = None
        if admission.tracks_hosts:
            host = "-" if remote is None else remote[0]
        if admission.admit(host):
            self._admission = admission
            self._peer_host = host
        else:           # answered 503 at its first request, which must come soon
            self._over_limit = True
            self._idle = self._head = self.limits._linger_timeout or 2.0

    def connection_lost(self, exc):
        self.transport = None
        self.flow.transport = None
        if self._admission is not None:
            self._admission.release(self._peer_host)
            self._admission = None
        self.connections.discard(self)
        self._state = CLOSING
        self._queue.clear()
        self._upgrade_rest = None
        self._end_stream()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def shutdown(self):
        """Close for a server stop: what is already written goes out, queued answers do not."""
        if self.transport is not None and self._state != CLOSING:
            self._close(False)

    def eof_received(self):
        if self._state == CLOSING or self.transport is None:
            return False
        self._stop_reading()
        if self._queue or self._pending is not None:    # answers still to write: close after
            self._eof = True
            return True
        return False                # the transport closes after writing what it holds

    def pause_writing(self):
        self.flow.write_paused = True
        if self._stream is not None:
            self._stream.pause()
        if self.transport is not None and self._state != CLOSING:
            self.flow.pause_reading()

    def resume_writing(self):
        self.flow.write_paused = False
        self._sent_mark = -1
        if self.transport is None:
            return
        self._now = self.loop.time()
        if self._state != CLOSING and self._phase != HEAD:    # the client reads: not idle
            self._set_deadline(self._after(self._idle))
        if self._stream is not None:
            self._stream.resume()
        self._drain()
        # the client reads again: resume however many answers are queued (unlike
        # _async_done and _stream_done; _complete pauses again past MAX_QUEUED_BEHIND)
        self._read_again(ANY_QUEUE)

    def data_received(self, data):
        self.stats.bytes_in += len(data)
        if self._state != READING:
            if self._upgrade_rest is not None:      # for the queued hand-off to picows
                self._upgrade_rest += data
            return                                  # else discarded: the connection is closing
        if self._proxy is not None:
            data = self._read_proxy(data)
            if data is None or self._state != READING:
                return
        self._now = self.loop.time()
        self._progress = False
        cdef object view = data
        cdef Py_ssize_t offset
        if self._phase == IDLE and not self._over_limit and type(data) is bytes:
            offset = self._scan(<bytes>data)
            if offset:
                if self._state != READING:
                    return
                self._stalled = 0
                if offset == len(<bytes>data):
                    return
                view = memoryview(data)[offset:]
        while True:
            try:
                self.parser.feed_data(view)
                break
            except HttpParserUpgrade as exc:
                offset = exc.args[0]
                if not self._upgrade(view, offset):
                    break
                view = memoryview(view)[offset:]    # an ignored upgrade: parse on
            except HttpParserError as exc:
                self._parser_failed(exc)
                break
        if self._state != READING:
            return
        if self._progress:
            self._stalled = 0
        else:
            # httptools gathers a header line before reporting it: bound what it holds
            self._stalled += len(data)
            if self._stalled > self.limits.max_header_size:
                if self._phase == HEAD:
                    self._fail(431, "a request header line is too large")
                else:
                    self._fail(400, "unparsable bytes in the request")
                return
        if self._phase == BODY:
            self._set_deadline(self._after(self._idle))

    cdef Py_ssize_t _scan(self, bytes data) except -1:
        """Answer the complete requests of the common shape at the start of
        ``data``; the length they took (what follows is httptools's)."""
        cdef RequestScanner scanner = self.scanner
        cdef Py_ssize_t pos = 0, used, n = len(data)
        while pos < n:
            used = scanner.scan(data, pos)
            if used == 0:
                break
            pos += used
            self._progress = True
            self._set_deadline(self._after(self._idle))
            request = new_request(scanner.method, scanner.path, scanner.query,
                                  scanner.headers, scanner.body)
            self._place(request)
            if self._over_limit:
                self._fail(503, "too many connections, try again later")
                break
            self._complete(request, scanner.keep_alive)
            if self._state != READING:
                break
        return pos

    cdef _parser_failed(self, exc):
        if self._state != READING:      # bytes after the last request of the connection
            return
        cause = exc.__context__
        if isinstance(cause, _Reject):
            self._fail(cause.status, cause.message, cause.headers)
        elif isinstance(exc, HttpParserCallbackError) and cause is not None:
            log.error("HTTP request handling failed", exc_info=cause)
            self._fail(500, "internal server error")
        else:
            self._fail(400, f"malformed HTTP request: {exc}")

    # -- httptools callbacks ----------------------------------------------

    def on_message_begin(self):
        self._progress = True
        self._phase = HEAD
        self._set_deadline(self._after(self._head))
        self._url_parts = []
        self._url_size = 0
        self._headers = {}
        self._header_size = 0
        self._host_count = 0
        self._body_parts = []
        self._body_size = 0

    def on_url(self, bytes url):
        self._progress = True
        self._url_size += len(url)
        if self._url_size > self.limits.max_url_size:
            raise _Reject(414, "request target is too long")
        self._url_parts.append(url)

    def on_header(self, bytes name, bytes value):
        self._progress = True
        self._header_size += len(name) + len(value) + 4
        if self._header_size > self.limits.max_header_size:
            raise _Reject(431, "request headers are too large")
        key = name.decode("latin-1").lower()
        if key == "host":
            self._host_count += 1
        if key in self._headers:
            self._headers[key] += ", " + value.decode("latin-1")
        else:
            self._headers[key] = value.decode("latin-1")

    def on_headers_complete(self):
        self._progress = True
        self._phase = BODY
        self._set_deadline(self._after(self._idle))
        if self._over_limit:
            raise _Reject(503, "too many connections, try again later")
        if self._host_count != 1 and (self._host_count > 1
                                      or self.parser.get_http_version() != "1.0"):
            raise _Reject(400, "a request needs exactly one Host header")
        coding = self._headers.get("transfer-encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            # "identity, chunked" and the like: framings another hop may read otherwise
            raise _Reject(400, "the only Transfer-Encoding accepted is chunked")
        length = self._headers.get("content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                raise _Reject(400, "invalid Content-Length")
            if size > self.limits.max_body_size:
                raise _Reject(413, f"request body exceeds {self.limits.max_body_size} bytes")
        if "expect" in self._headers:
            self._expect(length)

    cdef _expect(self, length):
        # a client waiting for "100 Continue" before it sends its body
        if (self._headers["expect"].strip().lower() != "100-continue"
                or self.parser.should_upgrade()
                or self.parser.get_http_version() == "1.0"):
            return
        if length is None and "chunked" not in self._headers.get("transfer-encoding", ""):
            return
        if (self._answers_wait() or self._state == CLOSING
                or self.transport is None
                or length == "0"):
            return          # earlier answers are pending: the client sends its body after a delay
        self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, bytes body):
        self._progress = True
        self._body_size += len(body)
        if self._body_size > self.limits.max_body_size:
            raise _Reject(413, f"request body exceeds {self.limits.max_body_size} bytes")
        self._body_parts.append(body)

    def on_message_complete(self):
        self._progress = True
        self._phase = IDLE
        self._set_deadline(self._after(self._idle))
        method = self.parser.get_method().decode("ascii")
        if method == "CONNECT":
            raise _Reject(405, "CONNECT is not supported", [("Allow", "GET, HEAD")])
        raw_url = b"".join(self._url_parts)
        try:
            url = parse_url(raw_url)
        except HttpParserError:
            raise _Reject(400, "invalid request target")
        path = url.path.decode("latin-1") if url.path else "/"
        query = url.query.decode("latin-1") if url.query else ""
        body = b"".join(self._body_parts)
        self._body_parts = None
        request = new_request(method, path, query, self._headers, body)
        self._place(request)
        if self._over_limit:
            raise _Reject(503, "too many connections, try again later")
        keep_alive = self.parser.should_keep_alive()
        if self.parser.should_upgrade():
            self._upgrade_request = request        # decided in _upgrade
            self._upgrade_keep_alive = keep_alive
            return
        self._complete(request, keep_alive)

    cdef _complete(self, request, bint keep_alive):
        """A request read in full: answer it now or queue it behind the earlier ones."""
        if not keep_alive:
            self._stop_reading()
        if self._answers_wait():
            self._queue.append((ANSWER, request, keep_alive))
            if (self._pending is not None and len(self._queue) >= MAX_QUEUED_BEHIND
                    and self.transport is not None):
                self.flow.pause_reading()       # resumed once the answers catch up
        else:
            self._answer(request, keep_alive)

    # -- answers ----------------------------------------------------------

    cdef inline bint _answers_wait(self) except -1:
        """An answer written now would jump the queue: earlier answers wait, the
        client does not read, or an async answer or a file body is under way."""
        if self._queue or self.flow.write_paused or self._pending is not None:
            return True
        return False

    cdef _push(self, tuple work):
        if self._answers_wait():
            self._queue.append(work)
        else:
            self._run(work)

    cdef _drain(self):
        while self._queue and not self.flow.write_paused and self._state != CLOSING \
                and self._pending is None and self.transport is not None:
            self._run(self._queue.popleft())
        if self._eof and not self._queue and self._pending is None and self._state != CLOSING \
                and self.transport is not None:
            self._close(False)

    cdef _run(self, tuple work):
        cdef int kind = work[0]
        if kind == ANSWER:
            self._answer(work[1], work[2])
        elif kind == FAIL:
            self._reject(work[1], work[2], work[3])
        else:
            self._handoff(work[1], work[2])

    cdef _answer(self, request, bint keep_alive):
        if self._state == CLOSING or self.transport is None:
            return
        cdef double start = -1.0
        if self._access is not None and self._access.isEnabledFor(20):
            start = _perf_counter()
        self.stats.requests += 1
        try:
            result = self.context.http_handler(request)
        except Exception:
            log.exception("HTTP handler failed for %s %s", request.method, request.path)
            result = _SERVER_ERROR
        if type(result) is tuple:
            self._respond(request, keep_alive, <tuple>result, start)
            return
        if isinstance(result, list):            # [status, headers, body]
            self._respond(request, keep_alive, tuple(result), start)
            return
        # an awaitable: nothing more is answered on this connection until it is done
        try:
            future = _ensure_future(result)
        except TypeError:
            log.error("HTTP handler returned %r for %s %s", result, request.method, request.path)
            self._respond(request, keep_alive, _SERVER_ERROR, start)
            return
        self._pending = future
        future.add_done_callback(_partial(self._async_done, request, keep_alive, start))

    def _async_done(self, request, bint keep_alive, double start, future):
        if self._pending is future:
            self._pending = None
        if future.cancelled():
            result = _SERVER_ERROR
        elif future.exception() is not None:
            log.error("HTTP handler failed for %s %s", request.method, request.path,
                      exc_info=future.exception())
            result = _SERVER_ERROR
        else:
            result = future.result()
            if type(result) is not tuple:
                log.error("HTTP handler gave %r for %s %s", result, request.method, request.path)
                result = _SERVER_ERROR
        if self._state == CLOSING or self.transport is None:
            return
        self._now = self.loop.time()
        if self._phase == IDLE:
            self._set_deadline(self._after(self._idle))
        self._respond(request, keep_alive, <tuple>result, start)
        self._drain()
        self._read_again(MAX_QUEUED_BEHIND)

    cdef _respond(self, request, bint keep_alive, tuple result, double start):
        """Write one answer (``result`` is status, headers, body)."""
        if len(result) == 3 and type(result[2]) is SseConnection:
            self._hand_to_stream(request, result, start)
            return
        cdef bint head = request.method == "HEAD"
        cdef bint echo = False
        if keep_alive:          # an HTTP/1.0 client asks for keep-alive and must be told it is on
            connection = request.headers.get("connection")
            echo = connection is not None and "keep-alive" in connection.lower()
        try:
            status, headers, content = result
            if (type(content) is PreparedBody and keep_alive and not echo and not head
                    and status == 200 and headers is content.headers
                    and len(<list>headers) == content.nheaders):
                date = http_date()
                if content.file is not None:        # the head here, the body by sendfile
                    if content.wire_date is not date:
                        content.wire = _encode(200, headers, content, True, True, False)
                        content.wire_date = date
                    if not self._prepared_sent(content):
                        self.stats.bytes_out += PyBytes_GET_SIZE(content.wire) + len(content)
                        self.transport.write(content.wire)
                        self.transport.write(content)
                    if start >= 0:
                        self._log_access(request.remote, request.method, request.url, 200,
                                         len(content), start)
                    return                          # keep-alive: nothing more to do
                else:
                    if content.wire_date is not date:
                        content.wire = _encode(200, headers, content, True, False, False)
                        content.wire_date = date
                    out = content.wire
            else:
                out = _encode(status, headers, content, keep_alive, head, echo)
        except Exception:
            log.exception("HTTP handler failed for %s %s", request.method, request.path)
            if len(result) == 3 and type(result[2]) is FileBody:
                (<FileBody>result[2]).close()
            status, headers, content = _SERVER_ERROR
            out = _encode(500, headers, content, keep_alive, head, echo)
        self.stats.bytes_out += len(out)
        self.transport.write(out)
        if start >= 0:
            self._log_access(request.remote, request.method, request.url, status,
                             0 if head else len(content), start)
        if type(content) is FileBody:
            if head or (<FileBody>content).length == 0 or _bodiless(status):
                (<FileBody>content).close()
            else:
                self._stream = _FileStream(self.transport, self.loop, <FileBody>content, self.stats,
                                           _partial(self._stream_done, keep_alive))
                self._pending = self._stream        # answers behind it wait in the queue
                self._stream_mark = -1
                if self.flow.write_paused:
                    self._stream.pause()
                self._stream.start()
                return                              # the end of the stream closes if needed
        if not keep_alive:
            self._close(False)

    cdef bint _prepared_sent(self, content):
        """Send a prepared answer whose body has a file with sendfile, when the
        connection is a plain socket with nothing waiting in its transport."""
        if self._sock_fd == -2:
            self._sock_fd = -1
            if SIMPLEW_SENDFILE and self.transport.get_extra_info("sslcontext") is None:
                sock = self.transport.get_extra_info("socket")
                if sock is not None:
                    self._sock_fd = sock.fileno()
        if self._sock_fd < 0 or self.transport.get_write_buffer_size() > 0:
            return False
        if not sendfile_prepared(self._sock_fd, content.wire, content, self.transport):
            return False
        self.stats.bytes_out += PyBytes_GET_SIZE(content.wire) + len(content)
        return True

    def _stream_done(self, bint keep_alive, bint ok):
        if self._pending is self._stream:
            self._pending = None
        self._stream = None
        if self._state == CLOSING or self.transport is None:
            return
        if not ok:                  # a body cut short: the client must see the connection end
            log.debug("aborting a connection whose file body could not be written in full")
            self._state = CLOSING
            self.transport.abort()
            return
        self._now = self.loop.time()
        if self._phase == IDLE:
            self._set_deadline(self._after(self._idle))
        if not keep_alive:
            self._close(False)
            return
        self._drain()
        self._read_again(MAX_QUEUED_BEHIND)

    cdef inline _read_again(self, Py_ssize_t max_queued):
        """Resume the reading flow control paused, unless the client still does not
        read, the connection is closing or gone, or ``max_queued`` answers wait."""
        if (self.flow.read_paused and not self.flow.write_paused and self._state != CLOSING
                and self.transport is not None and len(self._queue) < max_queued):
            self.flow.resume_reading()

    cdef _end_stream(self):
        """Stop a file body being written (the connection is closing)."""
        if self._stream is not None:
            stream = self._stream
            self._stream = None
            if self._pending is stream:
                self._pending = None
            stream.cancel()

    cdef _log_access(self, remote, str method, str target, int status, Py_ssize_t size,
                     double start):
        """One INFO line on ``simplew.access`` for an answered request from ``remote``."""
        cdef double ms = (_perf_counter() - start) * 1000.0
        cdef str client
        if remote is self._remote:
            if self._client is None:
                self._client = _peer_text(remote)
            client = self._client
        else:
            client = _peer_text(remote)
        self._access.info('%s "%s %s" %d %d %.2fms', client, method, target, status, size,
                          ms, extra={"client": client, "method": method, "path": target,
                                     "status": status, "bytes": size, "duration_ms": ms})

    cdef _fail(self, int status, str message, headers=None):
        """Answer ``status`` after the answers already due, then close."""
        self._stop_reading()
        self._push((FAIL, status, message, headers))

    cdef _reject(self, int status, str message, headers):
        if self._state == CLOSING or self.transport is None:
            return
        log.debug("rejecting request with %d: %s", status, message)
        out_headers = [("Content-Type", "text/plain; charset=utf-8")]
        if headers:
            out_headers.extend(headers)
        content = (message + "\n").encode()
        out = _encode(status, out_headers, content, False, False, False)
        self.stats.requests += 1
        self.stats.bytes_out += len(out)
        self.transport.write(out)
        if self._access is not None and self._access.isEnabledFor(20):
            self._log_access(self._remote, "-", "-", status, len(content), _perf_counter())
        self._close(True)

    cdef inline _stop_reading(self):
        """No further request is read; the answers already due still go out."""
        if self._state == READING:
            self._state = FINISHING

    cdef _close(self, bint linger):
        """Close after what is written; with ``linger``, drain the client's bytes first."""
        if self._state == CLOSING:
            return
        self._state = CLOSING
        self._queue.clear()
        self._upgrade_rest = None
        self._end_stream()
        transport = self.transport
        if transport is None:
            return
        if linger and transport.can_write_eof():
            transport.write_eof()       # sent once the response is out
            self.flow.resume_reading()  # whatever the pauses: read and discard what comes
        else:
            transport.close()
        # a client that neither reads nor closes is aborted after linger_timeout
        self._sent_mark = -1
        self._deadline = self._after(self.limits._linger_timeout or 2.0)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(self._deadline, self._on_timer)

    # -- timeouts ---------------------------------------------------------

    cdef inline double _after(self, double seconds):
        return self._now + seconds if seconds > 0 else INF

    cdef inline _set_deadline(self, double deadline):
        self._deadline = deadline
        self._sent_mark = -1
        if self._timer is None and deadline != INF and self.loop is not None:
            self._arm(self._now)

    cdef _arm(self, double now):
        # Every deadline set while serving is at least _period away, so a timer
        # that fires at most _period after it was armed never fires late.
        cdef double at = self._deadline
        if now + self._period < at:
            at = now + self._period
        self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self):
        self._timer = None
        transport = self.transport
        if transport is None or self._deadline == INF:
            return
        cdef double now = self.loop.time()
        self._now = now
        if now < self._deadline:
            self._arm(now)
            return
        cdef Py_ssize_t pending = transport.get_write_buffer_size()
        if self._stream is not None and pending == 0 and self._state != CLOSING:
            if self._stream.sent != self._stream_mark:     # the file body still moves
                self._stream_mark = self._stream.sent
                self._deadline = self._after(self._idle or self.limits._linger_timeout or 2.0)
                self._timer = self.loop.call_at(self._deadline, self._on_timer)
                return
            log.debug("aborting a connection that does not read its file body")
            self._end_stream()
            self._state = CLOSING
            transport.abort()
            return
        if pending > 0 and (self._sent_mark < 0 or pending < self._sent_mark):
            # a response is still going out and has moved since the last look
            self._deadline = self._after(self._idle or self.limits._linger_timeout or 2.0)
            self._sent_mark = pending
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        if self._pending is not None and self._state != CLOSING and pending == 0:
            # an async handler is still working on an answer: the client is not late
            if self._phase != IDLE:
                self._phase = IDLE
                self._fail(408, "the request was not received in time")
            self._deadline = self._after(self._idle or self._head)
            self._arm(now)
            return
        if self._state == CLOSING or pending > 0 or self._queue:
            log.debug("aborting a connection that does not read or close")
            self._state = CLOSING
            transport.abort()
        elif self._phase != IDLE:
            self._fail(408, "the request was not received in time")
        else:
            self._close(False)          # an idle keep-alive connection

    # -- upgrade ----------------------------------------------------------

    cdef bint _upgrade(self, view, Py_ssize_t offset) except -1:
        """Act on an upgrade request; True when the connection goes on as HTTP/1.1."""
        request = self._upgrade_request
        self._upgrade_request = None
        if request is None:
            self._fail(400, "upgrade without a request")
            return False
        if _asks_websocket(request):
            self._stop_reading()
            endpoint = self.context.endpoint_for(request.path)
            if endpoint is None:
                self._fail(404, "no WebSocket endpoint here")
                return False
            refusal = _upgrade_refusal(request, endpoint, self.limits)
            if refusal is not None:
                self._fail(refusal[0], refusal[1], refusal[2])
                return False
            self._upgrade_rest = bytearray(view[offset:])
            self._push((UPGRADE, request, endpoint))
            return False
        # Another protocol (h2c, …) or method: the upgrade is ignored and the
        # request answered as HTTP/1.1. httptools skipped its body, so one with
        # a body cannot be parsed on.
        headers = request.headers
        if "transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0":
            self._fail(400, "an upgrade request with a body is not supported")
            return False
        if not self._upgrade_keep_alive:
            self._stop_reading()
        self._push((ANSWER, request, self._upgrade_keep_alive))
        return self._state == READING

    cdef _handoff(self, request, endpoint):
        """The queued upgrade's turn: the socket goes to picows (http_upgrade.pxi)."""
        if self._state == CLOSING or self.transport is None:
            return
        self.stats.requests += 1
        if self._access is not None and self._access.isEnabledFor(20):
            self._log_access(request.remote, request.method, request.url, 101, 0, _perf_counter())
        rest = bytes(self._upgrade_rest) if self._upgrade_rest is not None else b""
        self._upgrade_rest = None
        head = _request_head(request)
        opts = self.picows_options
        protocol = _websocket_protocol(request, endpoint, opts)
        protocol.admission = self._admission        # the slot goes with the socket
        protocol.host = self._peer_host
        self._admission = None
        transport = self._let_go()      # picows reads from here on
        loop = asyncio.get_running_loop()
        _start_websocket(protocol, transport, loop, head + rest, opts)
        # The transport may keep a bound method of this protocol after the
        # switch (uvloop caches data_received): keep only a small shell alive.
        loop.call_soon(self._release)

    cdef _hand_to_stream(self, request, tuple result, double start):
        """An event stream's answer (simplew._fast.sse): the socket, and its admission
        slot, go to the stream, which writes the head; no further request is read."""
        cdef SseConnection stream = result[2]
        if self._access is not None and start >= 0:
            self._log_access(request.remote, request.method, request.url, 200, 0, start)
        admission, self._admission = self._admission, None
        transport = self._let_go()
        stream.attach(transport, admission, self._peer_host, http_date(), list(result[1]))
        asyncio.get_running_loop().call_soon(self._release)

    cdef object _let_go(self):
        """The socket goes to another protocol: this one lets go of it (reading
        resumed, whatever the pauses) and is done; returns the transport."""
        transport = self.transport
        self.transport = None
        self._state = CLOSING
        self.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flow.resume_reading()
        self.flow.transport = None
        return transport

    def _release(self):
        self.parser = None
        self._queue = None
        self._headers = None
        self._url_parts = None
        self._body_parts = None
        self._upgrade_request = None
        self.context = None


cdef str _peer_text(peer):
    """``host:port`` (``[host]:port`` for IPv6) of a peername, ``-`` when unknown."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer) if peer else "-"
