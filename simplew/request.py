"""The HTTP request a handler sees: for a WebSocket, the upgrade request."""
from __future__ import annotations

from urllib.parse import parse_qs


class Request:
    """An HTTP request: method, path, query and headers (names lower-cased)."""

    __slots__ = ("method", "path", "query_string", "headers", "body", "_query")

    def __init__(self, method: str, path: str, query_string: str,
                 headers: dict[str, str], body: bytes = b"") -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self._query = None

    @property
    def query(self) -> dict[str, str]:
        """Query-string parameters; the last value wins for a repeated name."""
        if self._query is None:
            self._query = {k: v[-1] for k, v in
                           parse_qs(self.query_string, keep_blank_values=True).items()}
        return self._query

    @property
    def url(self) -> str:
        return self.path + ("?" + self.query_string if self.query_string else "")

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url}>"
