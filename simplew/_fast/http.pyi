from typing import Any

REASONS: dict[int, str]

class HttpLimits:
    max_body_size: int
    max_header_size: int
    max_url_size: int
    def __init__(self, max_body_size: int = ..., max_header_size: int = ...,
                 max_url_size: int = ..., **timeouts: Any) -> None: ...

class HttpStats:
    requests: int

class HttpProtocol:
    def __init__(self, app: Any, limits: HttpLimits, picows_options: dict[str, Any],
                 connections: set[HttpProtocol] | None = None) -> None: ...
    def shutdown(self) -> None: ...
