"""Sessions that survive disconnects: the ``simplew.v2`` protocol's server side.

With ``SimpleWServer(recovery=True)``, every multicast is a *publication* of a
stream: each room has one, and the multicasts to everyone form one more (room
``None``). A publication gets its stream's next ``(epoch, offset)``, is kept in
the bounded :class:`~simplew._fast.streams.Streams`, and reaches ``simplew.v2``
clients as ``{"type":"pub","room":...,"epoch":...,"offset":N,"text"|"binary":...}``.
A client that comes back within ``recovery_window`` seconds of losing its
connection sends its position in each stream it was in (a ``resume`` message);
it gets its session back (the same id and rooms) and, per stream, every
publication after its position, or that stream's position now when the
history no longer covers it. docs/protocol.md section 5 is the contract.

Admission happens in one loop callback: the welcome, the missed publications
and the hub membership are queued together, so no publication falls in
between (a publication is appended and fanned out in one callback too); a
``join`` message and the hub membership likewise. With Redis
(:mod:`simplew.stream`) the streams mirror those in Redis, and a join or an
admission that needs a room this process does not follow yet waits, outside
the hub, until the room's mirror is loaded.

A session id is 128 random bits and works like a bearer token: it never goes
in a URL, the server logs only a digest of it, and looks ended sessions up by
their SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from simplew._fast.connection import check_room, v2_payload
from simplew._fast.context import ServerContext
from simplew._fast.plainjson import decode_json
from simplew._fast.sse import SseConnection
from simplew._fast.streams import Streams

log = logging.getLogger("simplew.recovery")

DEFAULT_WINDOW = 120.0
DEFAULT_HISTORY_SIZE = 10_000
DEFAULT_HISTORY_BYTES = 64 << 20
DEFAULT_HISTORY_TTL = 300.0
MAX_RETAINED = 200_000  # ended sessions kept at most (oldest forgotten first)
RESUME_TIMEOUT = 10.0  # seconds a ?resume=1 connection has to send its resume message
MAX_OFFSET = 10**18
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")
_EPOCH = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_PROTOCOL_MESSAGE = '{"type":'


def new_session_id() -> str:
    """128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


def new_epoch() -> str:
    return secrets.token_urlsafe(9)


def digest(session_id: str) -> bytes:
    """The key an ended session is stored under: never the id itself."""
    return hashlib.sha256(session_id.encode("ascii")).digest()


def log_id(session_id: str) -> str:
    """What the logs show of a session id: a short digest, useless to an attacker."""
    return "s:" + hashlib.sha256(session_id.encode("ascii")).hexdigest()[:12]


def room_order(room: str) -> bytes:
    """Rooms are listed in the order of their UTF-8 bytes."""
    return room.encode("utf-8")


class Position(NamedTuple):
    """Where a publication is: its stream (room, None for everyone), epoch and offset."""

    room: str | None
    epoch: str
    offset: int


class Resume:
    """What a returning client sent: its session id and its position in each
    stream (room, or None for the broadcast stream -> (epoch, offset))."""

    __slots__ = ("session", "streams")

    def __init__(self, session: str, streams: dict[str | None, tuple[str, int]]) -> None:
        self.session = session
        self.streams = streams

    @classmethod
    def from_message(cls, message: Any, max_streams: int) -> Resume | None:
        """The resume, or None when a field is missing or malformed (the
        connection then gets a fresh session, as the protocol says)."""
        if type(message) is not dict:
            return None
        session, entries = message.get("session"), message.get("streams")
        if type(session) is not str or not _SESSION_ID.match(session):
            return None
        streams = stream_positions(entries, max_streams)
        return None if streams is None else cls(session, streams)


def stream_positions(entries: Any, max_streams: int) -> dict[str | None, tuple[str, int]] | None:
    """``[[room, epoch, offset], ...]`` (a resume's ``streams``, an SSE event id) as
    ``{room: (epoch, offset)}``, or None when anything in it is malformed."""
    if type(entries) is not list or (max_streams and len(entries) > max_streams):
        return None
    streams: dict[str | None, tuple[str, int]] = {}
    for entry in entries:
        if type(entry) is not list or len(entry) != 3:
            return None
        room, epoch, offset = entry
        if room is not None:
            if type(room) is not str:
                return None
            try:
                check_room(room)
            except ValueError:
                return None
        if type(epoch) is not str or not _EPOCH.match(epoch):
            return None
        if type(offset) is not int or not 0 <= offset < MAX_OFFSET:
            return None
        if room in streams:
            return None
        streams[room] = (epoch, offset)
    return streams


