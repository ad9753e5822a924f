"""The browser client ``simplew.js`` (``simplew/js/simplew.js``, shipped in the
wheel) and its HTTP answer: every server with a WebSocket endpoint serves it at
``GET /simplew.js`` (a route or static file of the application at that path is
not reached)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

PATH = "/simplew.js"


@lru_cache(maxsize=1)
def script() -> bytes:
    """The text of simplew.js."""
    return resources.files("simplew").joinpath("js/simplew.js").read_bytes()


def response() -> tuple[int, list[tuple[str, str]], bytes]:
    """``GET /simplew.js``: 200, text/javascript, revalidated on every load."""
    return (
        200,
        [("Content-Type", "text/javascript; charset=utf-8"), ("Cache-Control", "no-cache")],
        script(),
    )
