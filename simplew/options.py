"""``ServerOptions``: every setting of a server, validated in one place.

``SimpleWServer(host, port, **settings)`` and ``simplew serve`` both fill one
:class:`ServerOptions`; a value that cannot work raises :class:`ValueError`
(the CLI prints it as ``simplew: error: ...``). Each field's default is the
constructor's. docs/configuration.md lists every field with its CLI option
and environment variable.

Most settings are read when the server starts (``start``, ``run``,
``listen``); the HTTP limits, timeouts, connection limits, origins, pings and
the ``healthz``/``metrics`` switches are applied when the server is built
(change them afterwards through ``server.limits`` and ``server.admission``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

SLOW_CLIENT_POLICIES = ("close", "skip")


@dataclasses.dataclass
class ServerOptions:
    """The settings of one :class:`~simplew.SimpleWServer`."""

    host: str = "0.0.0.0"
    """Address to bind: ``"0.0.0.0"`` every IPv4 address, ``"::"`` IPv6, ``"127.0.0.1"`` local only."""
    port: int = 2015
    """TCP port; 0 picks a free one (``server.port`` tells which once started)."""

    # -- messages and requests -------------------------------------------------
    max_message_size: int = 1 << 20
    """Largest WebSocket message in bytes, after reassembly and inflation: a bigger one
    closes the connection with 1009. ``add_websocket_content`` may set its own."""
    max_body_size: int = 1 << 20
    """Largest HTTP request body in bytes (413 beyond it)."""
    max_header_size: int = 16384
    """Bytes of HTTP header fields a request may send (431 beyond it)."""
    read_buffer_size: int = 2048
    """Bytes picows reads into at first for a WebSocket connection (its buffer grows as needed)."""

    # -- timeouts (seconds) ------------------------------------------------------
    idle_timeout: float | None = 60.0
    """A keep-alive HTTP connection with no request in progress is closed after this; a body
    that stalls this long gets 408. None or 0: never."""
    header_timeout: float | None = 30.0
    """A request's line and headers must be complete this long after its first byte (else
    408). None or 0: no limit."""
    handshake_timeout: float = 10.0
    """A WebSocket upgrade picows has not completed within this is dropped."""
    ping_interval: float | None = 20.0
    """Every WebSocket client is pinged this often; None: no pings."""
    ping_timeout: float = 20.0
    """A client that answers nothing (pong or message) this long after a ping is closed (1011)."""
    shutdown_grace: float = 5.0
    """On ``stop()`` or SIGTERM: how long clients get to answer the close 1001 and drain."""

    # -- the listening socket ----------------------------------------------------
    backlog: int = 4096
    """Connections the kernel queues before ``accept`` (``listen(2)``'s backlog)."""
    reuse_port: bool = False
    """Bind with ``SO_REUSEPORT``, so that several processes share the port (``--workers``)."""
    ssl: Any = None
    """An ``ssl.SSLContext``: serve HTTPS and WSS on the port; None: plain TCP."""
    use_aiofastnet: bool = False
    """Run the sockets (TLS included) on aiofastnet's transports instead of the loop's own;
    ignored when aiofastnet is not installed."""

    # -- fan-out -----------------------------------------------------------------
    max_write_buffer: int = 1 << 20
    """Bytes that may wait unsent for one WebSocket client; past it ``slow_client_policy``
    applies. 0: no limit."""
    slow_client_policy: str = "close"
    """``"close"``: a client past ``max_write_buffer`` is closed with 1008; ``"skip"``: it
    misses messages until it has drained."""
    compression: bool = False
    """Negotiate permessage-deflate on WebSocket endpoints (each may override it)."""
    compression_level: int = 1
    """zlib level of compressed frames, -1 (zlib's default) or 0 to 9."""

    # -- processes and recovery -------------------------------------------------
    redis_url: str | list[str] | None = None
    """The Redis deployment the processes share (needs ``simplew[redis]``):
    ``redis://``, ``rediss://`` or ``unix://`` URL (one instance); several of them
    (a list, or one comma-separated string): client-side shards, a room's shard
    by jump hash of the FNV-1a of its name, the same list for every process;
    ``redis+cluster://host:port[,host:port...]``: a Redis Cluster (sharded
    pub/sub); ``redis+sentinel://host:port[,host:port...]/service_name[/db]``: the
    master the Sentinels name, followed through failovers."""
    recovery: bool = False
    """``simplew.v2`` sessions survive disconnects and get back what they missed
    (docs/protocol.md)."""
    recovery_window: float = 120.0
    """Seconds a ``simplew.v2`` session can be resumed after its connection is gone."""
    history_size: int = 10_000
    """Publications kept for recovery, per stream (each room has one, and the
    multicasts to everyone form one more)."""
    history_bytes: int = 64 << 20
    """Bytes of encoded publications kept for recovery in memory, all streams
    together; the least recently published streams lose their oldest first."""
    history_ttl: float = 300.0
    """Seconds a publication stays recoverable (in memory and in Redis)."""
    wait_replicas: int = 0
    """With recovery and Redis: a publication is delivered, and ``server.publish``
    returns, only once this many replicas of its shard have it (Redis ``WAIT``), so a
    failover to one of them loses no acknowledged publication; publications wait while
    fewer replicas answer. 0: no waiting. Not with a Redis Cluster."""
    publish_timeout: float = 10.0
    """With recovery and Redis: seconds ``server.publish`` (and ``--publish``, the admin
    page's box) waits for Redis to store a publication; past it the answer is
    :class:`~simplew.stream.Unavailable` (HTTP 503 with ``Retry-After``), and the
    publication, still queued, may yet be stored and delivered."""
    max_rooms_per_session: int = 128
    """Rooms a session may be in at once; a join past it is refused (0: no limit)."""
    max_sse_rooms: int = 16
    """Rooms one Server-Sent Events request may follow; those past it are left out
    (named in its ``event: left``). Every event id carries a position per room."""
    sse_heartbeat: float = 15.0
    """Seconds between the ``: ping`` comments of an event stream (proxies keep it open)."""

    # -- operations --------------------------------------------------------------
    healthz: bool = True
    """``GET /healthz`` answers 200 ``{"status":"ok"}``."""
    metrics: bool = False
    """``GET /metrics`` answers Prometheus text (docs/operations.md)."""
    access_log: bool = True
    """One INFO line per HTTP request and WebSocket connect/disconnect on ``simplew.access``."""
    admin_path: str | None = None
    """Serve the live admin page at this path (docs/operations.md); needs ``admin_token``.
    None: no admin page."""
    admin_token: str | None = None
    """The bearer token the admin page's data and publish box need (compared in
    constant time); printable ASCII without spaces."""
    registry_ttl: float = 10.0
    """With ``redis_url``: seconds a process stays in the deployment's registry
    (:mod:`simplew.registry`) after its last write; it writes every second."""

    # -- who gets in -------------------------------------------------------------
    allowed_origins: list[str] | None = None
    """Origins that may open a WebSocket (``https://example.com``, ``https://*.example.com``);
    None: any. A request without ``Origin`` (not a browser) is always let in."""
    max_connections: int | None = None
    """Open connections, HTTP and WebSocket, beyond which new ones get 503; None: no limit."""
    max_connections_per_ip: int | None = None
    """The same limit per client address; None: no limit."""
    forwarded_allow_ips: list[str] | None = None
    """Trusted proxies: addresses, CIDR networks or ``"*"``. From these peers only, a
    request's client is the right-most untrusted address of ``Forwarded`` (``for=``) or
    ``X-Forwarded-For``; None: those headers are never read (docs/operations.md)."""
    proxy_protocol: bool = False
    """Every connection starts with a PROXY protocol header (v1 or v2) from a peer in
    ``forwarded_allow_ips``, which names the client; else it is closed. Plain TCP only:
    terminate TLS at the balancer."""
    token_grace: float = 30.0
    """Seconds a connection whose JWT expired keeps its access: a ``simplew.v2`` client is
    asked to refresh its token in that time, then closed with 4001 (:mod:`simplew.tokens`)."""

    # -- the server API (simplew.api, docs/api.md) -------------------------------
    api_path: str | None = None
    """Serve the server API (JSON over ``POST <api_path>/<method>``: publish, broadcast,
    presence, history, disconnect, join, leave, info) under this path; needs
    ``api_token``. None: no API."""
    api_token: str | None = dataclasses.field(default=None, repr=False)
    """The bearer token every API request must carry (``Authorization: Bearer <token>``,
    compared in constant time)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ValueError` naming the first setting that cannot work."""
        if not isinstance(self.host, str):
            raise ValueError(f"host must be a str, not {type(self.host).__name__}")
        _int("port", self.port, 0, 65535)
        for name in ("max_message_size", "max_body_size", "max_header_size", "read_buffer_size"):
            _int(name, getattr(self, name), 1)
        for name in (
            "backlog",
            "max_write_buffer",
            "history_size",
            "history_bytes",
            "max_rooms_per_session",
            "wait_replicas",
        ):
            _int(name, getattr(self, name), 0)
        for name in ("idle_timeout", "header_timeout"):
            if getattr(self, name) is not None:
                _seconds(name, getattr(self, name), 0.0)
        _seconds("history_ttl", self.history_ttl, 0.0, positive=True)
        _seconds("publish_timeout", self.publish_timeout, 0.0, positive=True)
        _int("max_sse_rooms", self.max_sse_rooms, 1)
        _seconds("sse_heartbeat", self.sse_heartbeat, 0.0, positive=True)
        if self.ping_interval is not None:
            _seconds("ping_interval", self.ping_interval, 0.0, positive=True)
        _seconds("ping_timeout", self.ping_timeout, 0.0, positive=True)
        _seconds("handshake_timeout", self.handshake_timeout, 0.0, positive=True)
        _seconds("shutdown_grace", self.shutdown_grace, 0.0)
        _seconds("recovery_window", self.recovery_window, 0.0)
        _seconds("token_grace", self.token_grace, 0.0)
        _seconds("registry_ttl", self.registry_ttl, 0.0, positive=True)
        _check_admin(self.admin_path, self.admin_token)
        if self.slow_client_policy not in SLOW_CLIENT_POLICIES:
            raise ValueError(f"slow_client_policy must be one of {sorted(SLOW_CLIENT_POLICIES)}")
        _int("compression_level", self.compression_level, -1, 9)
        if self.redis_url is not None:
            if not isinstance(self.redis_url, (str, list, tuple)):
                raise ValueError(
                    f"redis_url must be a str or a list, not {type(self.redis_url).__name__}"
                )
            from simplew.engines import parse_redis_urls

            parse_redis_urls(self.redis_url)  # ValueError if malformed
        if self.api_token is not None and (
            not isinstance(self.api_token, str) or not self.api_token
        ):
            raise ValueError("api_token must be a non-empty str")
        if self.api_path is not None:
            if not isinstance(self.api_path, str) or not self.api_path.startswith("/"):
                raise ValueError(
                    f"api_path must be a path starting with '/', not {self.api_path!r}"
                )
            if self.api_token is None:
                raise ValueError("api_path needs api_token: the API is never served without one")
        for name in ("max_connections", "max_connections_per_ip"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name), 1)
        self.proxy_policy()  # ValueError if forwarded_allow_ips or proxy_protocol cannot work

    def proxy_policy(self) -> Any:
        """The :class:`~simplew._fast.proxy.ProxyPolicy` of ``forwarded_allow_ips`` and
        ``proxy_protocol``, or None when no proxy is trusted."""
        from simplew._fast.proxy import ProxyPolicy

        if not isinstance(self.proxy_protocol, bool):
            raise ValueError(f"proxy_protocol must be a bool, not {self.proxy_protocol!r}")
        if self.forwarded_allow_ips is None:
            if self.proxy_protocol:
                raise ValueError(
                    "proxy_protocol needs forwarded_allow_ips: the balancer's addresses, or '*'"
                )
            return None
        if self.proxy_protocol and self.ssl is not None:
            raise ValueError("proxy_protocol is for plain TCP: terminate TLS at the balancer")
        return ProxyPolicy(self.forwarded_allow_ips, self.proxy_protocol)

    def replace(self, **changes: Any) -> ServerOptions:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def _check_admin(path: Any, token: Any) -> None:
    if path is None:
        return
    if not isinstance(path, str) or not path.startswith("/") or path.endswith("/"):
        raise ValueError(f"admin_path must start with '/' and not end with it, not {path!r}")
    if any(c in path for c in "?#") or any(ord(c) <= 32 or ord(c) == 127 for c in path):
        raise ValueError(f"admin_path must be a plain path, not {path!r}")
    if not isinstance(token, str) or not token.strip():
        raise ValueError("admin_path needs admin_token: the admin page's data is behind a token")
    if any(not 33 <= ord(c) <= 126 for c in token):
        raise ValueError(
            "admin_token must be printable ASCII without spaces (an HTTP header value)"
        )


def _int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {bounds}, not {value!r}")


def _seconds(name: str, value: Any, low: float, *, positive: bool = False) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < low
        or (positive and value <= 0)
    ):
        need = "a finite number > 0" if positive else f"a finite number >= {low:g}"
        raise ValueError(f"{name} must be {need} of seconds, not {value!r}")
