"""Server-Sent Events: who may read which rooms, and where a stream resumes.

``server.add_sse_content("/events", rooms=hook)`` answers ``GET
/events?room=a&room=b`` with ``text/event-stream``: the publications of the
broadcast stream and of the rooms the request may read, through the same
:class:`~simplew.recovery.Recovery` as ``simplew.v2`` sessions (with Redis, the
same streams on every process). This module decides, per request: the origin
(``allowed_origins``), the rooms asked for (``room`` parameters: names of 1 to
255 bytes of UTF-8, 400 otherwise; at most ``max_sse_rooms``, the others are
left out), the rooms the hook allows (``hook(request, claims)``, sync or async;
``claims``: of the JWT in ``Authorization: Bearer`` or ``?token=`` when
``set_token`` is configured, else None; a stream is closed when that JWT
expires), and the positions to resume from
(``Last-Event-ID``, or ``?lastEventId=`` for the first load; a malformed one
starts afresh). The connection itself, its events and its output are
:mod:`simplew._fast.sse`; docs/protocol.md section 6 is the wire format.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from simplew._fast.connection import check_room
from simplew._fast.context import ServerContext
from simplew._fast.plainjson import decode_json
from simplew._fast.sse import HEARTBEAT, MAX_ROOMS, SseConnection, SseEndpoint
from simplew.recovery import stream_positions

log = logging.getLogger("simplew.sse")

RoomsHook = Callable[[Any, "dict[str, Any] | None"], Any]
MAX_LAST_EVENT_ID = 16384  # characters of a Last-Event-ID read at most
EXPIRES = "simplew.sse.expires"  # conn.state key: when its JWT expires (Unix time)
_TEXT = [("Content-Type", "text/plain; charset=utf-8")]
HEADERS = [
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),  # a proxy that buffers answers must not buffer this one
]


def _refusal(status: int, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, list(_TEXT), (message + "\n").encode()


def decode_last_event_id(text: str | None, max_streams: int) -> dict[str | None, tuple[str, int]]:
    """The positions an event id names (``{room: (epoch, offset)}``); empty for
    anything that is not such an id (a fresh start, not an error)."""
    if not text or len(text) > MAX_LAST_EVENT_ID:
        return {}
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        entries = decode_json(raw.decode("utf-8"))
    except (ValueError, binascii.Error, RecursionError):
        return {}
    return stream_positions(entries, max_streams) or {}


class SseContent(SseEndpoint):
    """One event-stream path: the policy of :class:`~simplew._fast.sse.SseEndpoint`."""

    def __init__(
        self,
        path: str,
        context: ServerContext,
        rooms: RoomsHook | None = None,
        *,
        heartbeat: float = HEARTBEAT,
        max_rooms: int = MAX_ROOMS,
    ) -> None:
        super().__init__(path, context, heartbeat, max_rooms)
        self.rooms_hook = rooms

    # -- the request (HttpAnswers) ---------------------------------------------------

    def answer(self, request: Any) -> Any:
        """``(200, headers, SseConnection)`` (the HTTP front hands the socket over), a
        refusal, or an awaitable of one when the hook is async."""
        if request.method != "GET":
            return 405, [*_TEXT, ("Allow", "GET")], b"an event stream is read with GET\n"
        origin = request.headers.get("origin")
        admission = self.context.limits.admission
        if admission is not None and not admission.allows_origin(self.path, origin):
            admission.rejected_origins += 1
            return _refusal(403, "this origin may not read this event stream")
        query = parse_qs(request.query_string, keep_blank_values=True)
        asked: list[str] = []
        for room in query.get("room", ()):
            try:
                check_room(room)
            except ValueError as exc:
                return _refusal(400, f"room {room[:64]!r}: {exc}")
            if room not in asked:
                asked.append(room)
        claims = self._claims(request, query)
        last_id = request.headers.get("last-event-id") or _last(query.get("lastEventId"))
        held = decode_last_event_id(last_id, self.max_rooms + 1)
        if self.rooms_hook is None:
            return self._stream(request, asked, asked, claims, held)
        try:
            allowed = self.rooms_hook(request, claims)
        except Exception:
            log.exception("SSE rooms hook %r raised: no room allowed", self.rooms_hook)
            allowed = ()
        if inspect.isawaitable(allowed):
            return self._stream_later(request, asked, allowed, claims, held)
        return self._stream(request, asked, allowed, claims, held)

    def _claims(self, request: Any, query: dict[str, list[str]]) -> dict[str, Any] | None:
        jwt_auth = self.context.jwt_auth
        if jwt_auth is None:
            return None
        claims: dict[str, Any] | None = jwt_auth.optional_claims(
            _last(query.get("token")), request.headers
        )
        return claims

    async def _stream_later(
        self, request: Any, asked: list[str], allowed: Any, claims: Any, held: Any
    ) -> Any:
        try:
            rooms = await allowed
        except Exception:
            log.exception("SSE rooms hook %r raised: no room allowed", self.rooms_hook)
            rooms = ()
        return self._stream(request, asked, rooms, claims, held)

    def _stream(
        self,
        request: Any,
        asked: list[str],
        allowed: Iterable[str] | None,
        claims: dict[str, Any] | None,
        held: dict[str | None, tuple[str, int]],
    ) -> Any:
        permitted = set(allowed or ())
        wanted = [room for room in asked if room in permitted][: self.max_rooms]
        left = [room for room in asked if room not in wanted]
        sub = None if claims is None else claims.get("sub")
        user = sub if isinstance(sub, str) else None
        held = {room: held[room] for room in [None, *wanted] if room in held}
        conn = SseConnection(self, request, wanted, left, held, user)
        jwt_auth = self.context.jwt_auth
        if claims is not None and jwt_auth is not None:
            conn.state[EXPIRES] = jwt_auth.expiry(claims)
        return 200, list(HEADERS), conn

    # -- the connection (SseConnection.attach, connection_lost) ------------------------

    def on_connect(self, conn: Any) -> None:
        expires = conn.state.pop(EXPIRES, None)
        if expires is not None:  # what the token granted ends with it
            delay = max(0.0, expires - time.time())
            conn.token_timer = asyncio.get_running_loop().call_later(delay, conn.close)
        recovery = self.context.recovery
        if recovery is None:
            self._admit(conn, None, None, False)
        elif recovery.store is not None:
            # the broadcast stream must be loaded from Redis first
            recovery.store.admit_later(conn, None, False, self._admit)
        else:
            self._admit(conn, None, None, False)

    def _admit(self, conn: Any, _resume: Any, _ended: Any, _asked: bool) -> None:
        """In one callback: the broadcast stream's missed publications, the hub, the
        rooms (each replays its own, now or once Redis has loaded it)."""
        if conn.closed:
            return
        context = self.context
        recovery = context.recovery
        hub = context.hub
        conn.begin()
        hub.add(conn)
        for room in conn.wanted:
            if recovery is not None:
                joined = recovery.join(conn, room)
            else:
                joined = hub.join(conn, room)
                if joined:
                    conn.joined_live(room)
            if not joined:
                conn.left.append(room)
        conn.started()

    def on_disconnect(self, conn: Any) -> None:
        recovery = self.context.recovery
        if recovery is not None:
            for room in conn.wanted:
                recovery.leave(conn, room)  # also when it still waits for Redis
        self.context.hub.remove(conn)


def _last(values: list[str] | None) -> str | None:
    return values[-1] if values else None
