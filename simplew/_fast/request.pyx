# cython: language_level=3
"""The HTTP request a handler sees: for a WebSocket, the upgrade request.

A Cython class because one is made for every HTTP request: http.pyx builds it
with :func:`new_request` without going through ``__init__``.
"""
from urllib.parse import parse_qs


cdef class Request:
    """An HTTP request: method, path, query and headers (names lower-cased), and
    ``remote``, the client's ``(host, port)``: the peer of the connection, or
    the address a trusted proxy gave (simplew._fast.proxy)."""

    def __init__(self, method, path, query_string, headers, body=b"", remote=None):
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self.remote = remote

    @property
    def query(self):
        """Query-string parameters (dict[str, str]); the last value wins for a repeated name."""
        if self._query is None:
            # the last value: built with wraparound off, so not v[-1]
            self._query = {k: v[len(v) - 1] for k, v in
                           parse_qs(self.query_string, keep_blank_values=True).items()}
        return self._query

    @property
    def url(self):
        """The path, with ``?`` and the query string when there is one."""
        return self.path + ("?" + self.query_string if self.query_string else "")

    def __repr__(self):
        return f"<Request {self.method} {self.url}>"


cdef Request new_request(str method, str path, str query_string, dict headers, body):
    cdef Request request = Request.__new__(Request)
    request.method = method
    request.path = path
    request.query_string = query_string
    request.headers = headers
    request.body = body
    return request
