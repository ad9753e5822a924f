"""simplew: SimpleW's web server for Python, built for WebSocket broadcast."""

from simplew._fast.connection import WebSocketConnection as Session
from simplew.auth import allow_anonymous, require_jwt
from simplew.controller import Controller, route
from simplew.message import BodyMappingError, WebSocketMessage
from simplew.request import Request
from simplew.rest import HttpError, Response
from simplew.server import SimpleWServer
from simplew.static import StaticFiles

__all__ = [
    "SimpleWServer",
    "Controller",
    "route",
    "WebSocketMessage",
    "BodyMappingError",
    "Session",
    "Request",
    "StaticFiles",
    "require_jwt",
    "allow_anonymous",
    "Response",
    "HttpError",
]
__version__ = "0.1.0"
