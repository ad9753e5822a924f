"""WebSocket sessions as the application sees them: connect and disconnect
hooks, the access log of sessions, presence (which shows users and public ids,
never a session id: a ``simplew.v2`` session id is a resume secret).

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
        """``session`` is in the hub (its user is set: :mod:`simplew.tokens`): log, run hooks."""
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

    def local_presence(self, room: str) -> list[dict[str, Any]]:
        """This process's sessions in ``room``: ``{"client": public id, "user": JWT sub
        or None}``, sorted by public id. The public id is the digest the logs show
        (:func:`simplew.recovery.log_id`): it grants nothing, unlike a session id."""
        entries = [
            {"client": log_id(session.id), "user": session.user}
            for session in self.context.hub.room_sessions(room)
        ]
        return sorted(entries, key=lambda entry: entry["client"])

    async def presence(self, room: str) -> list[dict[str, Any]]:
        """:meth:`local_presence` of every process with recovery and Redis (as synced
        there), else of this one. On the loop."""
        store = self.presence_store()
        if store is None:
            return self.local_presence(room)
        result: list[dict[str, Any]] = await store.presence(room)
        return result


def _call_hook(callback: Callable[[Session], Any], session: Session) -> None:
    try:
        result = callback(session)
        if asyncio.iscoroutine(result):
            asyncio.get_running_loop().create_task(result)
    except Exception:
        log.exception("connect/disconnect hook %r raised", callback)


def _log_id(session: Session) -> str:
    """A simplew.v2 session id is a bearer secret: the log shows a digest of it."""
    return log_id(session.id) if session.v2 else session.id


def _peer(session: Session) -> str:
    """``host:port`` of the client, ``[host]:port`` for IPv6 (as the HTTP access log)."""
    address = session.remote_address
    if not address:
        return "-"
    host = str(address[0])
    return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
