# cython: language_level=3
"""One WebSocket client: message reassembly, limits, the close handshake.

picows parses frames and answers pings; this listener turns frames into
messages (RFC 6455 section 5.4), enforces the maximum message size and UTF-8
validity of TEXT messages, completes the close handshake and hands each whole
message to its :class:`Endpoint`. Every frame it sends is one complete
``bytes`` object written in one call, so frames never interleave.

A protocol violation is answered with CLOSE (1002, 1007 or 1009) and the
socket is dropped when the client answers, or after ``close_timeout``. A
client that stops reading is dropped once ``max_write_buffer`` bytes wait for
it. What a client can cause at will is logged at DEBUG or INFO, never higher.
"""
import codecs
import logging
import uuid

from cpython.bytes cimport PyBytes_AS_STRING
from cpython.pythread cimport PyThread_get_thread_ident
from picows.picows cimport WSMsgType, WSCloseCode

from simplew._fast.frames cimport build_frame, text_frame, binary_frame, close_frame

log = logging.getLogger("simplew.websocket")

cdef object _utf8_decoder = codecs.getincrementaldecoder("utf-8")
CLOSE_TIMEOUT = 5.0
MAX_WRITE_BUFFER = 64 << 20


cdef inline bint _valid_close_code(int code) noexcept:
    """A status code a peer may put in a CLOSE frame (RFC 6455 section 7.4)."""
    return (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999)


class _ProtocolErrorFilter(logging.Filter):
    """Keep a client's protocol violations out of the ERROR log.

    picows logs a malformed frame (unmasked, oversized, bad opcode or length,
    bad CLOSE) at ERROR on its per-connection logger. A client can cause that
    at will, so it is dropped there and logged at DEBUG on
    ``simplew.websocket``, like the violations this module detects itself.
    Real failures (exceptions with a traceback) pass unchanged.
    """

    def filter(self, record):
        if record.levelno >= logging.ERROR and record.exc_info is None:
            msg = record.msg
            if type(msg) is str and (msg.startswith("WS parser error")
                                     or msg.startswith("on_ws_frame raised WSProtocolError")):
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("client protocol error: %s", record.getMessage())
                return False
        return True


cdef object _protocol_error_filter = _ProtocolErrorFilter()


class _LostWriteFilter(logging.Filter):
    """aiofastnet warns about every write to a socket it has begun to finalize
    (after 5 of them). A multicast queued before a client's reset reaches
    connection_lost writes to it harmlessly (the write is dropped), and a
    client could reset on purpose to fill the log: log those at DEBUG."""

    def filter(self, record):
        msg = record.msg
        if record.levelno == logging.WARNING and type(msg) is str \
                and msg.endswith("called after connection lost."):
            if log.isEnabledFor(logging.DEBUG):
                log.debug("aiofastnet: %s", record.getMessage())
            return False
        return True


cdef object _lost_write_filter = _LostWriteFilter()
logging.getLogger("aiofastnet").addFilter(_lost_write_filter)


cdef class Endpoint:
    def __init__(self, str path, Py_ssize_t max_message_size, server=None, hub=None):
        self.path = path
        self.max_message_size = max_message_size
        self.close_timeout = CLOSE_TIMEOUT
        self.max_write_buffer = MAX_WRITE_BUFFER
        self.server = server
        self.hub = hub

    def connect(self, request):
        """The listener for a client upgrading on this path (picows factory)."""
        return WebSocketConnection(self, request)

    cpdef on_message(self, WebSocketConnection conn, bint is_text, object data):
        pass

    def on_connect(self, WebSocketConnection conn):
        if self.hub is not None:
            self.hub.add(conn)
        if self.server is not None:
            self.server._session_opened(conn)

    def on_disconnect(self, WebSocketConnection conn):
        if self.hub is not None:
            self.hub.remove(conn)
        if self.server is not None:
            self.server._session_closed(conn)


