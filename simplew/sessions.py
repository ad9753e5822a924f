"""WebSocket sessions as the application sees them: connect and disconnect
hooks, the access log of sessions, presence.

The endpoints (:mod:`simplew._fast.connection`) and the recovery code call
:meth:`Sessions.opened` / :meth:`Sessions.closed` through the server context
(``session_opened`` / ``session_closed``) once a session is in the hub and once
it has left it. Loop thread only, but for the hook lists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from simplew._fast.connection import WebSocketConnection
from simplew._fast.context import ServerContext
from simplew.recovery import log_id

log = logging.getLogger("simplew")
access_log = logging.getLogger("simplew.access")

Session = WebSocketConnection
Hook = Callable[[Session], Any]


class Sessions:
    """The sessions of one server: hooks, logging and presence."""

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.on_connect: list[Hook] = []
        self.on_disconnect: list[Hook] = []
        self.on_session_end: list[Callable[[str], Any]] = []  # given to simplew.recovery

    # -- called by the lower layers (ServerContext.session_opened / _closed) -------

    def opened(self, session: Session) -> None:
        """``session`` is in the hub: take its user from the upgrade's JWT, log, run hooks."""
        jwt_auth = self.context.jwt_auth
        if jwt_auth is not None and session.user is None:
            claims = jwt_auth.optional_claims(None, session.request.headers)
            if claims is not None and isinstance(claims.get("sub"), str):
                session.user = claims["sub"]
        if self.context.access_log is not None:
            access_log.info(
                "%s WebSocket connect %s %s%s",
                _peer(session),
                session.endpoint.path,
                _log_id(session),
                " recovered" if session.recovered else "",
            )
        for callback in self.on_connect:
            _call_hook(callback, session)

    def closed(self, session: Session) -> None:
        """``session`` has left the hub: log, run hooks."""
        if self.context.access_log is not None:
            access_log.info(
                "%s WebSocket disconnect %s %s",
                _peer(session),
                session.endpoint.path,
                _log_id(session),
            )
        for callback in self.on_disconnect:
            _call_hook(callback, session)

    # -- presence -------------------------------------------------------------------

    def presence_store(self) -> Any:
        """The Redis stream that knows every process's rooms (recovery with Redis), or None."""
        recovery = self.context.recovery
        return None if recovery is None else recovery.store

    def local_presence(self, room: str) -> list[str]:
        """The ids of this process's sessions in ``room``, sorted."""
        return sorted(session.id for session in self.context.hub.room_sessions(room))

    async def presence(self, room: str) -> list[str]:
        """The ids of the sessions in ``room``: every process's with recovery and
        Redis (as synced there), else this process's. On the loop."""
        store = self.presence_store()
        if store is None:
            return self.local_presence(room)
        result: list[str] = await store.presence(room)
        return result


def _call_hook(callback: Callable[[Session], Any], session: Session) -> None:
    try:
        result = callback(session)
        if asyncio.iscoroutine(result):
            asyncio.get_running_loop().create_task(result)
    except Exception:
        log.exception("connect/disconnect hook %r raised", callback)


def _log_id(session: Session) -> str:
    """A simplew.v1 session id is a bearer secret: the log shows a digest of it."""
    return log_id(session.id) if session.v1 else session.id


def _peer(session: Session) -> str:
    address = session.remote_address
    return f"{address[0]}:{address[1]}" if address else "-"
