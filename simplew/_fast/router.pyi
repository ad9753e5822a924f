from collections.abc import Callable
from typing import Any

from typing_extensions import disjoint_base

from simplew._fast.connection import Endpoint, WebSocketConnection
from simplew._fast.context import ServerContext

class Unauthorized(Exception):
    """No valid token: the text is the ``message`` of the error sent to the client."""

@disjoint_base
class RouteTarget:
    @property
    def url(self) -> str: ...
    @property
    def controller_class(self) -> type: ...
    @property
    def method(self) -> Callable[..., Any]: ...
    @property
    def require_jwt(self) -> bool: ...
    @property
    def before_hook(self) -> bool: ...
    def __init__(
        self,
        url: str,
        controller_class: type,
        method: Callable[..., Any],
        require_jwt: bool,
        before_hook: bool,
    ) -> None: ...

def error_message(code: str, url: str | None, message: str) -> str: ...

@disjoint_base
class RouteEndpoint(Endpoint):
    def __init__(
        self,
        path: str,
        max_message_size: int,
        routes: dict[str, RouteTarget],
        message_class: Callable[..., Any],
        mapping_error: type[BaseException],
        reply: Callable[[WebSocketConnection, Any], None],
        context: ServerContext | None = None,
    ) -> None: ...
    @property
    def routes(self) -> dict[str, RouteTarget]: ...

@disjoint_base
class CallbackEndpoint(Endpoint):
    def __init__(
        self,
        path: str,
        max_message_size: int,
        callback: Callable[..., Any],
        context: ServerContext | None = None,
    ) -> None: ...
