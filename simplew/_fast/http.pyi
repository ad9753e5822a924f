from typing import Any

from simplew._fast.admission import Admission

REASONS: dict[int, str]

class HttpLimits:
    admission: Admission | None
    max_body_size: int
    max_header_size: int
    max_url_size: int
    def __init__(self, max_body_size: int = ..., max_header_size: int = ...,
                 max_url_size: int = ..., *, admission: Admission | None = None,
                 **timeouts: Any) -> None: ...

class HttpStats:
    requests: int

class HttpProtocol:
    def __init__(self, app: Any, limits: HttpLimits, picows_options: dict[str, Any],
                 connections: set[HttpProtocol] | None = None) -> None: ...
    def shutdown(self) -> None: ...
