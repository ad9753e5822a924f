"""The HTTP request a handler sees: for a WebSocket, the upgrade request.

:class:`Request` (method, path, query_string, headers with lower-case names,
body; ``query`` and ``url`` derived) is a Cython class, simplew._fast.request,
as one is made for every request.
"""

from simplew._fast.request import Request

__all__ = ["Request"]
