from collections.abc import Callable
from typing import Any

from simplew._fast.connection import Endpoint

class RouteTarget:
    url: str
    controller_class: type
    method: Callable[..., Any]
    require_jwt: bool
    before_hook: bool
    def __init__(self, url: str, controller_class: type, method: Callable[..., Any]) -> None: ...

def error_message(code: str, url: str | None, message: str) -> str: ...

class RouteEndpoint(Endpoint):
    @property
    def routes(self) -> dict[str, RouteTarget]: ...

class CallbackEndpoint(Endpoint):
    def __init__(
        self,
        path: str,
        max_message_size: int,
        callback: Callable[..., Any],
        server: Any = None,
        hub: Any = None,
    ) -> None: ...
