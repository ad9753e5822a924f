"""A test application for tests/test_cli.py.

    simplew serve tests.apps.cli_app:server --port 8765      (a server object)
    simplew serve tests.apps.cli_app:make_server              (a factory)

It serves www/push at ``/`` and a controller at ``/app``: ``{"url": "/app/cli/pid"}``
is answered with ``{"pid": <process id>, "body": <the body>}``, which tells a
client which worker process it reached.
"""

from __future__ import annotations

import os
from pathlib import Path

from simplew import Controller, SimpleWServer, WebSocketMessage, route

ROOT = Path(__file__).resolve().parent.parent.parent


@route("/cli")
class CliAppController(Controller):
    @route("WEBSOCKET", "/pid")
    def pid(self, message: WebSocketMessage) -> dict:
        return {"pid": os.getpid(), "body": message.body}


def make_server() -> SimpleWServer:
    server = SimpleWServer("127.0.0.1", 2015)
    server.add_static_content(str(ROOT / "www" / "push"), "/")
    server.add_websocket_content(CliAppController, "/app")
    return server


server = make_server()
