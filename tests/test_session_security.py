"""A session belongs to whoever proved who they are (simplew.tokens, simplew.recovery).

alice connects with her JWT, joins a private room and drops; a publication goes to
that room. mallory, with alice's session id and stream positions but no token (or
her own token), must get a fresh session and learn nothing of alice's. Presence shows
users and public ids, never a session id. A token that expires ends the access of
its connection unless it is refreshed in time.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt as pyjwt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from helpers import wait_until
from simplew import Controller, WebSocketMessage, route
from simplew.auth import JwtAuth
from simplew.recovery import log_id
from simplew.tokens import CLOSE_TOKEN_EXPIRED, CLOSE_TOKEN_REFUSED
from v2raw import V2

SECRET = "a secret of the session security tests, long enough"
TIMEOUT = 5.0


@route("/vault")
class VaultController(Controller):
    @route("WEBSOCKET", "/join")
    def join(self, message: WebSocketMessage) -> str:
        self.session.join(message.body)
        return "joined"

    @route("WEBSOCKET", "/me")
    def me(self, message: WebSocketMessage) -> Any:
        return {"user": self.session.user}


def token(sub: str, **claims: Any) -> str:
    return pyjwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


class Conn(V2):
    """A simplew.v2 connection (tests/v2raw.py) with ``jwt`` in its upgrade,
    resuming ``resume``'s session with ``resume``'s positions when given."""

    def __init__(self, server: Any, jwt: str | None = None, resume: V2 | None = None) -> None:
        super().__init__(server.port, resume, token=jwt)


@pytest.fixture
def server(make_server):
    def configure(s):
        s.add_websocket_content(VaultController, "/ws")
        s.set_token(SECRET)

    return make_server(configure, recovery=True, metrics=True, token_grace=1.0)


def alice_leaves_a_private_publication(server) -> Conn:
    """alice joins "alice-private" and drops; one publication then goes there."""
    alice = Conn(server, token("alice"))
    assert alice.ask("/ws/vault/join", "alice-private") == "joined"
    alice.close()
    wait_until(lambda: len(server.hub) == 0, what="alice gone")
    server.multicast_text("for alice only", room="alice-private")
    return alice


@pytest.mark.parametrize("mallory_token", [None, "mallory"], ids=["no-token", "own-token"])
def test_a_session_id_alone_does_not_resume_a_users_session(server, mallory_token):
    resume = alice_leaves_a_private_publication(server)
    mallory = Conn(server, token(mallory_token) if mallory_token else None, resume)
    assert mallory.welcome["recovered"] is False
    assert mallory.welcome["missed"] == 0
    assert mallory.welcome["session"] != resume.session
    assert mallory.welcome["streams"] == [[None, *resume.positions[None], False, 0]]
    assert "left" not in mallory.welcome
    assert mallory.ask("/ws/vault/me") == {"user": mallory_token}
    server.multicast_text("for alice only, again", room="alice-private")
    assert mallory.texts_within(0.5) == []
    mallory.close()
    assert server.recovery.resumes_refused == 1
    # alice, with her token, still gets everything back
    alice = Conn(server, token("alice"), resume)
    assert alice.welcome["recovered"] is True and alice.welcome["missed"] == 2
    assert alice.welcome["session"] == resume.session
    assert alice.welcome["streams"] == [
        [None, *resume.positions[None], True, 0],
        ["alice-private", *resume.positions["alice-private"], True, 2],
    ]
    assert alice.texts_within(0.5) == ["for alice only", "for alice only, again"]
    assert alice.ask("/ws/vault/me") == {"user": "alice"}
    alice.close()


def test_a_live_session_is_not_taken_over_by_another_user(server):
    alice = Conn(server, token("alice"))
    alice.ask("/ws/vault/join", "alice-private")
    mallory = Conn(server, None, alice)
    assert mallory.welcome["recovered"] is False
    server.multicast_text("still alice's", room="alice-private")
    assert alice.texts_within(0.5) == ["still alice's"]  # alice's connection is untouched
    assert mallory.texts_within(0.3) == []
    alice.close()
    mallory.close()


def test_a_session_without_a_user_is_resumed_by_its_id(server):
    first = Conn(server)
    first.ask("/ws/vault/join", "open")
    first.close()
    wait_until(lambda: len(server.hub) == 0, what="gone")
    server.multicast_text("missed", room="open")
    again = Conn(server, None, first)
    assert again.welcome["recovered"] is True and again.welcome["missed"] == 1
    assert again.texts_within(0.5) == ["missed"]
    again.close()


def test_presence_lists_users_and_public_ids_never_a_session_id(server):
    alice, anonymous = Conn(server, token("alice")), Conn(server)
    alice.ask("/ws/vault/join", "lobby")
    anonymous.ask("/ws/vault/join", "lobby")
    listed = server.presence("lobby")
    expected = [
        {"client": log_id(alice.welcome["session"]), "user": "alice"},
        {"client": log_id(anonymous.welcome["session"]), "user": None},
    ]
    assert listed == sorted(expected, key=lambda e: e["client"])
    text = json.dumps(listed)
    assert alice.welcome["session"] not in text and anonymous.welcome["session"] not in text
    alice.close()
    anonymous.close()


def test_a_room_refused_on_resume_is_reported_as_left(make_server):
    def configure(s):
        s.add_websocket_content(VaultController, "/ws")
        s.set_token(SECRET)
        s.on_resume_room(lambda session, room: room != "admins")

    server = make_server(configure, recovery=True)
    alice = Conn(server, token("alice"))
    alice.ask("/ws/vault/join", "admins")
    alice.ask("/ws/vault/join", "staff")
    alice.close()
    wait_until(lambda: len(server.hub) == 0, what="gone")
    server.multicast_text("to admins", room="admins")
    server.multicast_text("to staff", room="staff")
    back = Conn(server, token("alice"), alice)
    assert back.welcome["recovered"] is True
    assert back.welcome["left"] == ["admins"] and back.welcome["missed"] == 1
    assert back.texts_within(0.5) == ["to staff"]
    server.multicast_text("to admins again", room="admins")
    assert back.texts_within(0.3) == []
    back.close()


def test_an_expired_token_is_asked_for_and_closes_without_a_refresh(server):
    conn = Conn(server, token("alice", exp=int(time.time()) + 2))
    conn.ask("/ws/vault/join", "news")
    assert conn.next(timeout=4) == {"type": "refresh"}
    server.multicast_text("during the grace period", room="news")
    assert conn.next()["text"] == "during the grace period"
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            conn.next(timeout=3)
    assert closed.value.rcvd.code == CLOSE_TOKEN_EXPIRED
    wait_until(lambda: server.credentials.expired == 1, what="counted")


def test_a_refreshed_token_keeps_the_connection(server):
    conn = Conn(server, token("alice", exp=int(time.time()) + 2))
    conn.ask("/ws/vault/join", "news")
    assert conn.next(timeout=4) == {"type": "refresh"}
    fresh = token("alice", exp=int(time.time()) + 60)
    conn.ws.send(json.dumps({"type": "refresh", "token": fresh}, separators=(",", ":")))
    time.sleep(1.5)  # past the grace period of the first token
    server.multicast_text("after the refresh", room="news")
    assert conn.texts_within(0.5) == ["after the refresh"]
    assert server.credentials.refreshed == 1 and server.credentials.expired == 0
    conn.close()


def test_a_refresh_with_another_users_token_is_refused(server):
    conn = Conn(server, token("alice", exp=int(time.time()) + 60))
    conn.ws.send(json.dumps({"type": "refresh", "token": token("bob")}, separators=(",", ":")))
    with pytest.raises(ConnectionClosed) as closed:
        conn.next(timeout=3)
    assert closed.value.rcvd.code == CLOSE_TOKEN_REFUSED


def test_a_plain_websocket_is_closed_at_expiry_plus_grace(make_server):
    def configure(s):
        s.add_websocket_content("/plain", on_message=lambda session, data: session.send(data))
        s.set_token(SECRET)

    server = make_server(configure, token_grace=0.5)
    ws = connect(
        f"ws://127.0.0.1:{server.port}/plain",
        additional_headers={"Authorization": f"Bearer {token('alice', exp=int(time.time()) + 1)}"},
        proxy=None,
    ).__enter__()
    ws.send("still here")
    assert ws.recv(timeout=TIMEOUT) == "still here"
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=4)
    assert closed.value.rcvd.code == CLOSE_TOKEN_EXPIRED
    assert time.monotonic() - started < 3.5


def test_a_cached_token_with_a_string_exp_still_expires():
    """PyJWT takes "exp": "<digits>" (int() of it); the cache must check it too."""
    auth = JwtAuth(SECRET)
    text = token("alice", exp=str(int(time.time()) + 1))
    assert auth.decode(text)["sub"] == "alice"  # valid, and now cached
    time.sleep(1.6)
    with pytest.raises(Exception, match="expired"):
        auth.decode(text)


def test_a_key_and_algorithms_that_cannot_work_are_refused_at_set_token():
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="HMAC"):
        JwtAuth(public, algorithms=["RS256", "HS256"])  # the public key as an HMAC secret
    with pytest.raises(ValueError, match="HS256"):
        JwtAuth(public, algorithms=["HS256"])
    with pytest.raises(ValueError, match="unknown"):
        JwtAuth(public, algorithms=["RS257"])
    assert JwtAuth(public, algorithms=["RS256"]).algorithms == ["RS256"]
