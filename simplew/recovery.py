"""Sessions that survive disconnects: the ``simplew.v1`` protocol's server side.

With ``SimpleWServer(recovery=True)``, every multicast is a *publication* of
one stream: it gets the next offset, is kept in a bounded
:class:`~simplew._fast.history.History`, and reaches ``simplew.v1`` clients as
``{"type": "pub", "offset": N, "room": ..., "text"|"binary": ...}``. A
client that comes back with ``?session=ID&epoch=E&offset=N`` within
``recovery_window`` seconds of losing its connection gets its session back:
the same id, its rooms, and every publication after N meant for it, then the
live ones. Otherwise it starts a fresh session and is told so
(``"recovered": false``). The README's "simplew.v1" section is the contract.

Admission happens in one loop callback: the welcome, the missed publications
and the hub membership are queued together, so no publication falls in
between (a publication is appended to the history and fanned out in one
callback too). With Redis (:mod:`simplew.stream`) the history mirrors the
deployment-wide stream and the ended sessions live in Redis; a connection
that needs Redis to be admitted waits, outside the hub, until it answers.

A session id is 128 random bits and works like a bearer token: the server
logs only a digest of it, and looks ended sessions up by their SHA-256.
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
from typing import Any

from simplew._fast.connection import v1_payload
from simplew._fast.context import ServerContext
from simplew._fast.history import History

log = logging.getLogger("simplew.recovery")

DEFAULT_WINDOW = 120.0
DEFAULT_HISTORY_SIZE = 10_000
DEFAULT_HISTORY_BYTES = 64 << 20
MAX_RETAINED = 200_000  # ended sessions kept at most (oldest forgotten first)
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")
_EPOCH = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_OFFSET = re.compile(r"[0-9]{1,18}\Z")


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


class Resume:
    """What a returning client asked for: ``?session=&epoch=&offset=``."""

    __slots__ = ("session", "epoch", "offset")

    def __init__(self, session: str, epoch: str, offset: int) -> None:
        self.session = session
        self.epoch = epoch
        self.offset = offset

    @classmethod
    def from_query(cls, query: dict[str, str]) -> Resume | None:
        """The request, or None when absent or malformed (a fresh session then)."""
        session, epoch, offset = query.get("session"), query.get("epoch"), query.get("offset")
        if session is None or epoch is None or offset is None:
            return None
        if not (_SESSION_ID.match(session) and _EPOCH.match(epoch) and _OFFSET.match(offset)):
            return None
        return cls(session, epoch, int(offset))


class Ended:
    """A session whose connection is gone, kept for ``recovery_window`` seconds."""

    __slots__ = ("session_id", "rooms", "user", "expires")

    def __init__(self, session_id: str, rooms: Iterable[str], user: Any, expires: float) -> None:
        self.session_id = session_id
        self.rooms = frozenset(rooms)
        self.user = user
        self.expires = expires


def _notify(hook: Callable[[Any], None] | None, conn: Any) -> None:
    """Call the server's session hook (ServerContext.session_opened / _closed), if set."""
    if hook is not None:
        hook(conn)


def pub_message(offset: int, opcode: int, payload: bytes, room: str | None) -> bytes:
    """The encoded ``pub`` message of one publication."""
    head = f'"offset":{offset},"room":{"null" if room is None else json.dumps(room)},'
    return v1_payload("pub", opcode, payload, head)


