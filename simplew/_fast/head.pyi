from typing_extensions import disjoint_base

@disjoint_base
class RequestScanner:
    max_url_size: int
    max_header_size: int
    max_body_size: int
    method: str | None
    path: str | None
    query: str | None
    headers: dict[str, str] | None
    body: bytes | None
    keep_alive: bool
    http10: bool
    def __init__(
        self, max_url_size: int = 8192, max_header_size: int = 16384, max_body_size: int = 1048576
    ) -> None: ...
    def scan_bytes(self, data: bytes, start: int = 0) -> int: ...
