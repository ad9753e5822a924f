"""The server API's test client: ``call`` (a POST to a method), ``Client`` (a
simplew.v2 WebSocket client whose user comes from a JWT) and ``make_server`` (a
started server with the API at ``/api``). Used by test_api.py and test_emitter.py."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import jwt as pyjwt

from apps.api_app import JWT_SECRET as SECRET
from helpers import TIMEOUT
from simplew import SimpleWServer
from simplew.recovery import log_id
from v2client import V2Client

TOKEN = "api-s3cret"
BODY_LIMIT = 64 * 1024


def call(
    port: int, method: str, body: Any = None, token: str | None = TOKEN
) -> tuple[int, Any, Any]:
    """POST /api/<method>: (status, the JSON answer, the headers)."""
    data = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/{method}", data=data, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = raw
        return error.code, answer, error.headers


class Client(V2Client):
    """A simplew.v2 client whose upgrade carries a JWT (its ``sub`` is the session's user)."""

    def __init__(self, port: int, user: str | None = None, resume: V2Client | None = None) -> None:
        """Connect; with ``resume``, as a resume of that client's session."""
        super().__init__()
        headers = None
        if user is not None:
            token = pyjwt.encode({"sub": user}, SECRET, algorithm="HS256")
            headers = {"Authorization": f"Bearer {token}"}
        if resume is not None:
            self.session, self.streams = resume.session, dict(resume.streams)
        self.connect(f"ws://127.0.0.1:{port}/ws", headers=headers)

    @property
    def public(self) -> str:
        """The id presence shows and the API's ``session`` field takes."""
        assert self.session is not None
        return log_id(self.session)

    def joined(self, room: str) -> None:
        """Read until the ``join`` message of ``room`` came."""
        while not any(join["room"] == room for join in self.joins):
            self._record(self._recv_json(TIMEOUT))

    def closed_with(self) -> int | None:
        """Read until the server closes the connection; its close code."""
        assert not self.collect(TIMEOUT), "still open"
        return self.ws.close_code


def make_server(**settings: Any) -> SimpleWServer:
    server = SimpleWServer(
        "127.0.0.1",
        0,
        recovery=True,
        api_path="/api",
        api_token=TOKEN,
        max_body_size=BODY_LIMIT,
        access_log=False,
        **settings,
    )
    server.add_websocket_content("/ws", on_message=lambda session, data: None)
    server.set_token(SECRET)
    server.start()
    return server
