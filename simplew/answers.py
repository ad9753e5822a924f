"""The answer to a plain HTTP request (one that is not a WebSocket upgrade).

The HTTP front (:mod:`simplew._fast.http`) calls the server context's
``http_handler``, which is :meth:`HttpAnswers.answer` unless an application
overrides ``SimpleWServer.http_handler``. In order, the first that answers
wins:

1. a CORS preflight, when ``add_cors`` was called;
2. an operations endpoint (``/healthz``, ``/metrics``, ``/simplew.js``) for GET and HEAD;
   then the admin page's paths (any method) and an event stream's path (:mod:`simplew.sse`);
3. a REST route (:mod:`simplew.rest`);
4. a static file (:mod:`simplew.static`), longest prefix first;
5. a WebSocket endpoint's path: 426, it needs an upgrade;
6. under a REST prefix: the router's JSON 404; elsewhere a plain 404.

A handler that raises gets 500 and the traceback is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from simplew._fast.context import ServerContext
from simplew.request import Request
from simplew.rest import Cors, Router
from simplew.static import StaticFiles

log = logging.getLogger("simplew")

Response = tuple[int, list[tuple[str, str]], bytes]
_NOT_FOUND: Response = (404, [("Content-Type", "text/plain; charset=utf-8")], b"not found\n")
_UPGRADE_REQUIRED: Response = (
    426,
    [("Upgrade", "websocket"), ("Content-Type", "text/plain")],
    b"this is a WebSocket endpoint: send an upgrade request\n",
)
_SERVER_ERROR: Response = (500, [("Content-Type", "text/plain")], b"internal server error\n")


class HttpAnswers:
    """What a server answers on plain HTTP: operations, REST, static files, CORS."""

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.ops: dict[str, Callable[[], Response]] = {}  # GET path -> answer
        self.handlers: dict[str, Callable[[Request], Any]] = {}  # path -> answer(request)
        self.statics: list[StaticFiles] = []  # longest prefix first
        self.router: Router | None = None
        self.cors: Cors | None = None
        self.streams: dict[str, Any] = {}  # path -> simplew.sse.SseContent

    def add_static(self, static: StaticFiles) -> None:
        self.statics.append(static)
        self.statics.sort(key=lambda s: len(s.prefix), reverse=True)

    def answer(self, request: Request) -> Any:
        """``(status, headers, body)``, or an awaitable of it (async REST handlers;
        the HTTP front keeps the order of answers)."""
        try:
            cors = self.cors
            if (
                cors is not None
                and request.method == "OPTIONS"
                and "access-control-request-method" in request.headers
            ):
                return cors.preflight(request)
            response = self._answer(request)
            return response if cors is None else cors.apply(request, response)
        except Exception:
            log.exception("HTTP handler failed for %s %s", request.method, request.path)
            return _SERVER_ERROR

    def _answer(self, request: Request) -> Any:
        op = self.ops.get(request.path)
        if op is not None and (request.method == "GET" or request.method == "HEAD"):
            return op()
        handler = self.handlers.get(request.path)
        if handler is not None:
            return handler(request)
        stream = self.streams.get(request.path)
        if stream is not None:
            return stream.answer(request)
        router = self.router
        if router is not None:
            response = router.dispatch(request)
            if response is not None:
                return response
        for static in self.statics:
            if static.matches(request.path):
                response = static.serve(request.method, request.path, request.headers)
                if response is not None:
                    return response
        if self.context.endpoint_for(request.path) is not None:
            return _UPGRADE_REQUIRED
        if router is not None and router.owns(request.path):
            return router.not_found(request)
        return _NOT_FOUND
