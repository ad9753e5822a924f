# cython: language_level=3
"""One WebSocket client: message reassembly, limits, the close handshake.

picows parses frames and answers pings; this listener turns frames into
messages (RFC 6455 section 5.4), enforces the maximum message size and UTF-8
validity of TEXT messages, inflates permessage-deflate messages, completes
the close handshake and hands each whole message to its :class:`Endpoint`.

Output is coalesced: frames sent to a client during one event-loop turn
(multicasts, replies) wait in its queue and go out in one write when the
turn's :class:`Flusher` runs, in the order they were sent; a CLOSE goes out
after them. Every frame is complete ``bytes``, so frames never interleave.

Slow clients: the transport's high-water mark is the endpoint's
``max_write_buffer``. A client above it is, by ``slow_client_policy``,
closed with 1008 ("close", the default) or skipped until it drains ("skip").

A protocol violation is answered with CLOSE (1002, 1007 or 1009) and the
socket is dropped when the client answers, or after ``close_timeout``. A
client that stops reading is dropped once ``max_write_buffer`` bytes wait for
it. What a client can cause at will is logged at DEBUG or INFO, never higher.
"""
import base64
import codecs
import json
import logging
import uuid

from cpython.pythread cimport PyThread_get_thread_ident
from picows.picows cimport WSMsgType

from simplew._fast.frames cimport build_frame, close_frame
from simplew._fast.deflate cimport Inflater, Deflater, DeflateSettings
from simplew._fast.deflate import MessageTooBig, InflateError, negotiate
from simplew._fast.gate import WriteGate
from simplew._fast.context cimport ServerContext
from picows.picows import WSUpgradeResponse, WSUpgradeResponseWithListener

log = logging.getLogger("simplew.websocket")

cdef object _utf8_decoder = codecs.getincrementaldecoder("utf-8")
CLOSE_TIMEOUT = 5.0
MAX_WRITE_BUFFER = 1 << 20
SLOW_CLOSE = 0          # slow_client_policy "close": CLOSE 1008, then drop
SLOW_SKIP = 1           # slow_client_policy "skip": drop its messages until it drains
PROTOCOL_V2 = "simplew.v2"
# a simplew.v2 client message that starts so is for the protocol, not the endpoint
PROTOCOL_MESSAGE = '{"type":'

cdef object _json_dumps = json.dumps
cdef object _b64encode = base64.b64encode


cdef bint _json_plain(bytes data) noexcept:
    """Whether ``data`` is printable ASCII without ``"`` or ``\\``: then its JSON
    string is the bytes between two quotes, as ``json.dumps`` writes it."""
    cdef const unsigned char* p = <const unsigned char*>(<char*>data)
    cdef Py_ssize_t i, n = len(data)
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        if c < 0x20 or c > 0x7e or c == 0x22 or c == 0x5c:
            return False
    return True


cpdef bytes v2_payload(str kind, int opcode, bytes payload, str head=""):
    """A ``simplew.v2`` message carrying ``payload``: ``{"type": kind, <head>
    "text": ...}`` for opcode 1 (TEXT, ``payload`` is UTF-8), ``"binary":
    <base64>`` for opcode 2. ``head`` is inserted as is (``"offset":1,...,``).
    The same bytes as ``json.dumps`` (ASCII, escapes) would make."""
    cdef bytes start = f'{{"type":"{kind}",{head}'.encode("utf-8")
    if opcode == 1:
        if _json_plain(payload):
            return start + b'"text":"' + payload + b'"}'
        return (start + b'"text":' + (<str>_json_dumps(payload.decode("utf-8"))).encode("ascii")
                + b"}")
    return start + b'"binary":"' + _b64encode(payload) + b'"}'


MAX_ROOM_NAME = 255  # bytes of UTF-8


cpdef check_room(str room):
    """Raise ValueError unless ``room`` is a room name: 1 to 255 bytes of UTF-8."""
    if not room:
        raise ValueError("a room name must not be empty")
    if len(room) > MAX_ROOM_NAME // 4 and (
        len(room.encode("utf-8", "surrogatepass")) > MAX_ROOM_NAME
    ):
        raise ValueError(f"a room name is at most {MAX_ROOM_NAME} bytes of UTF-8")


cdef bint _offers_v2(str offer):
    for item in offer.split(","):
        if item.strip() == PROTOCOL_V2:
            return True
    return False


cdef inline bint _valid_close_code(int code) noexcept:
    """A status code a peer may put in a CLOSE frame (RFC 6455 section 7.4)."""
    return (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999)


