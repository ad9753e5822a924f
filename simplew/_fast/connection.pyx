# cython: language_level=3
"""One WebSocket client: message reassembly, limits, the close handshake.

picows parses frames and answers pings; this listener turns frames into
messages (RFC 6455 section 5.4), enforces the maximum message size and UTF-8
validity of TEXT messages, completes the close handshake and hands each whole
message to its :class:`Endpoint`. Every frame it sends is one complete
``bytes`` object written in one call, so frames never interleave.
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
cdef double CLOSE_TIMEOUT = 5.0


cdef class Endpoint:
    def __init__(self, str path, Py_ssize_t max_message_size, server=None, hub=None):
        self.path = path
        self.max_message_size = max_message_size
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

    # -- picows callbacks -------------------------------------------------

    cpdef on_ws_connected(self, WSTransport transport):
        self.transport = transport
        self._loop = transport._loop
        self._thread_id = PyThread_get_thread_ident()
        underlying = transport.underlying_transport
        self._write = getattr(underlying, "write_nocheck", underlying.write)
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
        if op == WSMsgType.CLOSE:
            self._on_close_frame(frame)
            return
        if self.closed:
            return                      # closing: data after our CLOSE is dropped
        if op == WSMsgType.PONG or op == WSMsgType.PING:
            return                      # picows answers pings itself
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self.fail(1002, "reserved bits set without a negotiated extension")
            return
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
        if op == WSMsgType.TEXT:
            self._decoder = _utf8_decoder()
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
        if self.closed:
            # The answer to our CLOSE: the handshake is complete.
            self.transport.disconnect()
            return
        code = frame.get_close_code() if frame.payload_size >= 2 else 1000
        if code == 1005:
            code = 1000
        self.closed = True
        self.write_frame(close_frame(code))
        self.transport.is_close_frame_sent = True
        self.transport.disconnect()

    # -- sending ----------------------------------------------------------

    cdef int write_frame(self, bytes frame) except -1:
        if self.closed or self.transport is None:
            return 0
        self._write(frame)
        return 0

    cdef int fail(self, int code, str reason) except -1:
        """Close for a protocol violation: send CLOSE(code) and drop the socket."""
        if self.closed:
            return 0
        log.debug("closing %s with %d: %s", self.id, code, reason)
        self.write_frame(close_frame(code, reason))
        self.closed = True
        self.transport.is_close_frame_sent = True
        self._parts = None
        self.transport.disconnect()
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
        """Start the close handshake; the socket is dropped after the client answers."""
        if PyThread_get_thread_ident() != self._thread_id:
            self._loop.call_soon_threadsafe(self.close, code, reason)
            return
        if self.closed or self.transport is None:
            return
        self.write_frame(close_frame(code, reason))
        self.closed = True
        self.transport.is_close_frame_sent = True
        self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self.abort)

    def abort(self):
        """Drop the socket at once, without a close handshake."""
        self.closed = True
        if self.transport is not None:
            self.transport.disconnect(False)

    @property
    def remote_address(self):
        if self.transport is None:
            return None
        return self.transport.underlying_transport.get_extra_info("peername")

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