class Recovery:
    """The stream, its history and the ended sessions of one server process.

    Loop thread only; the server calls :meth:`publish`, and the endpoints
    :meth:`opened` / :meth:`closed` for every ``simplew.v1`` connection.
    """

    def __init__(
        self,
        context: ServerContext,
        window: float = DEFAULT_WINDOW,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
    ) -> None:
        if window < 0:
            raise ValueError("recovery_window must be >= 0")
        self.context = context
        self.hub = context.hub
        self.window = float(window)
        self.history = History(history_size, history_bytes)
        self.epoch = new_epoch()
        self.store: Any = None  # simplew.stream.RedisStream with Redis
        self._ended: OrderedDict[bytes, Ended] = OrderedDict()
        self._waiting: set[Any] = set()  # connections waiting for Redis to be admitted
        self._sweeper: asyncio.TimerHandle | None = None
        self.on_session_end: list[Callable[[str], Any]] = []
        # hook(session, room) -> bool, for each room of a resumed session
        self.on_resume_room: list[Callable[[Any, str], Any]] = []
        # counters (/metrics)
        self.sessions_recovered = 0
        self.sessions_reset = 0  # asked to recover, could not
        self.sessions_expired = 0  # ended for good: the window passed
        self.resumes_refused = 0  # asked to resume a session of another user

    # -- publications ------------------------------------------------------------

    def publish(self, opcode: int, payload: bytes, room: str | None) -> None:
        """A multicast of this process: the next offset of the stream."""
        if self.store is not None:
            self.store.publish(opcode, payload, room)  # offsets come from Redis
            return
        self.deliver(self.history.top + 1, opcode, payload, room)

    def deliver(self, offset: int, opcode: int, payload: bytes, room: str | None) -> None:
        """Append publication ``offset`` (the next one) and fan it out here."""
        v1 = pub_message(offset, opcode, payload, room)
        self.history.append(offset, room, v1)
        if room is None:
            self.hub.multicast(opcode, payload, v1)
        else:
            self.hub.multicast_room(room, opcode, payload, v1)

    def reset_stream(self, epoch: str) -> None:
        """The history could not be continued (simplew.stream reloaded it): close
        the simplew.v1 clients (1012) so that they come back and learn it."""
        log.warning(
            "the stream could not be continued (epoch %s); simplew.v1 clients "
            "reconnect and start fresh sessions",
            epoch,
        )
        self.epoch = epoch
        for session in self.hub.sessions():
            if session.v1:
                session.close(1012, "stream reset")

    # -- connections -------------------------------------------------------------

    def opened(self, conn: Any) -> None:
        """A simplew.v1 connection completed its handshake."""
        resume = Resume.from_query(conn.request.query)
        asked = resume is not None
        store = self.store
        if store is not None and (
            not store.ready or (resume is not None and resume.epoch == self.epoch)
        ):
            self._waiting.add(conn)  # the ended session (or the stream) is in Redis
            store.admit_later(conn, resume, asked, self._admit_waiting)
            return
        if resume is not None and resume.epoch != self.epoch:
            resume = None
        ended = self._take_ended(resume.session) if resume is not None else None
        self._admit(conn, resume, ended, asked)

    def _admit_waiting(
        self, conn: Any, resume: Resume | None, ended: Ended | None, asked: bool
    ) -> None:
        """Redis answered for ``conn`` (simplew.stream calls this)."""
        if conn not in self._waiting:
            return  # gone meanwhile
        self._waiting.discard(conn)
        if resume is not None and resume.epoch != self.epoch:
            resume, ended = None, None
        self._admit(conn, resume, ended, asked)  # with Redis, ended sessions are there only

    def _admit(self, conn: Any, resume: Resume | None, ended: Ended | None, asked: bool) -> None:
        """Admit ``conn``: the session it resumes, or a fresh one. ``conn.user`` is
        already set from its own credentials (``ServerContext.identify``)."""
        missed = None
        rooms: frozenset[str] = frozenset()
        left: list[str] = []
        if resume is not None:
            live = self.hub.find(resume.session)
            if live is not conn and (live is not None or ended is not None):
                owner = live.user if live is not None else ended.user  # type: ignore[union-attr]
                if owner is not None and owner != conn.user:
                    # a session with a user is resumed only by that user: the
                    # attempt learns nothing, and the session stays resumable
                    self._refuse(resume.session, ended)
                    live = ended = None
            if live is not None and live is not conn:
                rooms = frozenset(live.rooms)
            elif ended is not None:
                rooms = ended.rooms
            if live is not None or ended is not None:
                rooms, left = self._granted(conn, rooms)
                missed = self.history.since(resume.offset, rooms)
            if missed is not None and live is not None:
                live.superseded = True  # the client came back before we saw it leave
                self.hub.remove(live)
                live.abort()
        if missed is None:
            if asked:
                self.sessions_reset += 1
            conn.adopt(new_session_id())
            offset = self.history.top
            missed = []
            rooms = frozenset()
            left = []
        else:
            assert resume is not None  # missed is a list only for a resume
            self.sessions_recovered += 1
            conn.adopt(resume.session)
            conn.recovered = True
            offset = resume.offset
        welcome: dict[str, Any] = {
            "type": "welcome",
            "session": conn.id,
            "epoch": self.epoch,
            "offset": offset,
            "recovered": conn.recovered,
            "missed": len(missed),
        }
        if left:
            welcome["left"] = left
        conn.send_protocol(json.dumps(welcome, separators=(",", ":")).encode())
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
        return rooms.difference(refused), sorted(refused)

    def closed(self, conn: Any) -> None:
        """A simplew.v1 connection is gone: keep its session for the window."""
        if conn in self._waiting:
            self._waiting.discard(conn)
            return  # never admitted: nothing to keep
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
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
