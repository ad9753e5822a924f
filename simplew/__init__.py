"""simplew: SimpleW's web server for Python, built for WebSocket broadcast."""
from simplew._fast.connection import WebSocketConnection as Session
from simplew.controller import Controller, route
from simplew.message import BodyMappingError, WebSocketMessage
from simplew.request import Request
from simplew.server import SimpleWServer
from simplew.static import StaticFiles

__all__ = ["SimpleWServer", "Controller", "route", "WebSocketMessage", "BodyMappingError",
           "Session", "Request", "StaticFiles"]
__version__ = "0.1.0"
