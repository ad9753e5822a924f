# cython: language_level=3
"""Server-Sent Events: a ``text/event-stream`` client of the streams.

An :class:`SseConnection` is a session of the hub like a ``simplew.v2``
WebSocket connection (it is one, to the hub, the rooms and
:class:`~simplew.recovery.Recovery`), whose output is event-stream text on the
socket the HTTP front handed over after the response head:

- a publication is ``id: <position map>``, ``event: text`` and one ``data:``
  line per line of the text (or ``event: text-json`` with the text as a JSON
  string when it holds a ``\\r``, which no data line can carry; ``event:
  binary`` with base64), then a blank line;
- the id is the base64url (no padding) of the JSON list ``[[room, epoch,
  offset], ...]`` of every stream of the connection (room ``null``: the
  broadcast stream), so that ``Last-Event-ID`` alone resumes all of them;
- ``retry: 2000`` once, a ``: ping`` comment every ``heartbeat`` seconds,
  ``event: reset`` and ``event: left`` with JSON data.

The protocol messages Recovery sends a ``simplew.v2`` session (``join``,
``reset``, ``leave``) become the stream's events here: a join replays the
publications missed since the position the client resumes from, or tells it
the room was reset. What the hub fans out is formatted once per publication
(:func:`event_body`); each connection adds its own id. Output is coalesced
per loop turn (the endpoint's :class:`Flusher`); a client more than
``max_write_buffer`` bytes behind is dropped (it comes back with its
``Last-Event-ID``). docs/protocol.md section 6 is the wire format.
"""
import asyncio
import base64
import json
import logging

from cpython.pythread cimport PyThread_get_thread_ident

from simplew._fast.admission cimport Admission
from simplew._fast.connection cimport Endpoint, WebSocketConnection
from simplew._fast.context cimport ServerContext
from simplew._fast.plainjson import decode_json

log = logging.getLogger("simplew.sse")

HEARTBEAT = 15.0
MAX_ROOMS = 16
RETRY = b"retry: 2000\n\n"
PING = b": ping\n\n"
LIVE_EPOCH = "-"        # the epoch of every stream without recovery: nothing to resume

cdef object _b64 = base64.b64encode
cdef object _b64url = base64.urlsafe_b64encode
cdef object _dumps = json.dumps


cpdef bytes event_body(int opcode, bytes payload):
    """The ``event:`` and ``data:`` lines of a message (opcode 1: UTF-8 text, 2: binary)."""
    if opcode != 1:
        return b"event: binary\ndata: " + _b64(payload) + b"\n"
    if b"\r" in payload:
        return (b"event: text-json\ndata: "
                + (<str>_dumps(payload.decode("utf-8"))).encode("ascii") + b"\n")
    if b"\n" in payload:
        return b"event: text\ndata: " + payload.replace(b"\n", b"\ndata: ") + b"\n"
    return b"event: text\ndata: " + payload + b"\n"


cdef bytes _json(value):
    return (<str>_dumps(value, separators=(",", ":"))).encode("ascii")


cdef bytes _entry(object room, str epoch, long long offset):
    """One stream of an id: ``[room, "epoch", offset]``."""
    cdef bytes name = b"null" if room is None else _json(room)
    return b'[%s,"%s",%d]' % (name, epoch.encode("ascii"), offset)


cdef bytes _pub_body(dict pub):
    """The event of a publication kept as a ``simplew.v2`` ``pub`` message."""
    text = pub.get("text")
    if text is not None:
        return event_body(1, (<str>text).encode("utf-8"))
    return b"event: binary\ndata: " + (<str>pub["binary"]).encode("ascii") + b"\n"


cdef bytes _status_head(bytes date, list headers):
    cdef list lines = [b"HTTP/1.1 200 OK\r\nServer: simplew\r\nDate: ", date, b"\r\n"]
    for name, value in headers:
        line = f"{name}: {value}"
        if "\r" in line or "\n" in line:
            raise ValueError(f"line break in response header {name!r}")
        lines.append((line + "\r\n").encode("latin-1"))
    lines.append(b"\r\n")
    return b"".join(lines)


