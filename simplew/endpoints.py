"""WebSocket endpoints: what ``add_websocket_content`` asks for, compiled at start.

A :class:`WebSocketSpec` is compiled into one of the Cython endpoints of
:mod:`simplew._fast.router`: a :class:`~simplew._fast.router.RouteEndpoint`,
whose messages are JSON envelopes routed to controller methods by an exact
url lookup, or a :class:`~simplew._fast.router.CallbackEndpoint`, which gives
each raw message to one function. The facade decides here what the router
must not import: which methods need a JWT, which controllers have a
before-hook, the message class and how a handler's return value is sent.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
from collections.abc import Callable
from typing import Any

from simplew._fast.connection import SLOW_CLOSE, SLOW_SKIP, Endpoint, Flusher, WebSocketConnection
from simplew._fast.context import ServerContext
from simplew._fast.router import CallbackEndpoint, RouteEndpoint, RouteTarget
from simplew.auth import is_protected
from simplew.controller import Controller, has_before_hook, join_path, routes_of
from simplew.message import BodyMappingError, WebSocketMessage
from simplew.options import ServerOptions

SLOW_CLIENT_POLICIES = {"close": SLOW_CLOSE, "skip": SLOW_SKIP}


class WebSocketSpec:
    """What ``add_websocket_content`` asked for; compiled into an Endpoint at start."""

    def __init__(
        self,
        path: str,
        controllers: list[type[Controller]] | None,
        on_message: Callable[..., Any] | None,
        max_message_size: int,
        compression: bool | None,
    ) -> None:
        self.path = path
        self.controllers = controllers
        self.on_message = on_message
        self.max_message_size = max_message_size
        self.compression = compression

    def compile(self, context: ServerContext, options: ServerOptions, flusher: Flusher) -> Endpoint:
        """The endpoint serving this path, with the server's fan-out settings."""
        endpoint: Endpoint
        if self.on_message is not None:
            endpoint = CallbackEndpoint(self.path, self.max_message_size, self.on_message, context)
        else:
            endpoint = RouteEndpoint(
                self.path,
                self.max_message_size,
                self.routes(),
                WebSocketMessage,
                BodyMappingError,
                reply,
                context,
            )
        endpoint.max_write_buffer = options.max_write_buffer
        endpoint.slow_client_policy = SLOW_CLIENT_POLICIES[options.slow_client_policy]
        endpoint.compression = options.compression if self.compression is None else self.compression
        endpoint.compression_level = options.compression_level
        endpoint.flusher = flusher
        return endpoint

    def routes(self) -> dict[str, RouteTarget]:
        """url -> RouteTarget for the WEBSOCKET methods of this endpoint's controllers."""
        routes: dict[str, RouteTarget] = {}
        for controller in self.controllers or Controller.subclasses():
            for route_path, func in routes_of(controller, "WEBSOCKET"):
                url = join_path(self.path, route_path)
                if url in routes:
                    raise ValueError(f"two WEBSOCKET methods answer {url}")
                routes[url] = RouteTarget(
                    url,
                    controller,
                    func,
                    is_protected(controller, func),
                    has_before_hook(controller),
                )
        return routes


def controllers_and_path(
    path_or_controller: str | type[Controller], path: str | None, default: str
) -> tuple[list[type[Controller]] | None, str]:
    """``(Cls, "/p")`` → ([Cls], "/p"); ``("/p")`` → (None: every controller, "/p")."""
    controllers = None
    if isinstance(path_or_controller, type):
        if not issubclass(path_or_controller, Controller):
            raise TypeError(f"{path_or_controller.__name__} is not a Controller subclass")
        controllers = [path_or_controller]
        target = path or default
    else:
        target = path_or_controller
    return controllers, "/" + target.strip("/")


def reply(session: WebSocketConnection, result: Any) -> None:
    """Send a handler's return value: str as TEXT, bytes as BINARY, else JSON.

    NaN and Infinity are not JSON: a result holding one raises ValueError, which the
    router answers as ``handler_error`` (and logs).
    """
    if isinstance(result, str):
        session.send_text(result)
    elif isinstance(result, (bytes, bytearray, memoryview)):
        session.send_binary(result)
    else:
        session.send_text(json.dumps(result, default=json_default, allow_nan=False))


def json_default(value: Any) -> Any:
    """JSON for what handlers commonly return: dataclasses, UUIDs, datetimes, enums."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)