cdef class WebSocketConnection(WSListener):
    """A connected client; controllers see it as ``self.session``."""

    def __init__(self, Endpoint endpoint, request):
        self.endpoint = endpoint
        self.request = request
        self.id = str(uuid.uuid4())
        self.hub_index = -1
        self.rooms = None
        self.state = {}
        self.closed = False
        self._msg_opcode = -1
        self._parts = None
        self._msg_size = 0
        self._decoder = None
        self._close_timer = None
        self._peer = None

    # -- picows callbacks -------------------------------------------------

    cpdef on_ws_connected(self, WSTransport transport):
        self.transport = transport
        self._loop = transport._loop
        self._thread_id = PyThread_get_thread_ident()
        underlying = transport.underlying_transport
        self._write = getattr(underlying, "write_nocheck", underlying.write)
        self._peer = underlying.get_extra_info("peername")
        self._write_buffer_size = underlying.get_write_buffer_size
        picows_logger = transport._logger
        if isinstance(picows_logger, logging.Logger) and \
                _protocol_error_filter not in picows_logger.filters:
            picows_logger.addFilter(_protocol_error_filter)
        self.endpoint.on_connect(self)

    cpdef on_ws_disconnected(self, WSTransport transport):
        self.closed = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._parts = None
        self.endpoint.on_disconnect(self)

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef WSMsgType op = frame.msg_type
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            if op == WSMsgType.CLOSE:   # the client is done: no answer to wait for
                self._close_now(1002, "reserved bits set without a negotiated extension")
            else:
                self.fail(1002, "reserved bits set without a negotiated extension")
            return
        if op == WSMsgType.CLOSE:
            self._on_close_frame(frame)
            return
        if self.closed:
            return                      # closing: data after our CLOSE is dropped
        if op == WSMsgType.PONG or op == WSMsgType.PING:
            return                      # picows answers pings itself
        if op == WSMsgType.CONTINUATION:
            if self._msg_opcode < 0:
                self.fail(1002, "continuation frame without a message to continue")
                return
            self._continue(frame)
            return
        if self._msg_opcode >= 0:
            self.fail(1002, "new data frame inside a fragmented message")
            return
        if frame.payload_size > self.endpoint.max_message_size:
            self.fail(1009, f"message exceeds {self.endpoint.max_message_size} bytes")
            return
        if frame.fin:
            if op == WSMsgType.TEXT:
                try:
                    text = frame.get_payload_as_utf8_text()
                except UnicodeDecodeError:
                    self.fail(1007, "invalid UTF-8 in text message")
                    return
                self._deliver(True, text)
            else:
                self._deliver(False, frame.get_payload_as_bytes())
            return
        self._msg_opcode = <int>op
        self._msg_size = 0
        self._parts = []
        self._decoder = _utf8_decoder() if op == WSMsgType.TEXT else None
        self._continue(frame)

    cdef _continue(self, WSFrame frame):
        self._msg_size += frame.payload_size
        if self._msg_size > self.endpoint.max_message_size:
            self.fail(1009, f"message exceeds {self.endpoint.max_message_size} bytes")
            return
        chunk = frame.get_payload_as_bytes()
        if self._decoder is not None:
            try:
                self._parts.append(self._decoder.decode(chunk, frame.fin))
            except UnicodeDecodeError:
                self.fail(1007, "invalid UTF-8 in text message")
                return
        else:
            self._parts.append(chunk)
        if not frame.fin:
            return
        is_text = self._decoder is not None
        data = ("" if is_text else b"").join(self._parts)
        self._msg_opcode = -1
        self._parts = None
        self._decoder = None
        self._deliver(is_text, data)

    cdef int _deliver(self, bint is_text, object data) except -1:
        self.endpoint.on_message(self, is_text, data)
        return 0

    cdef _on_close_frame(self, WSFrame frame):
        cdef int code = 1000
        if self.closed or self.transport.is_close_frame_sent:
            # The answer to our CLOSE: the handshake is complete.
            self.closed = True
            self.transport.disconnect()
            return
        if frame.payload_size >= 2:
            code = <int>frame.get_close_code()
            if not _valid_close_code(code):
                self._close_now(1002, f"invalid close code {code}")
                return
        # Echo the code (RFC 6455 section 5.5.1), then drop TCP: the server closes first.
        self._send_close(code, "")
        self.transport.disconnect()

    cdef _close_now(self, int code, str reason):
        """Answer a client's malformed CLOSE with CLOSE(code) and drop TCP at once."""
        if not self.closed and not self.transport.is_close_frame_sent:
            log.debug("closing %s with %d: %s", self.id, code, reason)
            self._send_close(code, reason)
        self.closed = True
        self.transport.disconnect()

    # -- sending ----------------------------------------------------------

    cdef int write_frame(self, bytes frame) except -1:
        cdef WSTransport transport = self.transport
        if self.closed or transport is None or transport.is_close_frame_sent \
                or transport.is_disconnected:
            return 0
        try:
            self._write(frame)
            if self.write_paused and self.endpoint.max_write_buffer > 0:
                self._check_write_buffer()
        except Exception as exc:
            # The socket is going away (uvloop refuses writes between closing
            # its handle and connection_lost): this client is gone, the others
            # of a multicast must still get the frame.
            self.closed = True
            log.debug("write to %s failed: %r", self.id, exc)
        return 0

    cdef _check_write_buffer(self):
        """Drop a client that lets more than ``max_write_buffer`` bytes pile up
        unsent (it does not read): the server's memory is not its queue."""
        cdef Py_ssize_t pending = self._write_buffer_size()
        if pending > self.endpoint.max_write_buffer:
            log.info("dropping %s: %d bytes unsent, over max_write_buffer %d",
                     self.id, pending, self.endpoint.max_write_buffer)
            self.closed = True
            self.transport.disconnect(False)

    cdef int _send_close(self, int code, str reason) except -1:
        """Write CLOSE(code, reason) as the last frame of this connection."""
        self.write_frame(close_frame(code, reason))
        self.closed = True
        self._parts = None
        self._decoder = None
        self._msg_opcode = -1
        if self.transport is not None:
            self.transport.is_close_frame_sent = True
        return 0

    cdef int fail(self, int code, str reason) except -1:
        """Fail the connection (a protocol violation): send CLOSE(code), then
        drop TCP once the client answers with its CLOSE, or after the endpoint's
        ``close_timeout``.

        Waiting for the answer (RFC 6455 section 7.1.1) rather than closing at
        once keeps unread client data from turning the close into a TCP reset
        that could destroy the CLOSE frame before the client reads it.
        """
        if self.closed or self.transport is None or self.transport.is_close_frame_sent:
            return 0
        log.debug("closing %s with %d: %s", self.id, code, reason)
        self._send_close(code, reason)
        if not self.transport.is_disconnected:
            self._close_timer = self._loop.call_later(self.endpoint.close_timeout, self.abort)
        return 0

    def _on_thread(self):
        return PyThread_get_thread_ident() == self._thread_id

    def send_frame(self, bytes frame):
        """Write a prebuilt frame; safe from any thread."""
        if PyThread_get_thread_ident() == self._thread_id:
            self.write_frame(frame)
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(self.send_frame, frame)

    def send_text(self, str text):
        """Send ``text`` as one TEXT message."""
        self.send_frame(text_frame(text))

    def send_binary(self, data):
        """Send ``data`` (bytes-like) as one BINARY message."""
        self.send_frame(binary_frame(data))

    def send(self, data):
        """Send a ``str`` as TEXT or a bytes-like object as BINARY."""
        if isinstance(data, str):
            self.send_frame(text_frame(data))
        else:
            self.send_frame(binary_frame(data))

    def close(self, int code=1000, str reason=""):
        """Start the close handshake; the socket is dropped after the client answers
        (or after the endpoint's ``close_timeout``, 5 s). Safe from any thread."""
        if not _valid_close_code(code):
            raise ValueError(f"{code} is not a close code an endpoint may send")
        if PyThread_get_thread_ident() != self._thread_id:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.close, code, reason)
            return
        if self.closed or self.transport is None or self.transport.is_close_frame_sent:
            return
        self._send_close(code, reason)
        if not self.transport.is_disconnected:
            self._close_timer = self._loop.call_later(self.endpoint.close_timeout, self.abort)

    def abort(self):
        """Drop the socket at once, without a close handshake. Safe from any thread."""
        if PyThread_get_thread_ident() != self._thread_id:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.abort)
            return
        self.closed = True
        self._close_timer = None
        if self.transport is not None:
            self.transport.disconnect(False)

    # picows logs a WARNING on every crossing of the write-buffer watermarks
    # unless the listener implements these; a slow reader would flood the log.
    # While paused, each write checks the client against max_write_buffer.
    cpdef pause_writing(self):
        self.write_paused = True

    cpdef resume_writing(self):
        self.write_paused = False

    @property
    def remote_address(self):
        """The client's (host, port); readable from any thread."""
        return self._peer

    # SimpleW spellings
    @property
    def Id(self):
        return self.id

    def SendText(self, str text):
        self.send_text(text)

    def SendBinary(self, data):
        self.send_binary(data)

    def Close(self, int code=1000, str reason=""):
        self.close(code, reason)

    def __repr__(self):
        return f"<Session {self.id} {self.endpoint.path}>"