class _DemoteToDebug(logging.Filter):
    """Move log records a client can cause at will down to DEBUG on
    ``simplew.websocket`` (where this module logs the violations it detects
    itself), so that no client can fill the log."""

    def __init__(self, label, matches):
        super().__init__()
        self.label = label
        self.matches = matches          # matches(record, message) -> bool

    def filter(self, record):
        msg = record.msg
        if type(msg) is str and self.matches(record, msg):
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s: %s", self.label, record.getMessage())
            return False
        return True


# picows logs a malformed frame (unmasked, oversized, bad opcode or length, bad
# CLOSE) at ERROR; real failures (exceptions with a traceback) pass unchanged.
logging.getLogger("simplew.picows").addFilter(_DemoteToDebug(
    "client protocol error",
    lambda record, msg: record.levelno >= logging.ERROR and record.exc_info is None
    and (msg.startswith("WS parser error")
         or msg.startswith("on_ws_frame raised WSProtocolError"))))

# aiofastnet warns about every write to a socket it has begun to finalize (after
# 5 of them). A multicast queued before a client's reset reaches connection_lost
# writes to it harmlessly (the write is dropped), and a client could reset on purpose.
logging.getLogger("aiofastnet").addFilter(_DemoteToDebug(
    "aiofastnet",
    lambda record, msg: record.levelno == logging.WARNING
    and msg.endswith("called after connection lost.")))


cdef class Flusher:
    """Connections with queued output, written once at the end of the loop turn."""

    def __init__(self):
        self._dirty = []
        self._scheduled = False

    cdef inline int add(self, WebSocketConnection conn, object loop) except -1:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.flush)
        return 0

    def flush(self):
        cdef list dirty = self._dirty
        cdef Py_ssize_t i
        self._dirty = []
        self._scheduled = False
        for i in range(len(dirty)):
            (<WebSocketConnection>dirty[i]).flush_output()


cdef class Endpoint:
    def __init__(self, str path, Py_ssize_t max_message_size, ServerContext context=None):
        self.path = path
        self.max_message_size = max_message_size
        self.close_timeout = CLOSE_TIMEOUT
        self.max_write_buffer = MAX_WRITE_BUFFER
        self.slow_client_policy = SLOW_CLOSE
        self.compression = False
        self.compression_level = 1
        self.flusher = Flusher()
        self.context = ServerContext() if context is None else context

    def connect(self, request):
        """The listener for a client upgrading on this path (picows factory).

        Negotiates permessage-deflate when the endpoint allows compression,
        and selects the "bearer" subprotocol a browser offers to carry its JWT
        when the server has a key (simplew.auth).
        """
        cdef WebSocketConnection conn = WebSocketConnection(self, request)
        cdef ServerContext context = self.context
        extra = None
        protocols = request.headers.get("sec-websocket-protocol")
        if protocols and context.recovery is not None and _offers_v2(protocols):
            conn.v2 = True
            extra = {"Sec-WebSocket-Protocol": PROTOCOL_V2}
        elif protocols and context.jwt_auth is not None:
            selected = context.jwt_auth.select_subprotocol(protocols)
            if selected is not None:
                extra = {"Sec-WebSocket-Protocol": selected}
        if self.compression:
            offer = request.headers.get("sec-websocket-extensions")
            if offer:
                answer, settings = negotiate(offer)
                if settings is not None:
                    conn.use_deflate(settings)
                    if extra is None:
                        extra = {}
                    extra["Sec-WebSocket-Extensions"] = answer
        if extra is None:
            return conn
        return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(extra), conn)

    cpdef on_message(self, WebSocketConnection conn, bint is_text, object data):
        pass

    def on_connect(self, WebSocketConnection conn):
        cdef ServerContext context = self.context
        if context.identify is not None:
            context.identify(conn)          # who it is (its JWT), before any admission
        if conn.v2:
            context.recovery.opened(conn)   # admits it now, or once Redis answered
            return
        if context.hub is not None:
            context.hub.add(conn)
        if context.session_opened is not None:
            context.session_opened(conn)

    def on_disconnect(self, WebSocketConnection conn):
        cdef ServerContext context = self.context
        if conn.v2:
            context.recovery.closed(conn)
            return
        if context.hub is not None:
            context.hub.remove(conn)
        if context.session_closed is not None:
            context.session_closed(conn)