class Ended:
    """A session whose connection is gone, kept for ``recovery_window`` seconds."""

    __slots__ = ("session_id", "rooms", "user", "expires")

    def __init__(self, session_id: str, rooms: Iterable[str], user: Any, expires: float) -> None:
        self.session_id = session_id
        self.rooms = frozenset(rooms)
        self.user = user
        self.expires = expires


def resumable_by_id(conn: Any) -> bool:
    """Whether a client can resume ``conn``'s session by its id: a ``simplew.v2``
    WebSocket can; an event stream resumes from its event ids and never shows its
    session id, so no session record is kept for it."""
    return type(conn) is not SseConnection


def _notify(hook: Callable[[Any], None] | None, conn: Any) -> None:
    """Call the server's session hook (ServerContext.session_opened / _closed), if set."""
    if hook is not None:
        hook(conn)


def _json_string(text: str) -> str:
    """``json.dumps(text)``, without the encoder for the usual room name."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


def pub_message(room: str | None, epoch: str, offset: int, opcode: int, payload: bytes) -> bytes:
    """The encoded ``pub`` message of one publication."""
    name = "null" if room is None else _json_string(room)
    return v2_payload("pub", opcode, payload, f'"room":{name},"epoch":"{epoch}","offset":{offset},')


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


class Recovery:
    """The streams, their histories and the ended sessions of one server process.

    Loop thread only; the server calls :meth:`publish`, the endpoints
    :meth:`opened` / :meth:`closed` for every ``simplew.v2`` connection, and
    sessions :meth:`join` / :meth:`leave` (all connections: plain ones get no
    messages, but with Redis their rooms too must be followed).
    """

    def __init__(
        self,
        context: ServerContext,
        window: float = DEFAULT_WINDOW,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        history_ttl: float = DEFAULT_HISTORY_TTL,
    ) -> None:
        if window < 0:
            raise ValueError("recovery_window must be >= 0")
        self.context = context
        self.hub = context.hub
        self.window = float(window)
        self.streams = Streams(history_size, history_bytes, history_ttl, on_drop=self._dropped)
        self.store: Any = None  # simplew.stream.RedisStream with Redis
        self._ended: OrderedDict[bytes, Ended] = OrderedDict()
        self._waiting: set[Any] = set()  # connections waiting for Redis to be admitted
        self._joining: dict[str, list[Any]] = {}  # room -> connections waiting to join it
        self._sweeper: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_every = min(10.0, max(0.05, history_ttl / 4))
        self.on_session_end: list[Callable[[str], Any]] = []
        # hook(session, room) -> bool, for each room of a resumed session
        self.on_resume_room: list[Callable[[Any, str], Any]] = []
        # counters (/metrics)
        self.sessions_recovered = 0
        self.sessions_reset = 0  # asked to resume, got a fresh session
        self.sessions_expired = 0  # ended for good: the window passed
        self.resumes_refused = 0  # asked to resume a session of another user
        self.streams_recovered = 0  # streams of resumed sessions continued
        self.streams_lost = 0  # streams of resumed sessions that could not be continued
        self.stream_resets = 0  # streams moved to a new epoch while clients were in them

    def start(self) -> None:
        """Drop publications older than ``history_ttl`` from time to time (loop thread)."""
        self._expiry = asyncio.get_running_loop().call_later(
            self._expiry_every, self._expire_history
        )

    def _expire_history(self) -> None:
        self.streams.expire()
        self._expiry = asyncio.get_running_loop().call_later(
            self._expiry_every, self._expire_history
        )

    # -- publications ------------------------------------------------------------

    def publish(self, opcode: int, payload: bytes, room: str | None, wait: bool = False) -> Any:
        """A multicast of this process: the next offset of its stream. Without
        Redis, returns its ``(epoch, offset)``; with Redis, what
        :meth:`simplew.stream.RedisStream.publish` returns (with ``wait``, a
        future of the position)."""
        if self.store is not None:
            return self.store.publish(opcode, payload, room, wait)  # positions come from Redis
        epoch, offset = self.streams.next(room)
        self.deliver(room, epoch, offset, opcode, payload)
        return epoch, offset

    def deliver(
        self, room: str | None, epoch: str, offset: int, opcode: int, payload: bytes
    ) -> None:
        """Append publication ``(epoch, offset)`` of ``room``'s stream (the next
        one) and fan it out to this process's clients."""
        message = pub_message(room, epoch, offset, opcode, payload)
        self.streams.append(room, epoch, offset, message)
        if room is None:
            self.hub.multicast(opcode, payload, message, epoch, offset)
        else:
            self.hub.multicast_room(room, opcode, payload, message, epoch, offset)

    def reset_stream(self, room: str | None, epoch: str, top: int) -> None:
        """``room``'s stream cannot be continued (Redis lost publications, or its
        record was dropped): it continues at ``(epoch, top)``, and every
        ``simplew.v2`` client in it is told so with a ``reset``."""
        self.streams.restart(room, epoch, top)
        members = self.hub.sessions() if room is None else self.hub.room_sessions(room)
        message = _encode({"type": "reset", "room": room, "epoch": epoch, "offset": top})
        told = 0
        for session in members:
            if session.v2 and session.hub_index >= 0:
                session.send_protocol(message)
                told += 1
        if told:
            self.stream_resets += 1
            log.warning(
                "stream %s could not be continued: %d clients told to reset it (epoch %s)",
                "of every client" if room is None else f"of room {room!r}",
                told,
                epoch,
            )

    def _dropped(self, room: Any) -> None:
        """Streams dropped a stream's record (more streams than it keeps): its
        members, if any, continue in a new epoch."""
        if room is None or self.hub.room_size(room):
            self.reset_stream(room, new_epoch(), 0)

    # -- rooms -------------------------------------------------------------------

    def join(self, conn: Any, room: str) -> bool:
        """Put ``conn`` in ``room`` and tell a simplew.v2 client the room's position.
        With Redis, a room this process does not follow yet is followed first:
        the join completes when its mirror is loaded (True is returned then)."""
        hub = self.hub
        if conn.hub_index < 0 or hub.in_room(conn, room):
            return False
        store = self.store
        if store is not None and not store.follows(room):
            if hub.max_rooms and len(conn.rooms) >= hub.max_rooms:
                hub.rooms_refused += 1
                return False
            waiting = self._joining.get(room)
            if waiting is None:
                self._joining[room] = waiting = []
                store.follow(room)  # calls room_ready(room) once the mirror is loaded
            if conn not in waiting:
                waiting.append(conn)
            return True
        return self._join_now(conn, room)

    def _join_now(self, conn: Any, room: str) -> bool:
        if not self.hub.join(conn, room):
            return False
        if conn.v2:
            epoch, top = self.streams.position(room)
            conn.send_protocol(
                _encode({"type": "join", "room": room, "epoch": epoch, "offset": top})
            )
        return True

    def joining(self, room: str) -> bool:
        """Whether some connection waits to join ``room`` (with Redis)."""
        return room in self._joining

    def room_ready(self, room: str) -> None:
        """With Redis: ``room``'s mirror is loaded; the joins waiting for it complete."""
        for conn in self._joining.pop(room, ()):
            if conn.hub_index >= 0:
                self._join_now(conn, room)

    def leave(self, conn: Any, room: str) -> bool:
        """Take ``conn`` out of ``room``; a simplew.v2 client is told."""
        waiting = self._joining.get(room)
        if waiting is not None and conn in waiting:
            waiting.remove(conn)
            return True
        if not self.hub.leave(conn, room):
            return False
        if conn.v2 and not conn.closed:
            conn.send_protocol(_encode({"type": "leave", "room": room}))
        return True

    # -- connections -------------------------------------------------------------

    def opened(self, conn: Any) -> None:
        """A simplew.v2 connection completed its handshake."""
        if conn.request.query.get("resume") == "1":
            # its first message is the resume: wait for it
            conn.awaiting_resume = asyncio.get_running_loop().call_later(
                RESUME_TIMEOUT, self._no_resume, conn
            )
            return
        self._open(conn, None, False)

    def _no_resume(self, conn: Any) -> None:
        if conn.awaiting_resume is not None:
            conn.awaiting_resume = None
            conn.close(1008, "no resume message")

    def first_message(self, conn: Any, is_text: bool, data: Any) -> None:
        """The first message of a ``?resume=1`` connection: its ``resume``
        (``data`` None: it was over ``max_message_size``, and dropped)."""
        timer, conn.awaiting_resume = conn.awaiting_resume, None
        if timer is not None:
            timer.cancel()
        if data is None:
            # over max_message_size (dropped): not an error, a fresh session (5.3)
            self._open(conn, None, True)
            return
        if not is_text or not data.startswith(_PROTOCOL_MESSAGE):
            conn.close(1002, "expected a resume message")
            return
        try:
            message = decode_json(data)
        except (ValueError, RecursionError):
            message = None
        if type(message) is dict and message.get("type") != "resume":
            conn.close(1002, "expected a resume message")
            return
        limit = self.hub.max_rooms + 1 if self.hub.max_rooms else 0
        self._open(conn, Resume.from_message(message, limit), True)

    def _open(self, conn: Any, resume: Resume | None, asked: bool) -> None:
        store = self.store
        if store is not None:
            self._waiting.add(conn)  # the ended session and its rooms' streams are in Redis
            store.admit_later(conn, resume, asked, self._admit_waiting)
            return
        ended = self._take_ended(resume.session) if resume is not None else None
        self._admit(conn, resume, ended, asked)

    def _admit_waiting(
        self, conn: Any, resume: Resume | None, ended: Ended | None, asked: bool
    ) -> None:
        """Redis answered for ``conn``, and every stream it needs is followed
        (simplew.stream calls this)."""
        if conn not in self._waiting:
            return  # gone meanwhile
        self._waiting.discard(conn)
        self._admit(conn, resume, ended, asked)

    def _admit(self, conn: Any, resume: Resume | None, ended: Ended | None, asked: bool) -> None:
        """Admit ``conn``: the session it resumes, or a fresh one. ``conn.user`` is
        already set from its own credentials (``ServerContext.identify``)."""
        if conn.closed:
            return
        rooms: frozenset[str] | None = None  # the session's rooms when it is kept
        live = None
        if resume is not None:
            live = self.hub.find(resume.session)
            if live is conn:
                live = None
            if live is not None or ended is not None:
                owner = live.user if live is not None else ended.user  # type: ignore[union-attr]
                if owner is not None and owner != conn.user:
                    # a session with a user is resumed only by that user: the
                    # attempt learns nothing, and the session stays resumable
                    self._refuse(resume.session, ended)
                    live = ended = None
            if live is not None:
                rooms = frozenset(live.rooms)
            elif ended is not None:
                rooms = ended.rooms
        streams = self.streams
        entries: list[list[Any]] = []
        missed: list[bytes] = []
        left: list[str] = []
        if rooms is None or resume is None:
            if asked:
                self.sessions_reset += 1
            conn.adopt(new_session_id())
            epoch, top = streams.position(None)
            entries.append([None, epoch, top, False, 0])
            rooms = frozenset()
        else:
            if live is not None:
                live.superseded = True  # the client came back before we saw it leave
                self.hub.remove(live)
                live.abort()
            rooms, _refused = self._granted(conn, rooms)
            for room in [None, *sorted(rooms, key=room_order)]:
                held = resume.streams.get(room)
                stored = None if held is None else streams.since(room, held[0], held[1])
                if stored is None:
                    epoch, top = streams.position(room)
                    entries.append([room, epoch, top, False, 0])
                    if held is not None:
                        self.streams_lost += 1
                else:
                    assert held is not None
                    entries.append([room, held[0], held[1], True, len(stored)])
                    missed.extend(stored)
                    self.streams_recovered += 1
            left = sorted(
                (room for room in resume.streams if room is not None and room not in rooms),
                key=room_order,
            )
            self.sessions_recovered += 1
            conn.adopt(resume.session)
            conn.recovered = True
        welcome: dict[str, Any] = {
            "type": "welcome",
            "session": conn.id,
            "recovered": conn.recovered,
            "missed": len(missed),
            "streams": entries,
        }
        if left:
            welcome["left"] = left
        conn.send_protocol(_encode(welcome))
        for message in missed:
            conn.send_protocol(message)
        self.hub.add(conn)
        for room in rooms:
            self.hub.join(conn, room)
        if self.store is not None and self.window > 0:
            self.store.session_admitted(conn)
        _notify(self.context.session_opened, conn)

    def _refuse(self, session_id: str, ended: Ended | None) -> None:
        """A resume by another identity: count it, log the id's digest, and keep the
        ended session for its owner."""
        self.resumes_refused += 1
        log.info("resume of session %s refused: not the session's user", log_id(session_id))
        if ended is None:
            return
        if self.store is not None:
            self.store.session_ended(ended.session_id, ended.rooms, ended.user)
        else:
            self._keep(ended)

    def _granted(self, conn: Any, rooms: frozenset[str]) -> tuple[frozenset[str], list[str]]:
        """The rooms a resumed session gets back (each ``on_resume_room`` hook may
        refuse one; a hook that raises refuses it) and, sorted, those refused."""
        if not self.on_resume_room or not rooms:
            return rooms, []
        refused = []
        for room in rooms:
            for hook in self.on_resume_room:
                try:
                    allowed = hook(conn, room)
                except Exception:
                    log.exception("on_resume_room hook %r raised: room %r refused", hook, room)
                    allowed = False
                if not allowed:
                    refused.append(room)
                    break
        return rooms.difference(refused), sorted(refused, key=room_order)

    def closed(self, conn: Any) -> None:
        """A simplew.v2 connection is gone: keep its session for the window."""
        timer, conn.awaiting_resume = conn.awaiting_resume, None
        if timer is not None:
            timer.cancel()
            return  # never admitted: nothing to keep
        if conn in self._waiting:
            self._waiting.discard(conn)
            return  # never admitted: nothing to keep
        if conn.hub_index < 0 and not conn.superseded:
            return  # never admitted (it closed before its welcome)
        for waiting in self._joining.values():
            if conn in waiting:
                waiting.remove(conn)
        rooms = conn.rooms
        self.hub.remove(conn)
        _notify(self.context.session_closed, conn)
        if conn.superseded or self.window <= 0:
            return
        if self.store is not None:
            self.store.session_ended(conn.id, rooms, conn.user)
            return
        self._keep(
            Ended(conn.id, rooms, conn.user, asyncio.get_running_loop().time() + self.window)
        )

    def _keep(self, ended: Ended) -> None:
        key = digest(ended.session_id)
        self._ended.pop(key, None)
        self._ended[key] = ended
        while len(self._ended) > MAX_RETAINED:
            self._expire(self._ended.popitem(last=False)[1])
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    def _take_ended(self, session_id: str) -> Ended | None:
        ended = self._ended.pop(digest(session_id), None)
        if ended is not None and ended.expires <= asyncio.get_running_loop().time():
            self._expire(ended)
            return None
        return ended

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        while self._ended:
            ended = next(iter(self._ended.values()))
            if ended.expires > now:
                break
            self._ended.popitem(last=False)
            self._expire(ended)
        if self._ended:
            self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    def _expire(self, ended: Ended) -> None:
        """A session ended for good (its window passed without a reconnect)."""
        self.sessions_expired += 1
        for callback in self.on_session_end:
            try:
                result = callback(ended.session_id)
                if asyncio.iscoroutine(result):
                    asyncio.get_running_loop().create_task(result)
            except Exception:
                log.exception("on_session_end hook %r raised", callback)

    @property
    def ended_sessions(self) -> int:
        """Sessions kept for recovery in this process (without Redis)."""
        return len(self._ended)

    def close(self) -> None:
        for conn in list(self._waiting):
            self._waiting.discard(conn)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
