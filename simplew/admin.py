"""The live admin page (``admin_path``, ``simplew serve --admin PATH``).

Three answers under the path, wired by :func:`admin_routes`:

- ``GET PATH``: the page (``simplew/js/admin.html``: inline CSS and script, no
  data in it); it asks for the token and keeps it in ``sessionStorage``;
- ``GET PATH/snapshot``: JSON, polled every second by the page: each live process
  (:meth:`simplew.registry.Registry.processes`), per host and over all of them
  (:func:`simplew.registry.summarize`); the page computes the rates from successive
  snapshots;
- ``POST PATH/publish``: ``{"text": ..., "room": ...}`` (room optional) published with
  ``server.publish``; answers the position, or 503 with ``Retry-After`` when Redis
  cannot store it now.

The last two need ``Authorization: Bearer <admin_token>`` (compared with
:func:`hmac.compare_digest`); otherwise 401 and nothing is read or published.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from typing import Any

from simplew.auth import bearer_matches
from simplew.registry import summarize
from simplew.request import Request

log = logging.getLogger("simplew")

Response = tuple[int, list[tuple[str, str]], bytes]
_JSON = "application/json"


@lru_cache(maxsize=1)
def page() -> tuple[bytes, str]:
    """The page's bytes and its Content-Security-Policy (its inline script and style
    allowed by their SHA-256, nothing else loaded)."""
    html = resources.files("simplew").joinpath("js/admin.html").read_bytes()

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>".encode(), html, re.DOTALL)
        return " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
            for body in found
        )

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return html, policy


def _json(status: int, value: Any, *extra: tuple[str, str]) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode("utf-8")
    return status, [("Content-Type", _JSON), ("Cache-Control", "no-store"), *extra], body


def _error(status: int, error: str, message: str, *extra: tuple[str, str]) -> Response:
    return _json(status, {"error": error, "message": message}, *extra)


def _not_allowed(allow: str) -> Response:
    return _error(405, "method_not_allowed", f"use {allow}", ("Allow", allow))


class AdminPage:
    """The answers of the admin page of ``server`` at ``path``, behind ``token``."""

    def __init__(self, server: Any, path: str, token: str) -> None:
        self.server = server
        self.path = path
        self._token = token.encode("ascii")

    def authorized(self, request: Request) -> bool:
        """The request carries ``Authorization: Bearer <token>`` (constant time)."""
        return bearer_matches(request.headers, self._token)

    def _refused(self) -> Response:
        return _error(
            401,
            "unauthorized",
            "the admin page needs 'Authorization: Bearer <admin token>'",
            ("WWW-Authenticate", 'Bearer realm="simplew admin"'),
        )

    def page(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("GET")
        html, policy = page()
        headers = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("Content-Security-Policy", policy),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
        ]
        return 200, headers, html

    def snapshot(self, request: Request) -> Any:
        if request.method not in ("GET", "HEAD"):
            return _not_allowed("GET")
        if not self.authorized(request):
            return self._refused()
        return self._snapshot()

    async def _snapshot(self) -> Response:
        registry = self.server.registry
        source = "local" if registry.engine is None else "redis"
        try:
            processes = await registry.processes()
        except Exception as exc:  # Redis cannot answer: this process alone, and why
            source = f"unavailable: {exc!r}"[:200]
            processes = [registry.snapshot()]
        return _json(
            200,
            {"time": time.time(), "registry": source, "processes": processes}
            | summarize(processes),
        )

    def publish(self, request: Request) -> Any:
        if request.method != "POST":
            return _not_allowed("POST")
        if not self.authorized(request):
            return self._refused()
        try:
            message = json.loads(request.body)
        except ValueError:
            return _error(400, "bad_request", "the body must be JSON: {text, room?}")
        if not isinstance(message, dict) or not isinstance(message.get("text"), str):
            return _error(400, "bad_request", "the body must be {text: string, room?: string}")
        room = message.get("room") or None
        if room is not None and not isinstance(room, str):
            return _error(400, "bad_request", "room must be a string")
        return self._publish(message["text"], room)

    async def _publish(self, text: str, room: str | None) -> Response:
        from simplew.stream import Unavailable

        try:
            position = await self.server.publish(text, room=room)
        except Unavailable as exc:
            return _error(503, "unavailable", str(exc), ("Retry-After", str(exc.retry_after)))
        except ValueError as exc:  # a room name the server refuses
            return _error(400, "bad_request", str(exc))
        answer: dict[str, Any] = {"room": room, "epoch": None, "offset": None}
        if position is not None:
            answer.update(epoch=position.epoch, offset=position.offset)
        return _json(200, answer)


def admin_routes(server: Any, path: str, token: str) -> dict[str, Callable[[Request], Any]]:
    """The paths of the admin page and their answers (for
    :attr:`simplew.answers.HttpAnswers.handlers`)."""
    admin = AdminPage(server, path, token)
    return {
        path: admin.page,
        path + "/snapshot": admin.snapshot,
        path + "/publish": admin.publish,
    }


__all__ = ["AdminPage", "admin_routes", "page"]
