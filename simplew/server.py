"""``SimpleWServer``: one port for static files, REST controllers and WebSocket endpoints.

The server is a facade: it holds the configuration (:class:`ServerOptions`),
what the application registers, and the lifecycle (``start``, ``run``,
``serve``, ``stop``). Each concern lives in its own module, and the lower
layers get a :class:`~simplew._fast.context.ServerContext`, never the server:

- :mod:`simplew.options` — every setting, validated;
- :mod:`simplew.sessions` — connect/disconnect hooks, session logging, presence;
- :mod:`simplew.broadcast` — multicast and rooms, locally and through Redis;
- :mod:`simplew.answers` — the answer to a plain HTTP request (operations
  endpoints, REST, static files, CORS);
- :mod:`simplew.endpoints` — WebSocket endpoints, compiled at start.

docs/architecture.md shows how a request and a multicast flow through them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from simplew import browser as _browser
from simplew import metrics as _metrics
from simplew._fast.admission import Admission, OriginPolicy
from simplew._fast.connection import Endpoint, Flusher, WebSocketConnection, check_room
from simplew._fast.context import HttpLimits, HttpStats, ServerContext
from simplew._fast.heartbeat import Heartbeat
from simplew._fast.http import HttpProtocol
from simplew._fast.hub import Hub
from simplew.admin import admin_routes
from simplew.answers import HttpAnswers
from simplew.api import ServerApi
from simplew.auth import JwtAuth
from simplew.broadcast import Broadcast
from simplew.controller import Controller
from simplew.endpoints import SLOW_CLIENT_POLICIES, WebSocketSpec, controllers_and_path
from simplew.endpoints import json_default as _json_default
from simplew.options import ServerOptions
from simplew.recovery import Position, Recovery
from simplew.registry import Registry
from simplew.rest import Cors, DynamicSpec, compile_router
from simplew.sessions import Sessions
from simplew.sessions import access_log as _access_log
from simplew.sse import RoomsHook, SseContent
from simplew.static import StaticFiles
from simplew.stream import Unavailable
from simplew.tokens import Credentials

try:
    import uvloop
except ImportError:  # Windows: the stdlib loop
    uvloop = None  # type: ignore[assignment]

try:
    import aiofastnet
except ImportError:
    aiofastnet = None  # type: ignore[assignment]

log = logging.getLogger("simplew")
Response = tuple[int, list[tuple[str, str]], bytes]
Session = WebSocketConnection

DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
REDIS_EXTRA = "pip install 'simplew[redis]'"  # what redis_url needs that is not installed

__all__ = [
    "SimpleWServer",
    "ServerOptions",
    "Session",
    "Response",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "REDIS_EXTRA",
    "SLOW_CLIENT_POLICIES",
]


class _Option:
    """A server attribute that is one field of ``server.options``."""

    def __init__(self, field: str | None = None) -> None:
        self.field = field or ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.field = self.field or name

    def __get__(self, server: Any, owner: type | None = None) -> Any:
        if server is None:
            return self
        return getattr(server.options, self.field)

    def __set__(self, server: Any, value: Any) -> None:
        setattr(server.options, self.field, value)


class SimpleWServer:
    """A web server serving static files, controllers and WebSockets on one port.

    ``start()`` serves from a background thread and returns; ``run()`` blocks;
    ``await serve()`` serves inside a running event loop until ``stop()``.
    """

    # settings read when the server starts (see simplew.options for each)
    host = _Option()
    port = _Option()
    ssl = _Option()
    shutdown_grace = _Option()
    max_message_size = _Option()
    max_write_buffer = _Option()
    slow_client_policy = _Option()
    compression = _Option()
    compression_level = _Option()
    redis_url = _Option()
    recovery_enabled = _Option("recovery")
    recovery_window = _Option()
    history_size = _Option()
    history_bytes = _Option()
    history_ttl = _Option()
    max_rooms_per_session = _Option()
    max_sse_rooms = _Option()
    sse_heartbeat = _Option()
    wait_replicas = _Option()
    publish_timeout = _Option()
    admin_path = _Option()
    admin_token = _Option()
    registry_ttl = _Option()

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 2015,
        *,
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
        redis_url: str | list[str] | None = None,
        recovery: bool = False,
        recovery_window: float = 120.0,
        history_size: int = 10_000,
        history_bytes: int = 64 << 20,
        history_ttl: float = 300.0,
        wait_replicas: int = 0,
        publish_timeout: float = 10.0,
        max_rooms_per_session: int = 128,
        max_sse_rooms: int = 16,
        sse_heartbeat: float = 15.0,
        healthz: bool = True,
        metrics: bool = False,
        access_log: bool = True,
        admin_path: str | None = None,
        admin_token: str | None = None,
        registry_ttl: float = 10.0,
        allowed_origins: list[str] | None = None,
        max_connections: int | None = None,
        max_connections_per_ip: int | None = None,
        forwarded_allow_ips: list[str] | None = None,
        proxy_protocol: bool = False,
        token_grace: float = 30.0,
        api_path: str | None = None,
        api_token: str | None = None,
    ) -> None:
        """Every parameter is a field of :class:`~simplew.options.ServerOptions`,
        documented there (and in docs/configuration.md); a value that cannot
        work raises :class:`ValueError`."""
        settings = dict(locals())
        del settings["self"]
        self.options = options = ServerOptions(**settings)
        # connection limits and allowed WebSocket origins (docs/security.md)
        self.admission = Admission(max_connections, max_connections_per_ip, allowed_origins)
        self.limits = HttpLimits(
            max_body_size,
            max_header_size,
            idle_timeout=idle_timeout,
            header_timeout=header_timeout,
            admission=self.admission,
        )
        self.hub = Hub(options.max_rooms_per_session)
        # pings every client each ping_interval, drops those silent for ping_timeout (None: off)
        self.heartbeat = (
            None if ping_interval is None else Heartbeat(self.hub, ping_interval, ping_timeout)
        )
        self.http_stats = HttpStats()
        # what the lower layers get instead of this object (simplew._fast.context)
        self.context = context = ServerContext(self, self.hub, self.limits, self.http_stats)
        context.picows_options = {
            "handshake_timeout": handshake_timeout,
            "heartbeat": self.heartbeat,
            "read_buffer_size": read_buffer_size,
        }
        self._sessions = Sessions(context)
        self.credentials = Credentials(context, options.token_grace)
        self._resume_room_hooks: list[Callable[[Session, str], bool]] = []
        self._broadcast = Broadcast(context)
        self._answers = HttpAnswers(context)
        # this process in the deployment's registry (the admin page, the API's info)
        self.registry = Registry(self)
        self.access_log = options.access_log
        self._ws_specs: list[WebSocketSpec] = []
        self._dynamic: list[DynamicSpec] = []
        self._inline_routes: list[tuple[str, str, Callable[..., Any]]] = []
        self._api: ServerApi | None = None  # the server API, made at start (api_path)
        if options.healthz:
            self.enable_healthz()
        if options.metrics:
            self.enable_metrics()
        # lifecycle
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id: int | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        picows_log = logging.getLogger("simplew.picows")
        if picows_log.level == logging.NOTSET:
            picows_log.setLevel(logging.WARNING)

    @property
    def access_log(self) -> bool:
        """One INFO line per request and WebSocket connect/disconnect on ``simplew.access``."""
        return self.options.access_log

    @access_log.setter
    def access_log(self, value: bool) -> None:
        self.options.access_log = value
        self.context.access_log = _access_log if value else None

    @property
    def jwt_auth(self) -> JwtAuth | None:
        """The JWT validator of :meth:`set_token`, or None."""
        auth: JwtAuth | None = self.context.jwt_auth
        return auth

    @property
    def recovery(self) -> Recovery | None:
        """The simplew.v2 sessions of this process (:mod:`simplew.recovery`) once
        started with ``recovery=True``, else None."""
        recovery: Recovery | None = self.context.recovery
        return recovery

    @property
    def backplane(self) -> Any:
        """The Redis link of a running server with ``redis_url``: a
        :class:`simplew.stream.RedisStream` with recovery, else a
        :class:`simplew.backplane.RedisBackplane`; None without Redis."""
        return self._broadcast.backplane

    @property
    def _http_connections(self) -> set[HttpProtocol]:
        return self.context.http_connections

    @property
    def _use_aiofastnet(self) -> bool:
        return self.options.use_aiofastnet and aiofastnet is not None

    # -- registration -----------------------------------------------------------

    def add_static_content(
        self, path: str, prefix: str = "/", timeout: float | None = None, **cache: Any
    ) -> StaticFiles:
        """Serve the files of directory ``path`` under URL ``prefix``
        (``cache``: ``cache_max_file``, ``cache_budget``, ``dotfiles``,
        ``allow_system_root`` of :class:`StaticFiles`).

        Paths with a segment starting with ``.`` (but ``.well-known``) get 404
        unless ``dotfiles=True``; a system directory (``/``, ``/etc``, the home
        directory, ...) raises ValueError unless ``allow_system_root=True``;
        nothing under ``/proc`` or ``/sys`` is ever served.
        """
        static = StaticFiles(path, prefix, timeout, **cache)
        self._answers.add_static(static)
        return static

    def add_websocket_content(
        self,
        path_or_controller: str | type[Controller] = "/websocket",
        path: str | None = None,
        *,
        on_message: Callable[..., Any] | None = None,
        max_message_size: int | None = None,
        compression: bool | None = None,
        allowed_origins: list[str] | None = None,
    ) -> None:
        """Open a WebSocket endpoint.

        ``add_websocket_content("/websocket")`` routes messages to the WEBSOCKET
        methods of every Controller subclass; ``add_websocket_content(Cls, "/ws")``
        to one class; ``on_message=fn`` gives each raw message to
        ``fn(session, data)`` instead (``str`` for TEXT, ``bytes`` for BINARY).
        ``compression`` turns permessage-deflate on or off for this endpoint
        (default: the server's ``compression``). ``allowed_origins`` replaces the
        server's ``allowed_origins`` for this endpoint.
        """
        controllers, endpoint_path = controllers_and_path(path_or_controller, path, "/websocket")
        if any(spec.path == endpoint_path for spec in self._ws_specs):
            raise ValueError(f"a WebSocket endpoint is already at {endpoint_path}")
        if allowed_origins is not None:
            self.admission.endpoint_origins[endpoint_path] = OriginPolicy(allowed_origins)
        self._ws_specs.append(
            WebSocketSpec(
                endpoint_path,
                controllers,
                on_message,
                max_message_size or self.max_message_size,
                compression,
            )
        )

    def add_sse_content(
        self,
        path: str = "/events",
        rooms: RoomsHook | None = None,
        *,
        allowed_origins: list[str] | None = None,
    ) -> SseContent:
        """Serve Server-Sent Events at ``path`` (:mod:`simplew.sse`): ``GET
        path?room=a&room=b`` streams the broadcast stream's publications and those
        of the rooms ``rooms(request, claims)`` allows (sync or async; None: every
        room asked for), resumable from ``Last-Event-ID`` with ``recovery=True``.
        ``allowed_origins`` replaces the server's for this path."""
        if not path.startswith("/"):
            raise ValueError(f"an SSE path starts with '/': {path!r}")
        path = path if path == "/" else path.rstrip("/")
        if path in self._answers.streams:
            raise ValueError(f"an SSE endpoint is already at {path}")
        if allowed_origins is not None:
            self.admission.endpoint_origins[path] = OriginPolicy(allowed_origins)
        content = SseContent(path, self.context, rooms)  # settings applied at start
        self._answers.streams[path] = content
        return content

    def on_connect(self, callback: Callable[[Session], Any]) -> Callable[[Session], Any]:
        """Call ``callback(session)`` when a WebSocket client connects (usable as a decorator)."""
        self._sessions.on_connect.append(callback)
        return callback

    def on_disconnect(self, callback: Callable[[Session], Any]) -> Callable[[Session], Any]:
        """Call ``callback(session)`` when a WebSocket client is gone."""
        self._sessions.on_disconnect.append(callback)
        return callback

    def on_session_end(self, callback: Callable[[str], Any]) -> Callable[[str], Any]:
        """With recovery: call ``callback(session_id)`` when a simplew.v2 session
        ends for good, ``recovery_window`` seconds after its last connection
        closed without a reconnect (in the process it last closed in)."""
        self._sessions.on_session_end.append(callback)
        return callback

    def on_resume_room(
        self, callback: Callable[[Session, str], bool]
    ) -> Callable[[Session, str], bool]:
        """With recovery: ``callback(session, room)`` decides, for each room of a
        session being resumed, whether the session gets it back (the session's
        ``user`` is already the resuming connection's, checked to be the same). A
        room refused (False, or the callback raises) is not joined, its missed
        publications are not sent, and the welcome lists it under ``"left"``.
        Called on the loop thread, synchronously (usable as a decorator)."""
        self._resume_room_hooks.append(callback)
        return callback

    def set_token(
        self,
        key: Any,
        *,
        algorithms: Any = ("HS256",),
        issuer: str | None = None,
        audience: Any = None,
        leeway: float = 0.0,
        options: dict[str, Any] | None = None,
    ) -> JwtAuth:
        """Validate JWTs on WebSocket messages with ``key`` (SimpleW's ``SetToken``).

        Routes of controllers marked ``require_jwt`` then answer only messages
        with a valid token, and every controller sees the claims as ``self.jwt``.
        Needs PyJWT (``pip install 'simplew[jwt]'``); see :mod:`simplew.auth`.
        """
        auth = JwtAuth(
            key, algorithms, issuer=issuer, audience=audience, leeway=leeway, options=options
        )
        self.context.jwt_auth = auth  # read at each use: takes effect while serving
        return auth

    def SetToken(self, key: Any, issuer: str | None = None) -> JwtAuth:
        return self.set_token(key, issuer=issuer)

    def add_dynamic_content(
        self, path_or_controller: str | type[Controller] = "/", path: str | None = None
    ) -> None:
        """Serve REST controllers under ``path`` (SimpleW's ``AddDynamicContent``).

        ``add_dynamic_content("/api")`` routes HTTP requests to the non-WEBSOCKET
        methods (``@route("GET", "/users/{id}")``...) of every Controller subclass;
        ``add_dynamic_content(Cls, "/api")`` to one class. See :mod:`simplew.rest`.
        """
        controllers, prefix = controllers_and_path(path_or_controller, path, "/")
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
        if self._server is not None:  # added while serving: recompile now
            self._compile_router()

    def add_cors(
        self,
        origin: str | list[str] = "*",
        methods: str | list[str] | None = None,
        headers: str | list[str] | None = None,
        credentials: bool = False,
        max_age: int | None = None,
        expose_headers: str | list[str] | None = None,
    ) -> Cors:
        """Answer CORS preflights and add Access-Control-* headers (SimpleW's ``AddCORS``).

        ``origin``: ``"*"``, one origin or a list (the request's Origin is then
        echoed when allowed, with ``Vary: Origin``). ``methods`` / ``headers``
        default to the usual methods / the headers the preflight asks for.
        """
        self._answers.cors = Cors(origin, methods, headers, credentials, max_age, expose_headers)
        return self._answers.cors

    def enable_healthz(self, path: str = "/healthz") -> None:
        """``GET path`` → 200 ``{"status":"ok"}`` (on by default; ``healthz=False`` turns it off)."""
        self._answers.ops[path] = lambda: _metrics.HEALTHY

    def enable_metrics(self, path: str = "/metrics") -> None:
        """``GET path`` → Prometheus text metrics (also ``SimpleWServer(metrics=True)``)."""
        self._answers.ops[path] = lambda: _metrics.metrics_response(self)

    # -- multicast and sessions ---------------------------------------------------

    def multicast_text(self, text: str, room: str | None = None) -> None:
        """Send ``text`` to every connected WebSocket client, or to the members of
        ``room`` (``session.join(room)``); safe from any thread. With a Redis
        backplane the clients of every other process get it too. A room name must
        be 1 to 255 bytes of UTF-8 (ValueError)."""
        self._multicast(1, text.encode("utf-8"), room)

    def multicast_binary(self, data: bytes, room: str | None = None) -> None:
        """Send ``data`` to every connected WebSocket client, or to ``room``; any thread."""
        self._multicast(2, bytes(data), room)

    def _multicast(self, opcode: int, payload: bytes, room: str | None = None) -> None:
        """To the loop thread, then :meth:`simplew.broadcast.Broadcast.publish`
        (nothing before the server has started)."""
        if room is not None:
            if not isinstance(room, str):
                raise TypeError(f"room must be a str, not {type(room).__name__}")
            check_room(room)  # ValueError: not a room name
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread_id:
            self._broadcast.publish(opcode, payload, room)
        else:
            self._loop.call_soon_threadsafe(self._broadcast.publish, opcode, payload, room)

    async def publish(self, data: str | bytes, room: str | None = None) -> Position | None:
        """Multicast ``data`` (``str``: TEXT, bytes: BINARY) to everyone or to
        ``room``, and return once it is stored where recovery reads it: its
        :class:`~simplew.recovery.Position` (with Redis, once Redis stored it).
        None without recovery (the multicast is sent, and not stored).
        Raises :class:`~simplew.stream.Unavailable` when Redis cannot store it
        now, or has not within ``publish_timeout`` seconds. Call it in the server's loop."""
        if room is not None:
            if not isinstance(room, str):
                raise TypeError(f"room must be a str, not {type(room).__name__}")
            check_room(room)
        if self._loop is None:
            raise RuntimeError("the server is not started")
        if isinstance(data, str):
            opcode, payload = 1, data.encode("utf-8")
        else:
            opcode, payload = 2, bytes(data)
        placed = self._broadcast.publish(opcode, payload, room, True)
        if placed is None:
            return None
        if isinstance(placed, tuple):
            return Position(room, placed[0], placed[1])
        timeout = self.publish_timeout
        try:  # shielded: the publication stays queued, in order, whatever this caller does
            epoch, offset = await asyncio.wait_for(asyncio.shield(placed), timeout)
        except asyncio.TimeoutError:
            raise Unavailable(
                f"Redis did not store the publication within {timeout:g} s; "
                "it may still be stored and delivered"
            ) from None
        return Position(room, epoch, offset)

    @property
    def sessions(self) -> list[Session]:
        """The connected WebSocket sessions."""
        return self.hub.sessions()

    @property
    def sse_endpoints(self) -> list[SseContent]:
        """The Server-Sent Events paths (:meth:`add_sse_content`)."""
        return list(self._answers.streams.values())

    def room_sessions(self, room: str) -> list[Session]:
        """The sessions of this process in ``room``."""
        return self.hub.room_sessions(room)

    @property
    def rooms(self) -> dict[str, int]:
        """{room: number of this process's sessions in it}, for rooms with members."""
        return self.hub.rooms()

    def presence(self, room: str) -> list[dict[str, Any]]:
        """Who is in ``room``: ``[{"client": public id, "user": JWT sub or None}]``,
        sorted by public id. The public id is a digest (the one the logs show): it
        grants nothing, and no session id ever appears here. With ``recovery=True``
        and ``redis_url``, every process sharing Redis (as synced there, within a
        second); otherwise this process. Any thread but the loop's when Redis is
        used: there, ``await server.presence_async(room)``."""
        if self._sessions.presence_store() is None:
            return self._sessions.local_presence(room)
        loop = self._loop
        if loop is None:
            raise RuntimeError("the server is not running")
        if threading.get_ident() == self._loop_thread_id:
            raise RuntimeError("on the loop thread, use: await server.presence_async(room)")
        return asyncio.run_coroutine_threadsafe(self.presence_async(room), loop).result(10)

    async def presence_async(self, room: str) -> list[dict[str, Any]]:
        """:meth:`presence`, awaitable on the server's loop."""
        return await self._sessions.presence(room)

    def find_session(self, session_id: str) -> Session | None:
        return self.hub.find(session_id)

    def disconnect_all(self, code: int = 1001, reason: str = "server going away") -> None:
        for session in self.sessions:
            session.close(code, reason)

    # -- what the HTTP front calls (through the context) -------------------------

    def endpoint_for(self, path: str) -> Endpoint | None:
        """The WebSocket endpoint at ``path``, once started (or compiled)."""
        return self.context.endpoint_for(path)

    @property
    def http_handler(self) -> Callable[[Any], Any]:
        """The answer to a plain HTTP request: ``http_handler(request)`` →
        ``(status, headers, body)`` or an awaitable of it (:mod:`simplew.answers`).
        A subclass may override it with a method."""
        return self._answers.answer

    # -- lifecycle --------------------------------------------------------------

    def _compile(self) -> None:
        """Fill the context and compile routes and endpoints (at start)."""
        context = self.context
        context.http_handler = self.http_handler
        context.session_opened = self._sessions.opened
        context.session_closed = self._sessions.closed
        context.identify = self.credentials.identify
        context.protocol_message = self.credentials.protocol_message
        api_path = self.options.api_path
        if api_path is not None and (self._api is None or self._api.path != api_path):
            self._api = ServerApi(self, api_path, self.options.api_token or "")
        self._compile_router()
        self._flusher = Flusher()
        if self._ws_specs:
            self._answers.ops.setdefault(_browser.PATH, _browser.response)
        if self.options.admin_path is not None:
            self.options.validate()  # an admin_path set alone has no token: refused
            self._answers.handlers.update(admin_routes(self, self.admin_path, self.admin_token))
        recovery = None
        if self.recovery_enabled:
            recovery = Recovery(
                context,
                self.recovery_window,
                self.history_size,
                self.history_bytes,
                self.history_ttl,
            )
            recovery.on_session_end = self._sessions.on_session_end
            recovery.on_resume_room = self._resume_room_hooks
        context.recovery = recovery
        context.endpoints = {
            spec.path: spec.compile(context, self.options, self._flusher) for spec in self._ws_specs
        }
        for stream in self._answers.streams.values():
            stream.max_write_buffer = self.max_write_buffer
            stream.heartbeat = self.sse_heartbeat
            stream.max_rooms = self.max_sse_rooms
            stream.flusher = self._flusher

    def _compile_router(self) -> None:
        routes = list(self._inline_routes)
        if self._api is not None:
            routes.append(("POST", self._api.route, self._api.handle))
        self._answers.router = compile_router(self._dynamic, routes, self.context, _json_default)

    @property
    def _router(self) -> Any:
        return self._answers.router

    def _protocol(self) -> HttpProtocol:
        return HttpProtocol(self.context)

    async def listen(self) -> None:
        """Start listening in the running loop and return once the port is bound."""
        if self._server is not None:
            raise RuntimeError("server is already started")
        if self.redis_url and importlib.util.find_spec("redis") is None:  # before binding
            raise ImportError(f"redis_url needs the Redis client: {REDIS_EXTRA}")
        # trusted proxies (simplew._fast.proxy), from the options as they are now
        self.context.proxies = self.options.proxy_policy()
        self._compile()
        loop = asyncio.get_running_loop()
        options: dict[str, Any] = {
            "backlog": self.options.backlog,
            "reuse_address": True,
            "ssl": self.ssl,
        }
        if self.options.reuse_port:
            options["reuse_port"] = True
        if self._use_aiofastnet:
            server = await aiofastnet.create_server(
                loop, self._protocol, self.host, self.port, **options
            )
        else:
            server = await loop.create_server(self._protocol, self.host, self.port, **options)
        self._server = server
        self._loop = loop
        self._loop_thread_id = threading.get_ident()
        self._stopped = asyncio.Event()
        if self.port == 0:
            self.port = server.sockets[0].getsockname()[1]
        if self.recovery is not None:
            self.recovery.start()
        if self.redis_url and self.recovery is not None:
            from simplew.stream import RedisStream

            stream = RedisStream(
                self.redis_url,
                self.recovery,
                history_ttl=self.history_ttl,
                wait_replicas=self.wait_replicas,
            )
            self._broadcast.backplane = self.recovery.store = stream
            stream.start()  # one stream for every process sharing Redis
        elif self.redis_url:
            from simplew.backplane import RedisBackplane

            self._broadcast.backplane = RedisBackplane(self.redis_url, self._broadcast.fan_out)
            self._broadcast.backplane.start()  # connects in the background, retrying
        self.registry.start(self.redis_url, self.registry_ttl)
        if self._api is not None:
            self._api.start()
        log.info(
            "simplew listening on %s://%s:%d/",
            "https" if self.ssl else "http",
            self.host,
            self.port,
        )

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
        server.close()  # stop accepting
        for conn in list(self._http_connections):
            conn.shutdown()
        for session in self.sessions:
            session.close(1001, "server shutting down")
        deadline = asyncio.get_running_loop().time() + self.shutdown_grace
        while len(self.hub) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)  # clients answer the CLOSE, buffers drain
        for session in self.sessions:
            session.abort()
        await self.registry.close()
        for stream in self._answers.streams.values():
            stream.stop()
        if self._api is not None:
            await self._api.close()
        if self.backplane is not None:
            await self.backplane.close()  # its counters stay readable
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
