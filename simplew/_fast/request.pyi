from typing_extensions import disjoint_base

@disjoint_base
class Request:
    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    def __init__(
        self, method: str, path: str, query_string: str, headers: dict[str, str], body: bytes = b""
    ) -> None: ...
    @property
    def query(self) -> dict[str, str]: ...
    @property
    def url(self) -> str: ...
