"""A test application for the server API: simplew.v2 clients on ``/ws`` whose user
is the ``sub`` of the JWT of their upgrade (``JWT_SECRET``, HS256).

    SIMPLEW_API_TOKEN=... simplew serve tests.apps.api_app:server --recovery --redis URL --api /api
"""

from __future__ import annotations

from simplew import SimpleWServer

JWT_SECRET = "jwt-secret-for-the-api-tests-0123456789"  # tests/apiclient.py signs with it

server = SimpleWServer("127.0.0.1", 8765, access_log=False)
server.add_websocket_content("/ws", on_message=lambda session, data: None)
server.set_token(JWT_SECRET)