cdef class WebSocketConnection(WSListener):
    """A connected client; controllers see it as ``self.session``."""

    def __init__(self, Endpoint endpoint, request):
        self.endpoint = endpoint
        self.request = request
        self.id = str(uuid.uuid4())
        self.v2 = False
        self.recovered = False
        self.awaiting_resume = None
        self.user = None
        self.superseded = False
        self.token_timer = None
        self.hub_index = -1
        self.room_slots = None
        self.state = {}
        self.closed = False
        self._msg_opcode = -1
        self._parts = None
        self._msg_size = 0
        self._decoder = None
        self._close_timer = None
        self._peer = None
        self._out_first = None
        self._out_more = None
        self._flusher = endpoint.flusher
        self._inflater = None
        self._deflater = None
        self.deflate_wbits = 0
        self._msg_compressed = False
        self.dropped_messages = 0

    def use_deflate(self, DeflateSettings settings):
        """Compress and inflate with the negotiated permessage-deflate ``settings``."""
        self._inflater = Inflater(settings, self.endpoint.max_message_size)
        self._deflater = Deflater(settings, self.endpoint.compression_level)
        self.deflate_wbits = settings.server_max_window_bits

    @property
    def compression(self):
        """The negotiated permessage-deflate settings, or None."""
        return None if self._deflater is None else self._deflater.settings

    # -- picows callbacks -------------------------------------------------

    cpdef on_ws_connected(self, WSTransport transport):
        self.transport = transport
        self._loop = transport._loop
        self._thread_id = PyThread_get_thread_ident()
        underlying = transport.underlying_transport
        if isinstance(underlying, WriteGate):
            self._gate = underlying
            underlying = self._gate.real
        self._write = getattr(underlying, "write_nocheck", underlying.write)
        # the client's address: the upgrade request's (behind a trusted proxy, the one it gave)
        self._peer = getattr(self.request, "remote", None) or underlying.get_extra_info("peername")
        self._write_buffer_size = underlying.get_write_buffer_size
        if self.endpoint.max_write_buffer > 0:
            underlying.set_write_buffer_limits(high=self.endpoint.max_write_buffer)
        transport.request = None            # the handshake is over: free its headers
        transport.response = None
        self.endpoint.on_connect(self)

    cpdef on_ws_disconnected(self, WSTransport transport):
        self.closed = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self.token_timer is not None:
            self.token_timer.cancel()
            self.token_timer = None
        self._parts = None
        self.endpoint.on_disconnect(self)

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef WSMsgType op = frame.msg_type
        self.endpoint.bytes_in += frame.payload_size
        if frame.rsv2 or frame.rsv3 or (frame.rsv1 and (
                self._inflater is None or (op != WSMsgType.TEXT and op != WSMsgType.BINARY))):
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
            if self._resume_too_big(frame.rsv1):
                if not frame.fin:
                    self._msg_opcode = <int>op
                    self._msg_size = -1     # the rest of the message is dropped
                return
            self.fail(1009, f"message exceeds {self.endpoint.max_message_size} bytes")
            return
        if frame.rsv1:
            self._msg_compressed = True
            if frame.fin:
                self._deliver_compressed(op == WSMsgType.TEXT, frame)
                return
        elif frame.fin:
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

    cdef _deliver_compressed(self, bint is_text, WSFrame frame):
        """A whole compressed message in one frame."""
        self._msg_compressed = False
        try:
            data = self._inflater.inflate(frame.get_payload_as_memoryview(), True)
        except (MessageTooBig, InflateError) as exc:
            self.fail(exc.close_code, str(exc))
            return
        if is_text:
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                self.fail(1007, "invalid UTF-8 in text message")
                return
        self._deliver(is_text, data)

    cdef bint _resume_too_big(self, bint compressed) except -1:
        """The first message of a ``?resume=1`` connection is over
        max_message_size: not an error, a fresh session (docs/protocol.md 5.3);
        the caller drops the message. A compressed one still closes 1009 (its
        inflater would lose its context)."""
        if self.awaiting_resume is None or compressed:
            return False
        self._parts = None
        self._decoder = None
        self.endpoint.context.recovery.first_message(self, True, None)
        return True

    cdef _continue(self, WSFrame frame):
        if self._msg_size < 0:                  # an oversized resume message: dropped
            if frame.fin:
                self._msg_opcode = -1
                self._msg_size = 0
            return
        if self._msg_compressed:
            try:
                chunk = self._inflater.inflate(frame.get_payload_as_memoryview(), frame.fin)
            except (MessageTooBig, InflateError) as exc:
                self.fail(exc.close_code, str(exc))
                return
            self._msg_size += len(chunk)
        else:
            self._msg_size += frame.payload_size
            if self._msg_size > self.endpoint.max_message_size:
                if self._resume_too_big(False):
                    self._msg_size = -1
                    if frame.fin:
                        self._msg_opcode = -1
                        self._msg_size = 0
                    return
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
        self._msg_compressed = False
        self._deliver(is_text, data)

    cdef int _deliver(self, bint is_text, object data) except -1:
        self.endpoint.messages_in += 1
        if self.awaiting_resume is not None:
            # simplew.v2 with ?resume=1: the first message must be the resume
            self.endpoint.context.recovery.first_message(self, is_text, data)
            return 0
        if self.v2 and is_text and (<str>data).startswith(PROTOCOL_MESSAGE):
            # a simplew.v2 protocol message (a token refresh), not an envelope
            handler = self.endpoint.context.protocol_message
            if handler is not None:
                handler(self, data)
            return 0
        self.endpoint.on_message(self, is_text, data)
        return 0

    cdef _on_close_frame(self, WSFrame frame):
        cdef int code = 1000
        if self._gate is not None and self._gate.take_close():
            # picows failed on a frame after this CLOSE (it parses one frame
            # ahead); the client closed first, so its CLOSE gets the answer.
            self.transport.is_close_frame_sent = False
            self.closed = False
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
        """Queue a complete frame; it goes out with this turn's other frames."""
        cdef WSTransport transport = self.transport
        if self.closed or transport is None or transport.is_close_frame_sent \
                or transport.is_disconnected:
            return 0
        if self.write_paused:
            return self._slow(frame)
        self.endpoint.messages_out += 1
        self.endpoint.bytes_out += len(frame)
        return self._enqueue(frame)

    cdef int _enqueue(self, bytes data) except -1:
        """Add ``data`` to this turn's output (the Flusher writes it at the end of the turn)."""
        if self._out_first is None:
            self._out_first = data
            self._out_size = len(data)
            self._flusher.add(self, self._loop)
            return 0
        if self._out_more is None:
            self._out_more = [data]
        else:
            self._out_more.append(data)
        self._out_size += len(data)
        if self._out_size > self.endpoint.max_write_buffer > 0:
            self.flush_output()         # a huge turn: let the transport's watermark see it
        return 0

    cdef bytes _take_output(self):
        """This turn's output in one ``bytes`` (None: nothing queued); the queue is emptied."""
        cdef bytes first = self._out_first
        cdef list more = self._out_more
        if first is None:
            return None
        self._out_first = None
        self._out_more = None
        self._out_size = 0
        if more is None:
            return first
        more.insert(0, first)
        return b"".join(more)

    cdef int _slow(self, bytes frame) except -1:
        """A frame for a client above ``max_write_buffer``: apply the policy."""
        if self.endpoint.slow_client_policy == SLOW_SKIP:
            self.dropped_messages += 1
            self.endpoint.dropped_messages += 1
            return 0
        log.info("closing %s with 1008: over max_write_buffer %d (client too slow)",
                 self.id, self.endpoint.max_write_buffer)
        self.dropped_messages += 1
        self.endpoint.dropped_slow_clients += 1
        self._out_first = None
        self._out_more = None
        self._write_now(close_frame(1008, "client too slow"))
        self.closed = True
        self.transport.is_close_frame_sent = True
        # It does not read, so it will not answer: drop it soon, with its buffer.
        self._close_timer = self._loop.call_later(self.endpoint.close_timeout, self.abort)
        return 0

    cdef int flush_output(self) except -1:
        """Write the queued frames in one call (called by the Flusher)."""
        cdef bytes data = self._take_output()
        cdef WSTransport transport = self.transport
        if data is None or transport.is_close_frame_sent or transport.is_disconnected:
            return 0
        self._write_now(data)
        return 0

    cdef int _write_now(self, bytes data) except -1:
        try:
            self._write(data)
        except Exception as exc:
            # The socket is going away (uvloop refuses writes between closing
            # its handle and connection_lost): this client is gone, the others
            # of a multicast must still get the frame.
            self.closed = True
            log.debug("write to %s failed: %r", self.id, exc)
        return 0

    cdef int queue_message(self, int opcode, bytes payload) except -1:
        """Queue one direct message (a ``msg`` on a simplew.v2 connection)."""
        if self.v2:
            return self.queue_payload(1, v2_payload("msg", opcode, payload))
        return self.queue_payload(opcode, payload)

    cdef int queue_payload(self, int opcode, bytes payload) except -1:
        """Queue one message as is, compressed when deflate was negotiated."""
        cdef bytes compressed
        if self._deflater is not None:
            compressed = self._deflater.deflate(payload)
            return self.write_frame(build_frame(opcode, compressed, len(compressed), True))
        return self.write_frame(build_frame(opcode, payload, len(payload)))

    cdef int send_shared(self, bytes compressed_frame) except -1:
        """Queue a multicast frame compressed once for many clients.

        The client's inflater now holds a message this connection's deflater
        never saw: the next message it compresses must start a fresh context.
        """
        self._deflater.reset()
        return self.write_frame(compressed_frame)

    cdef int _send_close(self, int code, str reason) except -1:
        """Write CLOSE(code, reason) as the last frame of this connection."""
        cdef WSTransport transport = self.transport
        if not self.closed and transport is not None and not transport.is_close_frame_sent \
                and not transport.is_disconnected:
            self.flush_output()
            self._write_now(close_frame(code, reason))
        self.closed = True
        self._parts = None
        self._decoder = None
        self._msg_opcode = -1
        if transport is not None:
            transport.is_close_frame_sent = True
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

    def send_message(self, int opcode, bytes payload):
        """Send one message (opcode 1 TEXT, 2 BINARY); safe from any thread."""
        if PyThread_get_thread_ident() == self._thread_id:
            self.queue_message(opcode, payload)
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(self.send_message, opcode, payload)

    def send_protocol(self, bytes message):
        """Queue one simplew.v2 protocol message (encoded JSON) as a TEXT frame,
        unwrapped. Loop thread only (simplew.recovery uses it)."""
        self.queue_payload(1, message)

    def adopt(self, str session_id):
        """Take the id of the session this simplew.v2 connection starts or
        resumes. Before it is admitted to the hub only (simplew.recovery)."""
        if self.hub_index >= 0:
            raise RuntimeError("a connection in the hub keeps its id")
        self.id = session_id

    def send_text(self, str text):
        """Send ``text`` as one TEXT message; safe from any thread."""
        self.send_message(1, text.encode("utf-8"))

    def send_binary(self, data):
        """Send ``data`` (bytes-like) as one BINARY message; safe from any thread."""
        self.send_message(2, bytes(data))

    def send(self, data):
        """Send a ``str`` as TEXT or a bytes-like object as BINARY."""
        if isinstance(data, str):
            self.send_message(1, (<str>data).encode("utf-8"))
        else:
            self.send_message(2, bytes(data))

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
        if self.closed and self.transport is not None and self.transport.is_close_frame_sent:
            return

    @property
    def remote_address(self):
        """The client's (host, port): the upgrade request's ``remote`` (behind a trusted
        proxy, the address it gave); readable from any thread."""
        return self._peer

    # -- rooms --------------------------------------------------------------

    def join(self, str room not None):
        """Add this session to ``room``: ``server.multicast_text(..., room=room)``
        reaches it, and a ``simplew.v2`` client is told the room's position. Safe
        from any thread (applied on the loop thread, where it returns whether the
        session joined: not when it already is in the room, is gone, or is in
        ``max_rooms_per_session`` rooms already). It leaves every room when it
        disconnects. A name of more than 255 bytes of UTF-8, or empty, raises
        ValueError."""
        check_room(room)
        if PyThread_get_thread_ident() != self._thread_id:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.join, room)
            return None
        cdef ServerContext context = self.endpoint.context
        if context.recovery is not None:
            return context.recovery.join(self, room)
        if context.hub is not None:
            return context.hub.join(self, room)
        return False

    def leave(self, str room not None):
        """Remove this session from ``room`` (nothing if it is not in it); any thread."""
        if PyThread_get_thread_ident() != self._thread_id:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.leave, room)
            return None
        cdef ServerContext context = self.endpoint.context
        if context.recovery is not None:
            return context.recovery.leave(self, room)
        if context.hub is not None:
            return context.hub.leave(self, room)
        return False

    @property
    def rooms(self):
        """The rooms this session is in (a new set; empty once it is gone)."""
        return set() if self.room_slots is None else set(self.room_slots)

    # SimpleW spellings
    @property
    def Id(self):
        return self.id

    def SendText(self, str text):
        self.send_text(text)

    def SendBinary(self, data):
        self.send_binary(data)

    def JoinRoom(self, str room not None):
        self.join(room)

    def LeaveRoom(self, str room not None):
        self.leave(room)

    @property
    def Rooms(self):
        return self.rooms

    def Close(self, int code=1000, str reason=""):
        self.close(code, reason)

    def __repr__(self):
        return f"<Session {self.id} {self.endpoint.path}>"
