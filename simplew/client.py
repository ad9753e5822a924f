"""``Client``: an asyncio client of the ``simplew.v2`` protocol that reconnects by
itself and resumes each of its streams (the broadcast stream and one per room)
where it left off.

::

    client = Client("ws://localhost:2015/websocket", on_pub=lambda pub: print(pub.room, pub.offset, pub.data))
    await client.connect()              # returns after the server's first welcome
    client.send("/websocket/chat/join", {"room": "red"})
    ...
    await client.close()

What callers may rely on (docs/protocol.md, section 5, is the contract):

- The client holds a position ``(epoch, offset)`` per stream it is in:
  ``None`` for the broadcast stream (multicasts to every client), the room's
  name for a room (:attr:`Client.positions`). A welcome, a ``join`` and a
  ``reset`` set a stream's position, a ``leave`` forgets it, and each ``pub``
  moves it on. Every pub reaches the client at most once and, per stream, in
  increasing ``offset`` order: a pub of a stream the client does not hold, of
  another epoch, or whose offset is not above the one held is dropped
  (counted in ``duplicates``).
- After a lost connection (anything but :meth:`Client.close`) the client
  reconnects after ``uniform(0, min(backoff_max, backoff_min * 2**attempt))``
  seconds ("full jitter"; ``attempt`` counts the attempts since the last
  connection that stayed up ``STABLE_AFTER``, 1 s, past its welcome: a server
  that welcomes and closes at once sees the waits double), with ``resume=1``
  in the URL and, as its first message, ``{"type":"resume","session":...,
  "streams":[[room, epoch, offset], ...]}`` (the session id is never in the
  URL). The server answers with a welcome: ``recovered`` true (event
  ``recovered``; then a ``room_reset`` event for each stream the server could
  not continue, whose state the application reloads; the ``missed`` pubs
  follow, then live ones) or false (event ``reset``: the missed pubs are lost
  and the session, its rooms and the positions are new; the application must
  reload its state). Rooms in the welcome's ``left`` are no longer held.
- ``join``, ``leave`` and ``reset`` messages of the server are the events
  ``join``, ``leave`` and ``room_reset``; the connection stays open.
- Direct messages (``msg``) are never recovered. :meth:`Client.send` while
  disconnected raises :class:`NotConnected`: nothing is queued, the caller
  decides whether to retry after the next ``open``.
- Memory is bounded: no history is kept; the :meth:`Client.events` iterator
  stops reading the socket at ``max_pending`` unread events (TCP
  backpressure) until the consumer has taken half; the frames of the read
  that reached the limit are still queued, so the queue holds at most
  ``max_pending`` plus one socket read (the TCP receive buffer: 6 MiB at
  most with Linux's defaults). A server that sees the client lag then drops
  it (``max_write_buffer``), and the reconnection recovers what it missed.
- Every server message is checked against ``simplew.v2`` (protocol.md,
  section 5.5): a JSON object (nesting too deep for the parser is a
  violation, not an exception) with a string ``type``; a ``session`` of 16 to
  64 and every ``epoch`` of 1 to 64 characters of ``A-Z a-z 0-9 _ -``;
  offsets and ``missed`` integers (not booleans) from 0 to 10**18 - 1 (a
  pub's offset from 1); booleans are booleans; a ``room`` a string of 1 to
  255 UTF-8 bytes, or null where the broadcast stream is meant (``pub``,
  ``reset``, a ``streams`` entry); a welcome's ``streams`` entries arrays of
  exactly ``[room, epoch, offset, recovered, missed]``, the first the
  broadcast stream's, no stream twice, a recovered entry only for a stream
  the client sent and with its epoch and offset, an entry that is not
  recovered with ``missed`` 0, the welcome's ``missed`` the sum of the
  entries', ``recovered`` false (and ``missed`` 0) when the client did not
  resume; exactly one of ``text`` (a string without lone surrogates) and
  ``binary`` (standard base64 with padding); a first message that is a
  welcome, no second one, no BINARY frame. Unknown types and fields are
  ignored. A violation is a :class:`ProtocolError`: the client closes the
  connection with 1002 and logs a WARNING; before the welcome,
  :meth:`Client.connect` raises it (a reconnection attempt just fails and is
  retried with backoff); after it, the ``Closed`` event has code 1002 and the
  reason ``"protocol error: ..."``, nothing of the message is applied, and the
  client reconnects with backoff. A message over ``max_message_size`` is
  handled the same way with 1009.

The first :meth:`Client.connect` makes one attempt and raises if it fails
(wrong URL, server down, not a ``simplew.v2`` server, a protocol violation);
reconnections after that are automatic. Callbacks run on the event loop, in the order the frames
arrive; a callback returning a coroutine has it scheduled as a task. The
client is not thread-safe: call it from its loop.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import inspect
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from picows import WSCloseCode, WSListener, WSMsgType, WSTransport, ws_connect

log = logging.getLogger("simplew.client")

PROTOCOL = "simplew.v2"
RESUME_PARAM = "resume"  # ?resume=1: the first message is a resume message
# What a welcome and a pub may hold: the forms the server accepts back in a
# resume message (protocol.md, sections 5.2, 5.3 and 5.5).
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")
EPOCH = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
OFFSET_LIMIT = 10**18  # offsets and missed: 0 <= n < OFFSET_LIMIT (at most 18 digits)
MAX_ROOM_BYTES = 255  # a room name: 1 to 255 bytes of UTF-8
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}\Z")  # and a length that is a multiple of 4
# Seconds a connection must stay up past its welcome for the reconnection
# backoff to start again from its first attempt (as workers.MIN_UPTIME).
STABLE_AFTER = 1.0

Room = str | None  # a stream's name: a room, or None for the broadcast stream
Position = tuple[str, int]  # (epoch, offset)


class NotConnected(ConnectionError):
    """:meth:`Client.send` while there is no connection with a welcome (direct
    messages are not queued)."""


class ProtocolError(ConnectionError):
    """The server did not speak ``simplew.v2``: no subprotocol, or a message that
    breaks the protocol (not a JSON object, JSON nested too deeply, a field of the
    wrong type or out of range, a BINARY frame, a first message that is not a
    valid welcome)."""


@dataclass(frozen=True)
class StreamPosition:
    """One entry of a welcome's ``streams``: the stream of ``room`` (None for the
    broadcast stream) resumes after ``(epoch, offset)``. ``recovered``: the
    client's position was continued and ``missed`` pubs of the stream follow;
    False: what the client had of it is lost (reload that room's state)."""

    room: str | None
    epoch: str
    offset: int
    recovered: bool
    missed: int


@dataclass(frozen=True)
class Welcome:
    """A connection's welcome, given to ``open`` and then to ``recovered`` or ``reset``.

    ``epoch`` and ``offset`` are the broadcast stream's position (its pubs after
    it follow); ``streams`` holds every stream's, the broadcast one first.
    ``missed`` pubs follow at once when ``recovered``.
    """

    type: str  # "open", "recovered" or "reset"
    session: str
    epoch: str
    offset: int
    recovered: bool
    missed: int
    left: tuple[str, ...] = ()  # rooms the resumed session did not get back
    streams: tuple[StreamPosition, ...] = ()


@dataclass(frozen=True)
class Pub:
    """A publication: ``data`` is ``str`` (TEXT) or ``bytes`` (binary); ``room``
    None for a multicast to every client (the broadcast stream); ``(epoch,
    offset)`` its position in its stream."""

    room: str | None
    offset: int
    data: str | bytes
    epoch: str
    type: str = "pub"


@dataclass(frozen=True)
class Join:
    """The session is now in ``room``: its pubs after ``(epoch, offset)`` follow."""

    room: str
    epoch: str
    offset: int
    type: str = "join"


@dataclass(frozen=True)
class Leave:
    """The session is no longer in ``room``: no pub of it follows."""

    room: str
    type: str = "leave"


@dataclass(frozen=True)
class RoomReset:
    """The stream of ``room`` (None: the broadcast stream) could not be continued:
    what the client had of it is lost, the application reloads that room's state,
    and the pubs after ``(epoch, offset)`` follow. Sent by the server (a ``reset``
    message), and emitted after a ``recovered`` welcome for each stream it did not
    recover."""

    room: str | None
    epoch: str
    offset: int
    type: str = "room_reset"


@dataclass(frozen=True)
class Msg:
    """A direct message (a handler's reply, ``session.send_text``, an error reply)."""

    data: str | bytes
    type: str = "msg"


@dataclass(frozen=True)
class Closed:
    """A connection that had its welcome ended. ``reconnecting`` is False only
    after :meth:`Client.close`. ``code`` is 1006 when no CLOSE frame came."""

    code: int
    reason: str
    reconnecting: bool
    type: str = "close"


Event = Welcome | Pub | Join | Leave | RoomReset | Msg | Closed
Callback = Callable[[Any], Any]


def backoff_delay(
    attempt: int, backoff_min: float, backoff_max: float, jitter: bool = True
) -> float:
    """Seconds to wait before reconnection attempt ``attempt`` (0, 1, 2...):
    uniform in [0, min(backoff_max, backoff_min * 2**attempt)], or that cap without jitter."""
    cap = min(backoff_max, backoff_min * 2.0 ** min(attempt, 62))
    return random.uniform(0.0, cap) if jitter else cap


def _parse(payload: bytes) -> dict[str, Any]:
    """A server message: a JSON object with a string ``type``, or ProtocolError."""
    try:
        message = json.loads(payload)
    except RecursionError:  # the C scanner's bound on nesting
        raise ProtocolError("JSON nested too deeply") from None
    except ValueError as exc:  # not JSON, not UTF-8, an integer of over 4300 digits
        raise ProtocolError(f"not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object")
    if not isinstance(message.get("type"), str):
        raise ProtocolError("no string type")
    return message


def _string(value: Any, name: str) -> str:
    """``value`` if it is a string UTF-8 can carry (no lone surrogate escape)."""
    if not isinstance(value, str):
        raise ProtocolError(f"{name} is not a string")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(f"{name} holds a lone surrogate") from None
    return value


def _room(value: Any, name: str = "room") -> str:
    """A room name: a string of 1 to 255 bytes of UTF-8."""
    if not isinstance(value, str):
        raise ProtocolError(f"{name} is not a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ProtocolError(f"{name} holds a lone surrogate") from None
    if not 1 <= size <= MAX_ROOM_BYTES:
        raise ProtocolError(f"{name} is not 1 to {MAX_ROOM_BYTES} bytes of UTF-8")
    return value


def _stream(value: Any, name: str = "room") -> str | None:
    """A stream's name: a room name, or None for the broadcast stream."""
    return None if value is None else _room(value, name)


def _epoch(value: Any, name: str = "epoch") -> str:
    if not isinstance(value, str) or not EPOCH.match(value):
        raise ProtocolError(f"{name} is not 1 to 64 characters of A-Z a-z 0-9 _ -")
    return value


def _number(value: Any, name: str, low: int) -> int:
    """``value`` if it is an integer (not a bool) from ``low`` to OFFSET_LIMIT - 1."""
    if type(value) is not int or not low <= value < OFFSET_LIMIT:
        raise ProtocolError(f"{name} is not an integer from {low} to 10**18 - 1")
    return value


def _integer(message: dict[str, Any], name: str, low: int) -> int:
    """The field ``name``: an integer (not a bool) from ``low`` to OFFSET_LIMIT - 1."""
    return _number(message.get(name), name, low)


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{name} is not a boolean")
    return value


def _field(message: dict[str, Any], name: str) -> Any:
    if name not in message:
        raise ProtocolError(f"{message['type'][:20]} has no {name}")
    return message[name]


def _decode(message: dict[str, Any]) -> str | bytes:
    """The data of a pub or msg: exactly one of ``text`` (a string) and
    ``binary`` (standard base64 with padding)."""
    if ("text" in message) == ("binary" in message):
        raise ProtocolError("needs exactly one of text and binary")
    if "text" in message:
        return _string(message["text"], "text")
    binary = message["binary"]
    if not isinstance(binary, str) or len(binary) % 4 or not _BASE64.match(binary):
        raise ProtocolError("binary is not standard base64 with padding")
    return base64.b64decode(binary)


def _streams(value: Any, resumed: dict[Room, Position] | None) -> tuple[StreamPosition, ...]:
    """A welcome's ``streams``, checked against the positions the client sent
    (``resumed``; None when it did not resume)."""
    if not isinstance(value, list) or not value:
        raise ProtocolError("streams is not a non-empty array")
    entries: list[StreamPosition] = []
    seen: set[Room] = set()
    for index, entry in enumerate(value):
        if not isinstance(entry, list) or len(entry) != 5:
            raise ProtocolError("a streams entry is not [room, epoch, offset, recovered, missed]")
        room = _stream(entry[0], "a streams entry's room")
        if (room is None) != (index == 0):
            raise ProtocolError("the first streams entry, and only it, is the broadcast stream")
        if room in seen:
            raise ProtocolError("a stream twice in streams")
        seen.add(room)
        epoch = _epoch(entry[1], "a streams entry's epoch")
        offset = _number(entry[2], "a streams entry's offset", 0)
        recovered = _boolean(entry[3], "a streams entry's recovered")
        missed = _number(entry[4], "a streams entry's missed", 0)
        if recovered:
            if resumed is None or resumed.get(room) != (epoch, offset):
                raise ProtocolError(
                    "a recovered streams entry is not the position sent for that stream"
                )
        elif missed:
            raise ProtocolError("a streams entry that is not recovered has missed pubs")
        entries.append(StreamPosition(room, epoch, offset, recovered, missed))
    return tuple(entries)


def _utf8(room: str) -> bytes:
    """The sort key of room names: their UTF-8 bytes (the server's order)."""
    return room.encode("utf-8")


class _Listener(WSListener):
    """One connection's frames, handed to its Client."""

    def __init__(self, client: Client, resume: dict[Room, Position] | None) -> None:
        self.client = client
        # the positions this connection's resume message sends (None: a fresh session)
        self.resume = resume
        self.transport: WSTransport | None = None
        self.welcomed = False
        self.welcomed_at = 0.0  # time.monotonic() of the welcome
        self.lasted = 0.0  # seconds from the welcome to the end of the connection
        self.failure: tuple[int, str] | None = None  # the code and reason the client closed with
        self.fragments: list[bytes] | None = None
        self.fragments_size = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.client._connected(self)

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT and frame.fin:
            self.client._message(self, frame.get_payload_as_bytes())
        elif kind == WSMsgType.TEXT or kind == WSMsgType.CONTINUATION:
            self._fragment(transport, frame)
        elif kind == WSMsgType.CLOSE:
            if not transport.is_close_frame_sent:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif kind == WSMsgType.BINARY:
            self.client._refuse(self, ProtocolError("a BINARY frame (simplew.v2 is TEXT only)"))

    def _fragment(self, transport: WSTransport, frame: Any) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.fragments, self.fragments_size = [], 0
        elif self.fragments is None:
            return  # after a refused message
        chunk = frame.get_payload_as_bytes()
        self.fragments_size += len(chunk)
        if self.fragments_size > self.client.max_message_size:
            self.fragments = None
            self.client._refuse(
                self, ProtocolError("a message over max_message_size"), WSCloseCode.MESSAGE_TOO_BIG
            )
            return
        self.fragments.append(chunk)
        if frame.fin:
            payload, self.fragments = b"".join(self.fragments), None
            self.client._message(self, payload)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.client._disconnected(self)


class Client:
    """A ``simplew.v2`` client of the WebSocket endpoint at ``url`` (``ws://`` or ``wss://``).

    Callbacks (each optional, called with one event object): ``on_open(Welcome)``
    after every welcome, then ``on_recovered(Welcome)`` or ``on_reset(Welcome)``
    when the connection asked for recovery; ``on_pub(Pub)``, ``on_join(Join)``,
    ``on_leave(Leave)``, ``on_room_reset(RoomReset)`` (also after a recovered
    welcome, for each stream the server did not recover), ``on_msg(Msg)``,
    ``on_close(Closed)``. ``token``: a JWT (or a function, plain or async,
    returning the current one) sent as ``Authorization: Bearer`` on every
    upgrade; when the server says the connection's token expired
    (``{"type":"refresh"}``), the function is called and its token sent back. ``jitter=False``
    waits the full backoff cap (tests, a single client). ``ping_interval``:
    seconds of silence before the client pings, and then waits as long for the
    pong (None: never; a dead network is then noticed only by TCP).
    """

    def __init__(
        self,
        url: str,
        *,
        on_pub: Callback | None = None,
        on_msg: Callback | None = None,
        on_open: Callback | None = None,
        on_recovered: Callback | None = None,
        on_reset: Callback | None = None,
        on_join: Callback | None = None,
        on_leave: Callback | None = None,
        on_room_reset: Callback | None = None,
        on_close: Callback | None = None,
        token: str | Callable[[], str | Awaitable[str]] | None = None,
        backoff_min: float = 0.5,
        backoff_max: float = 20.0,
        jitter: bool = True,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        max_message_size: int = 16 << 20,
        ssl_context: Any = None,
    ) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in ("ws", "wss"):
            raise ValueError(f"url must be ws:// or wss://, not {url!r}")
        if backoff_min <= 0 or backoff_max < backoff_min:
            raise ValueError("need 0 < backoff_min <= backoff_max")
        self.url = url
        self.callbacks: dict[str, Callback | None] = {
            "open": on_open,
            "recovered": on_recovered,
            "reset": on_reset,
            "pub": on_pub,
            "join": on_join,
            "leave": on_leave,
            "room_reset": on_room_reset,
            "msg": on_msg,
            "close": on_close,
        }
        self.token = token
        self._refreshes: set[asyncio.Task[None]] = set()  # token refreshes being sent
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.max_message_size = max_message_size
        self.ssl_context = ssl_context
        # resume state: the session and each stream's position (the last welcome,
        # join, reset and pub of that stream)
        self.session: str | None = None
        self._positions: dict[Room, Position] = {}
        # counters
        self.duplicates = 0  # pubs dropped: not above the position held, or not held
        self.reconnects = 0  # welcomes after the first
        self.resets = 0  # welcomes that did not resume the session asked for
        self.room_resets = 0  # streams reset: reset messages, streams not recovered
        self._listener: _Listener | None = None
        self._welcome_waiter: asyncio.Future[Welcome] | None = None
        self._gone: asyncio.Future[None] | None = None  # the current connection ended
        self._wakeup: asyncio.Event | None = None  # close() during a backoff sleep
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._opened_once = False
        # the events() iterator's queue and flow control
        self._queue: collections.deque[Event] | None = None
        self._max_pending = 0
        self._queue_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._finished = False

    # -- state --------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True from a welcome until that connection ends."""
        listener = self._listener
        return listener is not None and listener.welcomed and not self._closing

    @property
    def positions(self) -> dict[str | None, tuple[str, int]]:
        """A copy of the streams held: room (None for the broadcast stream) ->
        ``(epoch, offset)`` of the last pub received (or the position given by the
        welcome, a join or a reset). What a reconnection resumes from."""
        return dict(self._positions)

    @property
    def epoch(self) -> str | None:
        """The broadcast stream's epoch (None before the first welcome)."""
        position = self._positions.get(None)
        return position[0] if position is not None else None

    @property
    def offset(self) -> int | None:
        """The broadcast stream's offset (None before the first welcome)."""
        position = self._positions.get(None)
        return position[1] if position is not None else None

    @property
    def pending(self) -> int:
        """Events waiting in the :meth:`events` iterator (0 without one)."""
        return len(self._queue) if self._queue is not None else 0

    @property
    def transport(self) -> WSTransport | None:
        """The current picows transport (diagnostics), or None."""
        return self._listener.transport if self._listener is not None else None

    def _resume_url(self, resume: bool) -> str:
        """``url`` with ``resume=1`` when the connection resumes (other query
        parameters are left as they are)."""
        parts = urlsplit(self.url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if not resume and all(k != RESUME_PARAM for k, _ in pairs):
            return self.url
        query = [(k, v) for k, v in pairs if k != RESUME_PARAM]
        if resume:
            query.append((RESUME_PARAM, "1"))
        return urlunsplit(parts._replace(query=urlencode(query)))

    def _resume_message(self, positions: dict[Room, Position]) -> bytes:
        """The first message of a resuming connection: the session and a position
        per stream held (the broadcast stream first, then the rooms)."""
        rooms = sorted((room for room in positions if room is not None), key=_utf8)
        streams = [[room, *positions[room]] for room in [None, *rooms] if room in positions]
        message = {"type": "resume", "session": self.session, "streams": streams}
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    # -- public API ---------------------------------------------------------

    async def connect(self) -> Welcome:
        """Open the connection and return its welcome; afterwards the client
        reconnects by itself until :meth:`close`. Raises (``OSError``,
        ``ProtocolError``, a picows handshake error, ``TimeoutError``) if this
        first attempt fails."""
        if self._task is not None:
            raise RuntimeError("the client is already connected")
        self._closing = False
        self._finished = False
        self._wakeup = asyncio.Event()
        welcome = await self._attempt()
        self._task = asyncio.get_running_loop().create_task(self._supervise())
        return welcome

    def send(self, url: str, body: Any = None, *, jwt: str | None = None) -> None:
        """Send the envelope ``{"url": url, "body": body}`` (plus ``"jwt"`` if given)
        to a routed endpoint. Raises :class:`NotConnected` while disconnected."""
        envelope: dict[str, Any] = {"url": url, "body": body}
        if jwt is not None:
            envelope["jwt"] = jwt
        self.send_text(json.dumps(envelope, separators=(",", ":")))

    def send_text(self, text: str) -> None:
        """Send one raw TEXT message (for ``on_message`` endpoints)."""
        self._current().send(WSMsgType.TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> None:
        """Send one raw BINARY message (for ``on_message`` endpoints)."""
        self._current().send(WSMsgType.BINARY, bytes(data))

    def _current(self) -> WSTransport:
        listener = self._listener
        if listener is None or not listener.welcomed or self._closing or listener.transport is None:
            raise NotConnected(
                "not connected: direct messages are not queued; "
                "send again after the next open event"
            )
        return listener.transport

    async def close(self, timeout: float = 2.0) -> None:
        """Close the connection (1000) and stop reconnecting; ends :meth:`events`."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        listener = self._listener
        if (
            listener is not None
            and listener.transport is not None
            and not listener.transport.is_disconnected
        ):
            transport = listener.transport
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            try:
                await asyncio.wait_for(transport.wait_disconnected(), timeout)
            except (asyncio.TimeoutError, Exception):
                transport.disconnect(False)
        task, self._task = self._task, None
        if task is not None:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._finish()

    def events(self, max_pending: int = 1024) -> AsyncIterator[Event]:
        """The events as an async iterator, ending after :meth:`close`. Call it
        before :meth:`connect` to get everything from the first welcome on; one
        iterator at a time. Past ``max_pending`` unread events the socket is
        not read until the consumer has taken half of them (see the module
        docstring for the bound)."""
        if self._queue is not None:
            raise RuntimeError("events() is already being iterated")
        if max_pending < 2:
            raise ValueError("max_pending must be at least 2")
        self._queue = collections.deque()
        self._max_pending = max_pending
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        queue = self._queue
        assert queue is not None
        try:
            while True:
                while not queue:
                    if self._finished:
                        return
                    self._queue_waiter = asyncio.get_running_loop().create_future()
                    await self._queue_waiter
                event = queue.popleft()
                if self._reading_paused and len(queue) <= self._max_pending // 2:
                    self._flow(False)
                yield event
        finally:
            self._queue = None
            self._flow(False)

    # -- connection lifecycle -------------------------------------------------

    async def _attempt(self) -> Welcome:
        """One connection attempt, up to its welcome."""
        loop = asyncio.get_running_loop()
        self._welcome_waiter = loop.create_future()
        self._gone = loop.create_future()
        headers = [("Sec-WebSocket-Protocol", PROTOCOL)]
        token = await self._token()
        if token:
            headers.append(("Authorization", f"Bearer {token}"))
        # a welcome sets the session and the broadcast stream's position together
        resume = dict(self._positions) if self.session is not None else None
        transport, _ = await ws_connect(
            lambda: _Listener(self, resume),
            self._resume_url(resume is not None),
            extra_headers=headers,
            ssl_context=self.ssl_context,
            websocket_handshake_timeout=self.open_timeout,
            enable_auto_ping=self.ping_interval is not None,
            auto_ping_idle_timeout=self.ping_interval or 10,
            auto_ping_reply_timeout=self.ping_interval or 10,
            max_frame_size=self.max_message_size,
            logger_name="simplew.client.picows",
        )
        try:
            return await asyncio.wait_for(asyncio.shield(self._welcome_waiter), self.open_timeout)
        except BaseException:
            transport.disconnect(False)
            raise

    async def _supervise(self) -> None:
        """Wait for the connection to end, then reconnect with backoff, until close()."""
        assert self._wakeup is not None
        attempt = 0
        while not self._closing:
            assert self._gone is not None
            await self._gone
            listener = self._listener
            if listener is not None and listener.lasted >= STABLE_AFTER:
                attempt = 0  # not after each welcome: a server may welcome and close at once
            while not self._closing:
                delay = backoff_delay(attempt, self.backoff_min, self.backoff_max, self.jitter)
                attempt += 1
                try:
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                if self._closing:
                    break
                try:
                    await self._attempt()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.debug("reconnection attempt %d to %s failed: %r", attempt, self.url, exc)
                    continue
                break

    def _connected(self, listener: _Listener) -> None:
        transport = listener.transport
        assert transport is not None
        if self._closing:
            transport.disconnect(False)
            return
        protocol = transport.response.headers.get("Sec-WebSocket-Protocol", "")
        if protocol.strip() != PROTOCOL:
            self._fail_attempt(
                ProtocolError(
                    f"{self.url} did not select the {PROTOCOL} subprotocol (answered {protocol!r}):"
                    " a simplew server needs recovery=True"
                )
            )
            transport.disconnect(False)
            return
        self._listener = listener
        if listener.resume is not None:
            transport.send(WSMsgType.TEXT, self._resume_message(listener.resume))
        if self._reading_paused:
            transport.underlying_transport.pause_reading()

    def _fail_attempt(self, exc: Exception) -> None:
        waiter = self._welcome_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
            waiter.exception()  # retrieved: no "never retrieved" warning

    def _disconnected(self, listener: _Listener) -> None:
        if listener is not self._listener:
            return  # refused in _connected
        transport = listener.transport
        assert transport is not None
        code, reason = 1006, ""
        handshake = transport.close_handshake
        if listener.failure is not None:
            code, reason = listener.failure
        elif handshake is not None and handshake.recv is not None:
            received: Any = handshake.recv.code  # a WSCloseCode, or an int picows has no name for
            code = int(getattr(received, "value", received))
            reason = handshake.recv.reason or ""
        self._fail_attempt(ConnectionError(f"connection closed before the welcome ({code})"))
        if listener.welcomed:
            listener.welcomed = False
            listener.lasted = time.monotonic() - listener.welcomed_at
            self._emit(Closed(code, reason, reconnecting=not self._closing))
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    def _finish(self) -> None:
        self._finished = True
        self._wake_iterator()

    # -- messages -------------------------------------------------------------

    def _message(self, listener: _Listener, payload: bytes) -> None:
        if listener is not self._listener or listener.failure is not None:
            return
        try:
            message = _parse(payload)
            kind = message["type"]
            if not listener.welcomed:
                if kind != "welcome":
                    raise ProtocolError(f"the first message is a {kind[:20]!r}, not a welcome")
                self._welcome(listener, message)
            elif kind == "pub":
                self._pub(message)
            elif kind == "join":
                self._join(message)
            elif kind == "leave":
                self._leave(message)
            elif kind == "reset":
                self._reset(message)
            elif kind == "msg":
                self._emit(Msg(_decode(message)))
            elif kind == "welcome":
                raise ProtocolError("a second welcome on one connection")
            elif kind == "refresh":
                self._refresh(listener)
            # other types: ignored (forward compatibility)
        except ProtocolError as exc:
            self._refuse(listener, exc)

    def _refuse(
        self,
        listener: _Listener,
        exc: ProtocolError,
        code: WSCloseCode = WSCloseCode.PROTOCOL_ERROR,
    ) -> None:
        """A protocol violation: close the connection with ``code`` (1002 by
        default). Before the welcome the attempt fails with ``exc`` (connect()
        raises it); after it, the Closed event carries ``code`` and the reason,
        and the client reconnects with backoff."""
        if listener is not self._listener or listener.failure is not None:
            return
        log.warning("%s: protocol error, closing: %s", self.url, exc)
        listener.failure = (code.value, f"protocol error: {exc}")
        self._fail_attempt(exc)
        transport = listener.transport
        if transport is not None and not transport.is_disconnected:
            if not transport.is_close_frame_sent:
                transport.send_close(code, b"protocol error")
            transport.disconnect()

    def _refresh(self, listener: _Listener) -> None:
        """The server asks for a new token (the connection's expired): answer with
        what the ``token`` function gives now. A fixed token cannot be refreshed: the
        server then closes with 4001 and the reconnection sends the token again."""
        if not callable(self.token):
            return
        task = asyncio.get_running_loop().create_task(self._send_refresh(listener))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    async def _send_refresh(self, listener: _Listener) -> None:
        try:
            token = await self._token()
        except Exception:
            log.exception("%s: the token function raised; the server will close", self.url)
            return
        transport = listener.transport
        if not token or listener is not self._listener or transport is None:
            return
        message = json.dumps({"type": "refresh", "token": token}, separators=(",", ":"))
        if not transport.is_disconnected:
            transport.send(WSMsgType.TEXT, message.encode("utf-8"))

    async def _token(self) -> str | None:
        """The token now: ``token`` itself, or what its function returns (awaited)."""
        token = self.token() if callable(self.token) else self.token
        if inspect.isawaitable(token):
            token = await token
        return token if isinstance(token, str) else None

    def _pub(self, message: dict[str, Any]) -> None:
        room = _stream(_field(message, "room"))
        epoch = _epoch(message.get("epoch"))
        offset = _integer(message, "offset", 1)
        data = _decode(message)
        held = self._positions.get(room)
        if held is None or held[0] != epoch or offset <= held[1]:
            self.duplicates += 1  # not held, another epoch, or already seen
            return
        self._positions[room] = (epoch, offset)
        self._emit(Pub(room, offset, data, epoch))

    def _join(self, message: dict[str, Any]) -> None:
        room = _room(_field(message, "room"))
        epoch = _epoch(message.get("epoch"))
        offset = _integer(message, "offset", 0)
        self._positions[room] = (epoch, offset)
        self._emit(Join(room, epoch, offset))

    def _leave(self, message: dict[str, Any]) -> None:
        room = _room(_field(message, "room"))
        self._positions.pop(room, None)
        self._emit(Leave(room))

    def _reset(self, message: dict[str, Any]) -> None:
        room = _stream(_field(message, "room"))
        epoch = _epoch(message.get("epoch"))
        offset = _integer(message, "offset", 0)
        if room not in self._positions:
            return  # a stream the client does not hold: nothing to reset
        self._positions[room] = (epoch, offset)
        self.room_resets += 1
        self._emit(RoomReset(room, epoch, offset))

    def _welcome(self, listener: _Listener, message: dict[str, Any]) -> None:
        session = message.get("session")
        if not isinstance(session, str) or not SESSION_ID.match(session):
            raise ProtocolError("session is not 16 to 64 characters of A-Z a-z 0-9 _ -")
        recovered = _boolean(message.get("recovered"), "recovered")
        missed = _integer(message, "missed", 0)
        resume = listener.resume
        if recovered and (resume is None or session != self.session):
            raise ProtocolError("recovered a session it was not asked for")
        streams = _streams(message.get("streams"), resume if recovered else None)
        if missed != sum(stream.missed for stream in streams):
            raise ProtocolError("missed is not the sum of the streams' missed")
        left: tuple[str, ...] = ()
        if "left" in message:
            rooms = message["left"]
            if not recovered or not isinstance(rooms, list):
                raise ProtocolError("left is not a list of rooms of a recovered session")
            left = tuple(_room(room, "left") for room in rooms)
        self.session = session
        self._positions = {stream.room: (stream.epoch, stream.offset) for stream in streams}
        listener.welcomed = True
        listener.welcomed_at = time.monotonic()
        if self._opened_once:
            self.reconnects += 1
        self._opened_once = True
        broadcast = streams[0]
        welcome = Welcome(
            "open", session, broadcast.epoch, broadcast.offset, recovered, missed, left, streams
        )
        waiter = self._welcome_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(welcome)
        self._emit(welcome)
        if resume is None:
            return
        if not recovered:
            self.resets += 1
            self._emit(dataclasses.replace(welcome, type="reset"))
            return
        self._emit(dataclasses.replace(welcome, type="recovered"))
        for stream in streams:
            if not stream.recovered:
                self.room_resets += 1
                self._emit(RoomReset(stream.room, stream.epoch, stream.offset))

    def _emit(self, event: Event) -> None:
        callback = self.callbacks[event.type]
        if callback is not None:
            try:
                result = callback(event)
                if asyncio.iscoroutine(result):
                    asyncio.get_running_loop().create_task(result)
            except Exception:
                log.exception("%s callback of the simplew client raised", event.type)
        queue = self._queue
        if queue is not None:
            queue.append(event)
            self._wake_iterator()
            if not self._reading_paused and len(queue) >= self._max_pending:
                self._flow(True)

    def _wake_iterator(self) -> None:
        waiter = self._queue_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _flow(self, pause: bool) -> None:
        """Pause or resume reading the socket for the events() consumer."""
        if self._reading_paused == pause:
            return
        self._reading_paused = pause
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        underlying = transport.underlying_transport
        if pause:
            underlying.pause_reading()
        else:
            underlying.resume_reading()
