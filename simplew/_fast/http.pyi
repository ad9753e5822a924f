from typing import Any

from simplew._fast.admission import Admission
from simplew._fast.context import ServerContext

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
    bytes_in: int
    bytes_out: int
    handler_errors: int

class HttpProtocol:
    def __init__(self, context: ServerContext) -> None: ...
    def shutdown(self) -> None: ...

class FileBody:
    """``length`` bytes of the open file ``fd`` from ``offset``; the writing connection closes ``fd``."""
    fd: int
    offset: int
    length: int
    def __init__(self, fd: int, offset: int, length: int) -> None: ...
    def __len__(self) -> int: ...
    def read(self) -> bytes: ...
    def close(self) -> None: ...

class PreparedBody(bytes):
    """A 200 body whose encoded response is reused while ``headers`` (shared) stays unchanged."""
    headers: list[tuple[str, str]]
    nheaders: int
    def __new__(cls, headers: list[tuple[str, str]], body: bytes) -> PreparedBody: ...