cdef class SseEndpoint(Endpoint):
    """An event-stream path: its counters (those of a WebSocket endpoint), its
    limits and the heartbeat of its connections. ``simplew.sse.SseContent``
    adds the policy (``on_connect`` / ``on_disconnect``)."""

    def __init__(self, str path, ServerContext context=None, double heartbeat=HEARTBEAT,
                 Py_ssize_t max_rooms=MAX_ROOMS):
        Endpoint.__init__(self, path, 0, context)
        if heartbeat <= 0:
            raise ValueError("the SSE heartbeat must be positive")
        self.heartbeat = heartbeat
        self.max_rooms = max_rooms
        self._open = set()
        self._ticker = None

    @property
    def connections(self):
        """Open event streams of this path."""
        return len(self._open)

    def _started(self, SseConnection conn):
        self._open.add(conn)
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().call_later(self.heartbeat, self._tick)

    def _tick(self):
        cdef SseConnection conn
        self._ticker = None
        if not self._open:
            return
        for item in list(self._open):
            conn = <SseConnection>item
            conn._ping()
        self._ticker = asyncio.get_running_loop().call_later(self.heartbeat, self._tick)

    def stop(self):
        """The server is shutting down: no more heartbeat, and the streams not
        admitted yet (waiting for Redis) are dropped."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for conn in list(self._open):
            conn.abort()


cdef class SseConnection(WebSocketConnection):
    """One ``EventSource`` client: a session of the hub in ``wanted`` rooms."""

    def __init__(self, SseEndpoint endpoint, request, list wanted, list left, dict held,
                 user=None):
        WebSocketConnection.__init__(self, endpoint, request)
        self.v2 = endpoint.context.recovery is not None
        self.wanted = wanted
        self.left = left
        self._held = held
        self._ids = {}
        self._live = {}
        self.user = user
        for room in wanted:         # kept in every id until the room is joined
            position = held.get(room)
            if position is not None:
                self._ids[room] = _entry(room, position[0], position[1])

    # -- the socket -----------------------------------------------------------

    def attach(self, transport, Admission admission, host, bytes date, list headers):
        """Take the socket over from the HTTP front (which counted and logged the
        request): write the head and ``retry``, then ``endpoint.on_connect``."""
        self._socket = transport
        self._admission = admission
        self._host = host
        self._loop = asyncio.get_running_loop()
        self._thread_id = PyThread_get_thread_ident()
        self._write = transport.write
        # the client: the request's (behind a trusted proxy, the one it gave)
        self._peer = getattr(self.request, "remote", None) or transport.get_extra_info("peername")
        transport.set_protocol(self)
        if self.endpoint.max_write_buffer > 0:
            transport.set_write_buffer_limits(high=self.endpoint.max_write_buffer)
        self._queue(_status_head(date, headers) + RETRY)
        (<SseEndpoint>self.endpoint)._started(self)
        self.endpoint.on_connect(self)

    def connection_made(self, transport):
        pass

    def data_received(self, data):
        pass                        # an event-stream client sends nothing after its request

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.closed = True
        self._out_first = None
        self._out_more = None
        if self.token_timer is not None:
            self.token_timer.cancel()
            self.token_timer = None
        if self._admission is not None:
            self._admission.release(self._host)
            self._admission = None
        (<SseEndpoint>self.endpoint)._open.discard(self)
        self.endpoint.on_disconnect(self)

    def close(self, int code=1000, str reason=""):
        """End the stream after what is queued (the code and reason have no
        place in an event stream). Safe from any thread."""
        if PyThread_get_thread_ident() != self._thread_id:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.close, code, reason)
            return
        if self.closed or self._socket is None:
            return
        self.flush_output()
        self.closed = True
        self._socket.close()

    def abort(self):
        """Drop the socket at once. Safe from any thread."""
        if PyThread_get_thread_ident() != self._thread_id:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.abort)
            return
        self.closed = True
        if self._socket is not None:
            self._socket.abort()

    # -- streams ----------------------------------------------------------------

    def begin(self):
        """Admitted (then, in the same callback, put in the hub): the broadcast
        stream's missed publications or its position now."""
        recovery = self.endpoint.context.recovery
        if recovery is None:
            self._ids[None] = _entry(None, LIVE_EPOCH, 0)
            return
        epoch, top = recovery.streams.position(None)
        self._open_stream(None, epoch, top)

    def started(self):
        """Its rooms are joined (or waiting for Redis): ``event: left`` naming
        the rooms it does not get, or the id alone. Joins after this send their id."""
        self._started = True
        if self.left:
            self._event(b"event: left\ndata: " + _json(self.left) + b"\n")
        else:
            self._event(b"")

    def joined_live(self, str room):
        """Without recovery: ``room`` was joined."""
        self._ids[room] = _entry(room, LIVE_EPOCH, 0)

    def send_protocol(self, bytes message):
        """What Recovery tells a ``simplew.v2`` session, as this stream's events."""
        if self.closed:
            return
        data = decode_json(message)
        kind = data.get("type")
        room = data.get("room")
        if kind == "join":
            self._open_stream(room, data["epoch"], data["offset"])
            if self._started:
                self._event(b"")
        elif kind == "reset":
            self._held.pop(room, None)
            self._ids[room] = _entry(room, data["epoch"], data["offset"])
            self._event(b"event: reset\ndata: " + _json(
                {"room": room, "epoch": data["epoch"], "offset": data["offset"]}) + b"\n")
        elif kind == "leave":
            if self._ids.pop(room, None) is not None:
                self._event(b"")

    cdef int _open_stream(self, object room, str epoch, long long top) except -1:
        """``room``'s stream is at ``(epoch, top)`` and the connection in it now: send
        the publications after the position it resumes from, or a reset."""
        held = self._held.pop(room, None)
        if held is None:
            self._ids[room] = _entry(room, epoch, top)
            return 0
        missed = self.endpoint.context.recovery.streams.since(room, held[0], held[1])
        if missed is None:
            self._ids[room] = _entry(room, epoch, top)
            return self._event(b"event: reset\ndata: " + _json(
                {"room": room, "epoch": epoch, "offset": top}) + b"\n")
        self._ids[room] = _entry(room, held[0], held[1])
        for message in missed:
            pub = decode_json(message)
            self._ids[room] = _entry(room, pub["epoch"], pub["offset"])
            self._event(_pub_body(pub))
        return 0

    cdef int publish(self, object room, str epoch, long long offset, bytes body) except -1:
        """A publication the hub fans out (``epoch`` None: without recovery)."""
        if epoch is None:
            offset = self._live.get(room, 0) + 1
            self._live[room] = offset
            epoch = LIVE_EPOCH
        self._ids[room] = _entry(room, epoch, offset)
        return self._event(body)

    def position(self):
        """The id the next event carries, decoded: ``{room: (epoch, offset)}``."""
        return {entry[0]: (entry[1], entry[2])
                for entry in json.loads(b"[" + b",".join(self._ids.values()) + b"]")}

    # -- output -------------------------------------------------------------------

    cdef int _event(self, bytes body) except -1:
        """One event (``body``: its ``event:`` and ``data:`` lines; empty: the id alone)."""
        cdef bytes ident = _b64url(b"[" + b",".join(self._ids.values()) + b"]").rstrip(b"=")
        return self.write_frame(b"id: " + ident + b"\n" + body + b"\n")

    cdef int _ping(self) except -1:
        if self.closed:
            return 0
        if self.write_paused:
            return self._slow(PING)
        return self._queue(PING)

    cdef int write_frame(self, bytes frame) except -1:
        if self.closed:
            return 0
        if self.write_paused:
            return self._slow(frame)
        self.endpoint.messages_out += 1
        self.endpoint.bytes_out += len(frame)
        return self._queue(frame)

    cdef int _queue(self, bytes data) except -1:
        if self.closed or self._socket is None:
            return 0
        return self._enqueue(data)

    cdef int _slow(self, bytes frame) except -1:
        log.info("dropping event stream %s: over max_write_buffer %d (client too slow)",
                 self.id, self.endpoint.max_write_buffer)
        self.dropped_messages += 1
        self.endpoint.dropped_slow_clients += 1
        self.closed = True
        self._out_first = None
        self._out_more = None
        self._socket.abort()
        return 0

    cdef int flush_output(self) except -1:
        cdef bytes data = self._take_output()
        if data is None or self._socket is None or self._socket.is_closing():
            return 0
        self._write_now(data)
        return 0

    cdef int queue_message(self, int opcode, bytes payload) except -1:
        """A direct message (``session.send_text``): an event without an id (the
        client's position does not change)."""
        return self.queue_payload(opcode, payload)

    cdef int queue_payload(self, int opcode, bytes payload) except -1:
        return self.write_frame(event_body(opcode, payload) + b"\n")

    def __repr__(self):
        return f"<EventStream {self.id} {self.endpoint.path}>"
