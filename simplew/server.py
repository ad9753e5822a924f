"""``SimpleWServer``: one port for static files and WebSocket endpoints."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import importlib.util
import json
import logging
import signal
import threading
from typing import Any, Callable

from simplew._fast.admission import Admission, OriginPolicy
from simplew._fast.connection import SLOW_CLOSE, SLOW_SKIP, Endpoint, Flusher, WebSocketConnection
from simplew._fast.context import HttpLimits, HttpStats, ServerContext
from simplew._fast.heartbeat import Heartbeat
from simplew._fast.http import HttpProtocol
from simplew._fast.hub import Hub
from simplew._fast.router import CallbackEndpoint, RouteEndpoint, RouteTarget
from simplew import browser as _browser
from simplew.auth import JwtAuth, is_protected
from simplew.controller import Controller, has_before_hook, join_path, routes_of
from simplew.message import BodyMappingError, WebSocketMessage
from simplew.recovery import Recovery, log_id
from simplew.request import Request
from simplew.rest import Cors, DynamicSpec, compile_router
from simplew.static import StaticFiles
from simplew import metrics as _metrics

try:
    import uvloop
except ImportError:  # Windows: the stdlib loop
    uvloop = None

try:
    import aiofastnet
except ImportError:
    aiofastnet = None

log = logging.getLogger("simplew")
_access_log = logging.getLogger("simplew.access")
Response = tuple[int, list[tuple[str, str]], bytes]
Session = WebSocketConnection

DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
REDIS_EXTRA = "pip install 'simplew[redis]'"     # what redis_url needs that is not installed
SLOW_CLIENT_POLICIES = {"close": SLOW_CLOSE, "skip": SLOW_SKIP}


class _WebSocketSpec:
    """What ``add_websocket_content`` asked for; compiled into an Endpoint at start."""

    def __init__(self, path: str, controllers: list[type[Controller]] | None,
                 on_message: Callable[..., Any] | None, max_message_size: int,
                 compression: bool | None) -> None:
        self.path = path
        self.controllers = controllers
        self.on_message = on_message
        self.max_message_size = max_message_size
        self.compression = compression


class SimpleWServer:
    """A web server serving static files, controllers and WebSockets on one port.

    ``start()`` serves from a background thread and returns; ``run()`` blocks;
    ``await serve()`` serves inside a running event loop until ``stop()``.
    """

    def __init__(self, host: str = "0.0.0.0", port: int = 2015, *,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 max_body_size: int = 1 << 20,
                 max_header_size: int = 16384,
                 idle_timeout: float | None = 60.0,
                 header_timeout: float | None = 30.0,
                 read_buffer_size: int = 2048,
                 handshake_timeout: float = 10.0,
                 ping_interval: float | None = 20.0,
                 ping_timeout: float = 20.0,
                 backlog: int = 4096,
                 reuse_port: bool = False,
                 ssl: Any = None,
                 shutdown_grace: float = 5.0,
                 max_write_buffer: int = 1 << 20,
                 slow_client_policy: str = "close",
                 compression: bool = False,
                 compression_level: int = 1,
                 use_aiofastnet: bool = False,
                 redis_url: str | None = None,
                 recovery: bool = False,
                 recovery_window: float = 120.0,
                 history_size: int = 10_000,
                 history_bytes: int = 64 << 20,
                 healthz: bool = True,
                 metrics: bool = False,
                 access_log: bool = True,
                 allowed_origins: list[str] | None = None,
                 max_connections: int | None = None,
                 max_connections_per_ip: int | None = None) -> None:
        self.host = host
        self.port = port
        self.max_message_size = max_message_size
        # connection limits and allowed WebSocket origins (see "Exposing simplew to the internet")
        self.admission = Admission(max_connections, max_connections_per_ip, allowed_origins)
        self.limits = HttpLimits(max_body_size, max_header_size,
                                 idle_timeout=idle_timeout, header_timeout=header_timeout,
                                 admission=self.admission)
        self._http_connections: set[HttpProtocol] = set()
        self.hub = Hub()
        # pings every client each ping_interval, drops those silent for ping_timeout (None: off)
        self.heartbeat = None if ping_interval is None else \
            Heartbeat(self.hub, ping_interval, ping_timeout)
        self._picows_options = {
            "handshake_timeout": handshake_timeout,
            "heartbeat": self.heartbeat,
            "read_buffer_size": read_buffer_size,
        }
        self._backlog = backlog
        self._reuse_port = reuse_port
        self.ssl = ssl
        self.shutdown_grace = shutdown_grace
        self.max_write_buffer = max_write_buffer
        if slow_client_policy not in SLOW_CLIENT_POLICIES:
            raise ValueError(f"slow_client_policy must be one of {sorted(SLOW_CLIENT_POLICIES)}")
        self.slow_client_policy = slow_client_policy
        self.compression = compression
        self.compression_level = compression_level
        # Redis pub/sub backplane: multicasts reach the clients of every process
        # sharing this URL (set before start; simplew.backplane.RedisBackplane).
        self.redis_url: str | None = redis_url
        self.backplane: Any = None
        # simplew.v1 sessions that survive disconnects (simplew.recovery)
        self.recovery_enabled = recovery
        self.recovery_window = recovery_window
        self.history_size = history_size
        self.history_bytes = history_bytes
        self.recovery: Recovery | None = None
        self._on_session_end: list[Callable[[str], Any]] = []
        self._use_aiofastnet = use_aiofastnet and aiofastnet is not None
        self._statics: list[StaticFiles] = []
        self._ws_specs: list[_WebSocketSpec] = []
        self._endpoints: dict[str, Endpoint] = {}
        self._on_connect: list[Callable[[Session], Any]] = []
        self._on_disconnect: list[Callable[[Session], Any]] = []
        # HTTP API and operations (simplew.rest, simplew.metrics); see "REST and operations"
        self.http_stats = HttpStats()
        self.access_log = access_log        # one INFO line per request on "simplew.access"
        # what the lower layers get instead of this object (simplew._fast.context)
        self.context = ServerContext(self, self.hub, self.limits, self.http_stats)
        self.context.picows_options = self._picows_options
        self.context.http_connections = self._http_connections
        self._dynamic: list[DynamicSpec] = []
        self._inline_routes: list[tuple[str, str, Callable[..., Any]]] = []
        self._router: Any = None
        self._cors: Cors | None = None
        self._ops: dict[str, Callable[[], Response]] = {}
        if healthz:
            self.enable_healthz()
        if metrics:
            self.enable_metrics()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id: int | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        picows_log = logging.getLogger("simplew.picows")
        if picows_log.level == logging.NOTSET:
            picows_log.setLevel(logging.WARNING)

    # -- configuration ------------------------------------------------------

    def add_static_content(self, path: str, prefix: str = "/", timeout: float | None = None,
                           **cache: int) -> StaticFiles:
        """Serve the files of directory ``path`` under URL ``prefix``
        (``cache``: ``cache_max_file``, ``cache_budget`` of :class:`StaticFiles`)."""
        static = StaticFiles(path, prefix, timeout, **cache)
        self._statics.append(static)
        self._statics.sort(key=lambda s: len(s.prefix), reverse=True)
        return static

    def add_websocket_content(self, path_or_controller: str | type[Controller] = "/websocket",
                              path: str | None = None, *,
                              on_message: Callable[..., Any] | None = None,
                              max_message_size: int | None = None,
                              compression: bool | None = None,
                              allowed_origins: list[str] | None = None) -> None:
        """Open a WebSocket endpoint.

        ``add_websocket_content("/websocket")`` routes messages to the WEBSOCKET
        methods of every Controller subclass; ``add_websocket_content(Cls, "/ws")``
        to one class; ``on_message=fn`` gives each raw message to
        ``fn(session, data)`` instead (``str`` for TEXT, ``bytes`` for BINARY).
        ``compression`` turns permessage-deflate on or off for this endpoint
        (default: the server's ``compression``). ``allowed_origins`` replaces the
        server's ``allowed_origins`` for this endpoint.
        """
        controllers, endpoint_path = _controllers_and_path(path_or_controller, path, "/websocket")
        if any(spec.path == endpoint_path for spec in self._ws_specs):
            raise ValueError(f"a WebSocket endpoint is already at {endpoint_path}")
        if allowed_origins is not None:
            self.admission.endpoint_origins[endpoint_path] = OriginPolicy(allowed_origins)
        self._ws_specs.append(_WebSocketSpec(
            endpoint_path, controllers, on_message, max_message_size or self.max_message_size,
            compression))

    def on_connect(self, callback: Callable[[Session], Any]) -> Callable[[Session], Any]:
        """Call ``callback(session)`` when a WebSocket client connects (usable as a decorator)."""
        self._on_connect.append(callback)
        return callback

    def on_disconnect(self, callback: Callable[[Session], Any]) -> Callable[[Session], Any]:
        """Call ``callback(session)`` when a WebSocket client is gone."""
        self._on_disconnect.append(callback)
        return callback

    def on_session_end(self, callback: Callable[[str], Any]) -> Callable[[str], Any]:
        """With recovery: call ``callback(session_id)`` when a simplew.v1 session
        ends for good, ``recovery_window`` seconds after its last connection
        closed without a reconnect (in the process it last closed in)."""
        self._on_session_end.append(callback)
        return callback

    jwt_auth: JwtAuth | None = None

    def set_token(self, key: Any, *, algorithms: Any = ("HS256",), issuer: str | None = None,
                  audience: Any = None, leeway: float = 0.0,
                  options: dict[str, Any] | None = None) -> JwtAuth:
        """Validate JWTs on WebSocket messages with ``key`` (SimpleW's ``SetToken``).

        Routes of controllers marked ``require_jwt`` then answer only messages
        with a valid token, and every controller sees the claims as ``self.jwt``.
        Needs PyJWT (``pip install 'simplew[jwt]'``); see :mod:`simplew.auth`.
        """
        auth = JwtAuth(key, algorithms, issuer=issuer, audience=audience, leeway=leeway,
                       options=options)
        self.jwt_auth = auth
        self.context.jwt_auth = auth        # read at each use: takes effect while serving
        return auth

    def SetToken(self, key: Any, issuer: str | None = None) -> JwtAuth:
        return self.set_token(key, issuer=issuer)

    # -- multicast and sessions ---------------------------------------------

    def multicast_text(self, text: str, room: str | None = None) -> None:
        """Send ``text`` to every connected WebSocket client, or to the members of
        ``room`` (``session.join(room)``); safe from any thread. With a Redis
        backplane the clients of every other process get it too."""
        self._multicast(1, text.encode("utf-8"), room)

    def multicast_binary(self, data: bytes, room: str | None = None) -> None:
        """Send ``data`` to every connected WebSocket client, or to ``room``; any thread."""
        self._multicast(2, bytes(data), room)

    def _multicast(self, opcode: int, payload: bytes, room: str | None = None) -> None:
        if room is not None and not isinstance(room, str):
            raise TypeError(f"room must be a str, not {type(room).__name__}")
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread_id:
            self._multicast_here(opcode, payload, room)
        else:
            self._loop.call_soon_threadsafe(self._multicast_here, opcode, payload, room)

    def _multicast_here(self, opcode: int, payload: bytes, room: str | None) -> None:
        """On the loop thread: deliver locally now, then hand it to the backplane."""
        if self.recovery is not None:
            self.recovery.publish(opcode, payload, room)     # a publication of the stream
            return
        if room is None:
            self.hub.multicast(opcode, payload)
        else:
            self.hub.multicast_room(room, opcode, payload)
        if self.backplane is not None:
            self.backplane.publish(opcode, payload, room)

    def _deliver_remote(self, opcode: int, payload: bytes, room: str | None) -> None:
        """A multicast from another process (backplane, loop thread): local clients only."""
        if room is None:
            self.hub.multicast(opcode, payload)
        else:
            self.hub.multicast_room(room, opcode, payload)

    @property
    def sessions(self) -> list[Session]:
        """The connected WebSocket sessions."""
        return self.hub.sessions()

    def room_sessions(self, room: str) -> list[Session]:
        """The sessions of this process in ``room``."""
        return self.hub.room_sessions(room)

    @property
    def rooms(self) -> dict[str, int]:
        """{room: number of this process's sessions in it}, for rooms with members."""
        return self.hub.rooms()

    def presence(self, room: str) -> list[str]:
        """The ids of the sessions in ``room``, on every process sharing the Redis
        URL (as synced there, within a second) or in this process without Redis.
        Any thread but the loop's when Redis is used: there, ``await
        server.presence_async(room)``."""
        if self._presence_store() is None:
            return self._local_presence(room)
        loop = self._loop
        if loop is None:
            raise RuntimeError("the server is not running")
        if threading.get_ident() == self._loop_thread_id:
            raise RuntimeError("on the loop thread, use: await server.presence_async(room)")
        return asyncio.run_coroutine_threadsafe(self.presence_async(room), loop).result(10)

    async def presence_async(self, room: str) -> list[str]:
        """:meth:`presence`, awaitable on the server's loop."""
        store = self._presence_store()
        if store is None:
            return self._local_presence(room)
        return await store.presence(room)

    def _presence_store(self) -> Any:
        """The Redis stream that knows every process's rooms, or None."""
        return None if self.recovery is None else self.recovery.store

    def _local_presence(self, room: str) -> list[str]:
        return sorted(session.id for session in self.hub.room_sessions(room))

    def find_session(self, session_id: str) -> Session | None:
        return self.hub.find(session_id)

    def disconnect_all(self, code: int = 1001, reason: str = "server going away") -> None:
        for session in self.sessions:
            session.close(code, reason)

    # -- REST and operations (simplew.rest, simplew.metrics) -----------------

    def add_dynamic_content(self, path_or_controller: str | type[Controller] = "/",
                            path: str | None = None) -> None:
        """Serve REST controllers under ``path`` (SimpleW's ``AddDynamicContent``).

        ``add_dynamic_content("/api")`` routes HTTP requests to the non-WEBSOCKET
        methods (``@route("GET", "/users/{id}")``...) of every Controller subclass;
        ``add_dynamic_content(Cls, "/api")`` to one class. See :mod:`simplew.rest`.
        """
        controllers, prefix = _controllers_and_path(path_or_controller, path, "/")
        self._dynamic.append(DynamicSpec(prefix, controllers))
        self._routes_changed()

    def map(self, method: str, url: str, handler: Callable[..., Any] | None = None) -> Any:
        """Answer ``method url`` with ``handler`` (arguments mapped like a controller's);
        without ``handler``, a decorator."""
        if handler is None:
            return lambda func: self.map(method, url, func)
        if not url.startswith("/"):
            raise ValueError(f"url must start with '/': {url!r}")
        self._inline_routes.append((method.upper(), "/" + url.strip("/"), handler))
        self._routes_changed()
        return handler

    def map_get(self, url: str, handler: Callable[..., Any] | None = None) -> Any:
        """``GET url`` → ``handler`` (SimpleW's ``MapGet``); a decorator without ``handler``."""
        return self.map("GET", url, handler)

    def map_post(self, url: str, handler: Callable[..., Any] | None = None) -> Any:
        """``POST url`` → ``handler`` (SimpleW's ``MapPost``)."""
        return self.map("POST", url, handler)

    def map_put(self, url: str, handler: Callable[..., Any] | None = None) -> Any:
        return self.map("PUT", url, handler)

    def map_delete(self, url: str, handler: Callable[..., Any] | None = None) -> Any:
        return self.map("DELETE", url, handler)

    def map_patch(self, url: str, handler: Callable[..., Any] | None = None) -> Any:
        return self.map("PATCH", url, handler)

    def _routes_changed(self) -> None:
        if self._server is not None:        # added while serving: recompile now
            self._router = compile_router(self._dynamic, self._inline_routes, self.context,
                                          _json_default)

    def add_cors(self, origin: str | list[str] = "*", methods: str | list[str] | None = None,
                 headers: str | list[str] | None = None, credentials: bool = False,
                 max_age: int | None = None, expose_headers: str | list[str] | None = None) -> Cors:
        """Answer CORS preflights and add Access-Control-* headers (SimpleW's ``AddCORS``).

        ``origin``: ``"*"``, one origin or a list (the request's Origin is then
        echoed when allowed, with ``Vary: Origin``). ``methods`` / ``headers``
        default to the usual methods / the headers the preflight asks for.
        """
        self._cors = Cors(origin, methods, headers, credentials, max_age, expose_headers)
        return self._cors

    def enable_healthz(self, path: str = "/healthz") -> None:
        """``GET path`` → 200 ``{"status":"ok"}`` (on by default; ``healthz=False`` turns it off)."""
        self._ops[path] = lambda: _metrics.HEALTHY

    def enable_metrics(self, path: str = "/metrics") -> None:
        """``GET path`` → Prometheus text metrics (also ``SimpleWServer(metrics=True)``)."""
        self._ops[path] = lambda: _metrics.metrics_response(self)

    # -- HTTP side (called by simplew._fast.http) ---------------------------

    def endpoint_for(self, path: str) -> Endpoint | None:
        """The WebSocket endpoint at ``path``, once started (or compiled)."""
        return self.context.endpoint_for(path)

    def http_handler(self, request: Request) -> Any:
        """The answer to a plain HTTP request: ``(status, headers, body)``, or an
        awaitable of it (async REST handlers; http.pyx keeps the order)."""
        try:
            cors = self._cors
            if cors is not None and request.method == "OPTIONS" \
                    and "access-control-request-method" in request.headers:
                return cors.preflight(request)
            response = self._http_answer(request)
            return response if cors is None else cors.apply(request, response)
        except Exception:
            log.exception("HTTP handler failed for %s %s", request.method, request.path)
            return 500, [("Content-Type", "text/plain")], b"internal server error\n"

    def _http_answer(self, request: Request) -> Any:
        op = self._ops.get(request.path)
        if op is not None and (request.method == "GET" or request.method == "HEAD"):
            return op()
        router = self._router
        if router is not None:
            response = router.dispatch(request)
            if response is not None:
                return response
        for static in self._statics:
            if static.matches(request.path):
                response = static.serve(request.method, request.path, request.headers)
                if response is not None:
                    return response
        if self.endpoint_for(request.path) is not None:
            return 426, [("Upgrade", "websocket"), ("Content-Type", "text/plain")], \
                b"this is a WebSocket endpoint: send an upgrade request\n"
        if router is not None and router.owns(request.path):
            return router.not_found(request)
        return 404, [("Content-Type", "text/plain; charset=utf-8")], b"not found\n"

    def _session_opened(self, session: Session) -> None:
        if self.jwt_auth is not None and session.user is None:
            claims = self.jwt_auth.optional_claims(None, session.request.headers)
            if claims is not None and isinstance(claims.get("sub"), str):
                session.user = claims["sub"]
        if self.access_log:
            _access_log.info("%s WebSocket connect %s %s%s", _peer(session),
                             session.endpoint.path, _log_id(session),
                             " recovered" if session.recovered else "")
        for callback in self._on_connect:
            self._call_hook(callback, session)

    def _session_closed(self, session: Session) -> None:
        if self.access_log:
            _access_log.info("%s WebSocket disconnect %s %s", _peer(session),
                             session.endpoint.path, _log_id(session))
        for callback in self._on_disconnect:
            self._call_hook(callback, session)

    def _call_hook(self, callback: Callable[[Session], Any], session: Session) -> None:
        try:
            result = callback(session)
            if asyncio.iscoroutine(result):
                asyncio.get_running_loop().create_task(result)
        except Exception:
            log.exception("connect/disconnect hook %r raised", callback)

    # -- lifecycle ------------------------------------------------------------

    def _compile(self) -> None:
        context = self.context
        context.http_handler = self.http_handler
        context.session_opened = self._session_opened
        context.session_closed = self._session_closed
        context.access_log = _access_log if self.access_log else None
        self._router = compile_router(self._dynamic, self._inline_routes, context, _json_default)
        self._endpoints = context.endpoints = {}
        self._flusher = Flusher()
        if self._ws_specs:
            self._ops.setdefault(_browser.PATH, _browser.response)
        if self.recovery_enabled:
            self.recovery = Recovery(context, self.recovery_window, self.history_size,
                                     self.history_bytes)
            self.recovery.on_session_end = self._on_session_end
        context.recovery = self.recovery
        for spec in self._ws_specs:
            if spec.on_message is not None:
                endpoint = CallbackEndpoint(spec.path, spec.max_message_size, spec.on_message,
                                            context)
            else:
                routes = {}
                for controller in spec.controllers or Controller.subclasses():
                    for route_path, func in routes_of(controller, "WEBSOCKET"):
                        url = join_path(spec.path, route_path)
                        if url in routes:
                            raise ValueError(f"two WEBSOCKET methods answer {url}")
                        routes[url] = RouteTarget(url, controller, func,
                                                  is_protected(controller, func),
                                                  has_before_hook(controller))
                endpoint = RouteEndpoint(spec.path, spec.max_message_size, routes,
                                         WebSocketMessage, BodyMappingError, _reply, context)
            endpoint.max_write_buffer = self.max_write_buffer
            endpoint.slow_client_policy = SLOW_CLIENT_POLICIES[self.slow_client_policy]
            endpoint.compression = self.compression if spec.compression is None else spec.compression
            endpoint.compression_level = self.compression_level
            endpoint.flusher = self._flusher
            self._endpoints[spec.path] = endpoint

    def _protocol(self) -> HttpProtocol:
        return HttpProtocol(self.context)

    async def listen(self) -> None:
        """Start listening in the running loop and return once the port is bound."""
        if self._server is not None:
            raise RuntimeError("server is already started")
        if self.redis_url and importlib.util.find_spec("redis") is None:   # before binding
            raise ImportError(f"redis_url needs the Redis client: {REDIS_EXTRA}")
        self._compile()
        loop = asyncio.get_running_loop()
        options = {"backlog": self._backlog, "reuse_address": True, "ssl": self.ssl}
        if self._reuse_port:
            options["reuse_port"] = True
        if self._use_aiofastnet:
            server = await aiofastnet.create_server(loop, self._protocol, self.host, self.port,
                                                    **options)
        else:
            server = await loop.create_server(self._protocol, self.host, self.port, **options)
        self._server = server
        self._loop = loop
        self._loop_thread_id = threading.get_ident()
        self._stopped = asyncio.Event()
        if self.port == 0:
            self.port = server.sockets[0].getsockname()[1]
        if self.redis_url and self.recovery is not None:
            from simplew.stream import RedisStream
            self.backplane = RedisStream(self.redis_url, self.recovery)
            self.recovery.store = self.backplane
            self.backplane.start()          # one stream for every process sharing Redis
        elif self.redis_url:
            from simplew.backplane import RedisBackplane
            self.backplane = RedisBackplane(self.redis_url, self._deliver_remote)
            self.backplane.start()          # connects in the background, retrying
        log.info("simplew listening on %s://%s:%d/", "https" if self.ssl else "http",
                 self.host, self.port)

    async def serve(self) -> None:
        """Serve in the running loop until :meth:`stop` (or cancellation)."""
        if self._server is None:
            await self.listen()
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()                      # stop accepting
        for conn in list(self._http_connections):
            conn.shutdown()
        for session in self.sessions:
            session.close(1001, "server shutting down")
        deadline = asyncio.get_running_loop().time() + self.shutdown_grace
        while len(self.hub) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)       # clients answer the CLOSE, buffers drain
        for session in self.sessions:
            session.abort()
        if self.backplane is not None:
            await self.backplane.close()    # its counters stay readable
        if self.recovery is not None:
            self.recovery.close()
        self._loop = None
        self._loop_thread_id = None

    def start(self) -> None:
        """Serve from a background thread; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("server is already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            try:
                await self.listen()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            await self.serve()

        def run_thread() -> None:
            if uvloop is not None:
                uvloop.run(main())
            else:
                asyncio.run(main())

        self._thread = threading.Thread(target=run_thread, name="simplew", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def stop(self) -> None:
        """Stop serving: clients get close 1001 and the port is released."""
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None:
            if threading.get_ident() == self._loop_thread_id:
                stopped.set()
            else:
                loop.call_soon_threadsafe(stopped.set)
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.shutdown_grace + 5)

    def run(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM or :meth:`stop`, then shut down gracefully.

        On a signal the server stops accepting, sends close 1001 to every client,
        lets what was already sent drain and returns within ``shutdown_grace`` seconds.
        """
        async def main() -> None:
            await self.listen()
            loop = asyncio.get_running_loop()
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    try:
                        loop.add_signal_handler(sig, self.stop)
                    except (NotImplementedError, RuntimeError):  # Windows
                        pass
            await self.serve()

        try:
            if uvloop is not None:
                uvloop.run(main())
            else:
                asyncio.run(main())
        except KeyboardInterrupt:
            pass

    @property
    def is_started(self) -> bool:
        return self._server is not None

    # SimpleW spellings
    AddStaticContent = add_static_content
    AddWebSocketContent = add_websocket_content
    MulticastText = multicast_text
    MulticastBinary = multicast_binary
    Start = start
    Stop = stop
    FindSession = find_session
    DisconnectAll = disconnect_all
    AddDynamicContent = add_dynamic_content
    MapGet = map_get
    MapPost = map_post
    AddCORS = add_cors

    @property
    def IsStarted(self) -> bool:
        return self.is_started


def _log_id(session: Session) -> str:
    """A simplew.v1 session id is a bearer secret: the log shows a digest of it."""
    return log_id(session.id) if session.v1 else session.id


def _peer(session: Session) -> str:
    address = session.remote_address
    return f"{address[0]}:{address[1]}" if address else "-"


def _controllers_and_path(path_or_controller: str | type[Controller], path: str | None,
                          default: str) -> tuple[list[type[Controller]] | None, str]:
    """``(Cls, "/p")`` → ([Cls], "/p"); ``("/p")`` → (None: every controller, "/p")."""
    controllers = None
    if isinstance(path_or_controller, type):
        if not issubclass(path_or_controller, Controller):
            raise TypeError(f"{path_or_controller.__name__} is not a Controller subclass")
        controllers = [path_or_controller]
        target = path or default
    else:
        target = path_or_controller
    return controllers, "/" + target.strip("/")


def _reply(session: Session, result: Any) -> None:
    """Send a handler's return value: str as TEXT, bytes as BINARY, else JSON."""
    if isinstance(result, str):
        session.send_text(result)
    elif isinstance(result, (bytes, bytearray, memoryview)):
        session.send_binary(result)
    else:
        session.send_text(json.dumps(result, default=_json_default))


def _json_default(value: Any) -> Any:
    """JSON for what handlers commonly return: dataclasses, UUIDs, datetimes, enums."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)
