from collections.abc import Callable
from typing import Any

from typing_extensions import disjoint_base

from simplew._fast.admission import Admission
from simplew._fast.connection import Endpoint, WebSocketConnection
from simplew._fast.proxy import ProxyPolicy

@disjoint_base
class HttpLimits:
    """Size limits and timeouts of the HTTP layer, set by the server facade."""

    admission: Admission | None
    max_body_size: int
    max_header_size: int
    max_url_size: int
    idle_timeout: float | None
    header_timeout: float | None
    linger_timeout: float | None
    def __init__(
        self,
        max_body_size: int = ...,
        max_header_size: int = ...,
        max_url_size: int = ...,
        idle_timeout: float | None = ...,
        header_timeout: float | None = ...,
        linger_timeout: float | None = ...,
        admission: Admission | None = ...,
    ) -> None: ...

@disjoint_base
class HttpStats:
    """Counters of the HTTP layer (one per server), read by ``/metrics``."""

    requests: int
    bytes_in: int
    bytes_out: int
    handler_errors: int

@disjoint_base
class ServerContext:
    """One server's hub, endpoints, callbacks, limits and counters."""

    @property
    def app(self) -> Any: ...
    hub: Any
    endpoints: dict[str, Endpoint]
    http_handler: Callable[[Any], Any] | None
    session_opened: Callable[[WebSocketConnection], None] | None
    session_closed: Callable[[WebSocketConnection], None] | None
    identify: Callable[[WebSocketConnection], None] | None
    protocol_message: Callable[[WebSocketConnection, str], None] | None
    recovery: Any
    jwt_auth: Any
    limits: HttpLimits
    http_stats: HttpStats
    access_log: Any
    picows_options: dict[str, Any]
    http_connections: set[Any]
    proxies: ProxyPolicy | None
    def __init__(
        self,
        app: Any = None,
        hub: Any = None,
        limits: HttpLimits | None = None,
        http_stats: HttpStats | None = None,
    ) -> None: ...
    def endpoint_for(self, path: str) -> Endpoint | None: ...
