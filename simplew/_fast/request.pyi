from typing_extensions import disjoint_base

@disjoint_base
class Request:
    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    remote: tuple[str, int] | None
    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: dict[str, str],
        body: bytes = b"",
        remote: tuple[str, int] | None = None,
    ) -> None: ...
    @property
    def query(self) -> dict[str, str]: ...
    @property
    def url(self) -> str: ...
