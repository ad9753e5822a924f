"""Who a WebSocket connection is, for as long as its JWT says so.

As a connection opens (before it is admitted, before a ``simplew.v2`` resume is
decided), :meth:`Credentials.identify` sets ``session.user`` from the token of
its upgrade request (``Authorization: Bearer``, or the ``bearer`` subprotocol):
the token's ``sub`` when it is valid and a string, else None. ``session.user``
never comes from anywhere else: not from the session a connection resumes.

A token with ``exp`` bounds the connection's access. When it expires (``exp``
plus the key's leeway), a ``simplew.v2`` connection is sent
``{"type":"refresh"}`` and has ``token_grace`` seconds to answer
``{"type":"refresh","token":"<jwt>"}`` with a valid token of the same ``sub``;
a plain WebSocket connection cannot refresh. Without a valid refresh in time
the connection is closed with :data:`CLOSE_TOKEN_EXPIRED` and gets nothing
more. A refresh that is not valid, or names another user, closes it with
:data:`CLOSE_TOKEN_REFUSED` at once. A client may refresh before it is asked.
docs/protocol.md has the messages; docs/security.md the threat model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from simplew._fast.connection import WebSocketConnection
from simplew._fast.context import ServerContext
from simplew._fast.plainjson import decode_json
from simplew._fast.router import Unauthorized

log = logging.getLogger("simplew.auth")

CLOSE_TOKEN_EXPIRED = 4001  # no valid refresh within the grace period
CLOSE_TOKEN_REFUSED = 4003  # a refresh with an invalid token, or another user's
REFRESH_REQUEST = b'{"type":"refresh"}'
MAX_PROTOCOL_MESSAGE = 16384  # bytes of a client protocol message (a refresh), at most


class Credentials:
    """The identity and token lifetime of every WebSocket connection of a server."""

    def __init__(self, context: ServerContext, grace: float) -> None:
        self.context = context
        self.grace = grace
        # counters (/metrics)
        self.expired = 0  # connections closed: token expired, no valid refresh in time
        self.refreshed = 0  # valid refreshes
        self.refused = 0  # refreshes refused (invalid token, another user)

    def identify(self, session: WebSocketConnection) -> None:
        """Set ``session.user`` from its upgrade's token and watch the token's expiry."""
        session.user = None
        jwt_auth = self.context.jwt_auth
        if jwt_auth is None:
            return
        claims = jwt_auth.optional_claims(None, session.request.headers)
        if claims is None:
            return
        sub = claims.get("sub")
        if isinstance(sub, str):
            session.user = sub
        self._watch(session, jwt_auth.expiry(claims))

    def protocol_message(self, session: WebSocketConnection, text: str) -> None:
        """A ``simplew.v2`` client message for the protocol (see the module docstring)."""
        if len(text) > MAX_PROTOCOL_MESSAGE:
            session.close(1009, "protocol message too big")
            return
        try:
            message = decode_json(text)
        except (ValueError, RecursionError):
            message = None
        if type(message) is not dict or message.get("type") != "refresh":
            return  # not one this server knows: ignored, as the protocol says
        self.refresh(session, message.get("token"))

    def refresh(self, session: WebSocketConnection, token: Any) -> None:
        """A new token for ``session``: valid and of the same user, or the connection ends."""
        jwt_auth = self.context.jwt_auth
        if session.closed:
            return
        reason = None
        if jwt_auth is None:
            reason = "this server checks no tokens"
        elif session.user is None:
            reason = "this connection has no user to refresh"
        elif type(token) is not str:
            reason = "the refresh needs a token string"
        else:
            try:
                claims = jwt_auth.decode(token)
            except Unauthorized as exc:
                reason = str(exc)
            else:
                if claims.get("sub") != session.user:
                    reason = "the token is another user's"
        if reason is not None:
            self.refused += 1
            log.info("token refresh refused for %s: %s", session.request.path, reason)
            session.close(CLOSE_TOKEN_REFUSED, "token refused")
            return
        self.refreshed += 1
        self._watch(session, jwt_auth.expiry(claims))

    # -- expiry ----------------------------------------------------------------------

    def _watch(self, session: WebSocketConnection, expires: float | None) -> None:
        """Act when the token expires (``expires``: Unix time, None: never)."""
        timer = session.token_timer
        if timer is not None:
            timer.cancel()
            session.token_timer = None
        if expires is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, expires - time.time())
        session.token_timer = loop.call_later(delay, self._expired, session)

    def _expired(self, session: WebSocketConnection) -> None:
        """The token just expired: ask a simplew.v2 client for a new one; close at the
        end of the grace period."""
        if session.closed:
            session.token_timer = None
            return
        if session.v2:
            session.send_protocol(REFRESH_REQUEST)
        loop = asyncio.get_running_loop()
        session.token_timer = loop.call_later(self.grace, self._end, session)

    def _end(self, session: WebSocketConnection) -> None:
        session.token_timer = None
        if session.closed:
            return
        self.expired += 1
        log.info("closing a connection on %s: its token expired", session.request.path)
        session.close(CLOSE_TOKEN_EXPIRED, "token expired")
