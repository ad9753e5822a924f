"""JWT on WebSocket messages (``server.set_token``), with real clients.

The token reaches the server in the message's ``"jwt"``, in the upgrade
request's ``Authorization: Bearer`` header, or in its Sec-WebSocket-Protocol
(``["bearer", token]``, as a browser sends it). A route that requires a token
answers a message without a valid one with ``{"error": "unauthorized"}`` and
the connection stays open.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import time
from functools import partial
from typing import Any

import jwt as pyjwt
import pytest
from websockets.asyncio.client import connect

from helpers import run
from simplew import Controller, WebSocketMessage, allow_anonymous, require_jwt, route
from simplew.auth import JwtAuth, Unauthorized, select_subprotocol, token_from_headers

SECRET = "test-secret-that-is-long-enough-for-hs256"
TIMEOUT = 5.0


def make_token(secret: str = SECRET, **claims: Any) -> str:
    claims.setdefault("sub", "alice")
    claims.setdefault("exp", int(time.time()) + 600)
    return pyjwt.encode(claims, secret, algorithm="HS256")


run = partial(run, timeout=20)  # helpers.run, failing after 20 s rather than 30


def client(server, path: str = "/jwt", **kwargs):
    return connect(
        f"ws://127.0.0.1:{server.port}{path}",
        proxy=None,
        compression=None,
        open_timeout=TIMEOUT,
        **kwargs,
    )


async def ask(ws, message: dict) -> Any:
    await ws.send(json.dumps(message))
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


# -- controllers ---------------------------------------------------------------


@route("/mixed")
class JwtMixedController(Controller):
    """One protected method, one open method."""

    @require_jwt
    @route("WEBSOCKET", "/secret")
    def secret(self, message: WebSocketMessage) -> dict:
        return {"sub": self.jwt["sub"], "claims_sub": message.claims["sub"]}

    @route("WEBSOCKET", "/open")
    def open(self, message: WebSocketMessage) -> dict:
        return {"open": True, "jwt": self.jwt, "claims": message.claims}


@route("/cls")
class JwtClassController(Controller):
    """Protected by the class attribute; one method exempted."""

    require_jwt = True

    @route("WEBSOCKET", "/whoami")
    async def whoami(self, message: WebSocketMessage) -> dict:
        await asyncio.sleep(0)
        return {"sub": self.jwt["sub"]}

    @allow_anonymous
    @route("WEBSOCKET", "/ping")
    def ping(self, message: WebSocketMessage) -> str:
        return "pong"


@require_jwt
@route("/deco")
class JwtDecoratedController(Controller):
    @route("WEBSOCKET", "/whoami")
    def whoami(self, message: WebSocketMessage) -> dict:
        return {"sub": self.jwt["sub"], "role": self.jwt.get("role")}


def configure(with_key: bool = True):
    def setup(server) -> None:
        if with_key:
            server.set_token(SECRET, algorithms=["HS256"])
        server.add_websocket_content(JwtMixedController, "/jwt")
        server.add_websocket_content(JwtClassController, "/jwtcls")
        server.add_websocket_content(JwtDecoratedController, "/jwtdeco")

    return setup


@pytest.fixture
def server(make_server):
    return make_server(configure())


def assert_unauthorized(reply: Any, url: str, words: str) -> None:
    assert reply["error"] == "unauthorized", reply
    assert reply["url"] == url
    assert words in reply["message"], reply


# -- the three carriers ----------------------------------------------------------


def test_token_in_message_jwt_field(server):
    async def go():
        async with client(server) as ws:
            reply = await ask(ws, {"url": "/jwt/mixed/secret", "jwt": make_token()})
            assert reply == {"sub": "alice", "claims_sub": "alice"}
            # the next message without a token is refused: the token is per message
            reply = await ask(ws, {"url": "/jwt/mixed/secret"})
            assert_unauthorized(reply, "/jwt/mixed/secret", "a valid JWT is required")

    run(go())


def test_token_in_authorization_header(server):
    async def go():
        headers = {"Authorization": "Bearer " + make_token(sub="bob")}
        async with client(server, additional_headers=headers) as ws:
            for _ in range(3):  # every message of the connection is authorized
                assert await ask(ws, {"url": "/jwt/mixed/secret"}) == {
                    "sub": "bob",
                    "claims_sub": "bob",
                }
            # a message's own token wins over the connection's
            reply = await ask(ws, {"url": "/jwt/mixed/secret", "jwt": make_token(sub="carol")})
            assert reply["sub"] == "carol"

    run(go())


def test_token_in_subprotocol_list_form(server):
    token = make_token(sub="dave")

    async def go():
        async with client(server, subprotocols=["bearer", token]) as ws:
            assert ws.subprotocol == "bearer"
            assert ws.response.headers["Sec-WebSocket-Protocol"] == "bearer"
            assert await ask(ws, {"url": "/jwt/mixed/secret"}) == {
                "sub": "dave",
                "claims_sub": "dave",
            }

    run(go())


def test_token_in_subprotocol_dotted_form(server):
    token = make_token(sub="erin")

    async def go():
        async with client(server, subprotocols=[f"bearer.{token}"]) as ws:
            assert ws.subprotocol == f"bearer.{token}"
            assert (await ask(ws, {"url": "/jwt/mixed/secret"}))["sub"] == "erin"

    run(go())


def test_subprotocol_answer_in_raw_101(server):
    """The 101 carries the selected protocol, as a browser insists."""
    token = make_token()
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(
            (
                f"GET /jwt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: bearer, {token}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk
            head += chunk
    lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["sec-websocket-protocol"] == "bearer"
    accept = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    assert headers["sec-websocket-accept"] == accept


def test_browser_token_in_subprotocol(browser, make_server, tmp_path):
    """A real browser: new WebSocket(url, ["bearer", token]) opens and is authorized."""
    (tmp_path / "index.html").write_text("<!doctype html><title>jwt</title>")

    def setup(server) -> None:
        configure()(server)
        server.add_static_content(str(tmp_path), "/")

    server = make_server(setup)
    token = make_token(sub="browser")
    page = browser.new_page()
    try:
        page.goto(f"http://127.0.0.1:{server.port}/")
        result = page.evaluate(
            """([url, token]) => new Promise((resolve) => {
            const ws = new WebSocket(url, ["bearer", token]);
            ws.onopen = () => ws.send(JSON.stringify({url: "/jwt/mixed/secret"}));
            ws.onmessage = (e) => { resolve({protocol: ws.protocol, data: e.data}); ws.close(); };
            ws.onerror = () => resolve({error: true});
            setTimeout(() => resolve({timeout: true}), 5000);
        })""",
            [f"ws://127.0.0.1:{server.port}/jwt", token],
        )
    finally:
        page.close()
    assert result.get("protocol") == "bearer", result
    assert json.loads(result["data"]) == {"sub": "browser", "claims_sub": "browser"}


# -- refusals ---------------------------------------------------------------------


def test_expired_token_is_refused_and_connection_stays_open(server):
    expired = make_token(exp=int(time.time()) - 30)

    async def go():
        async with client(server) as ws:
            reply = await ask(ws, {"url": "/jwt/mixed/secret", "jwt": expired})
            assert_unauthorized(reply, "/jwt/mixed/secret", "expired")
            assert (await ask(ws, {"url": "/jwt/mixed/open"}))["open"] is True
            assert (await ask(ws, {"url": "/jwt/mixed/secret", "jwt": make_token()}))[
                "sub"
            ] == "alice"
        async with client(server, subprotocols=["bearer", expired]) as ws:
            reply = await ask(ws, {"url": "/jwt/mixed/secret"})
            assert_unauthorized(reply, "/jwt/mixed/secret", "expired")

    run(go())


def test_bad_signature_is_refused(server):
    forged = make_token(secret="another-secret-of-sufficient-length-x")

    async def go():
        async with client(server, additional_headers={"Authorization": f"Bearer {forged}"}) as ws:
            reply = await ask(ws, {"url": "/jwt/mixed/secret"})
            assert_unauthorized(reply, "/jwt/mixed/secret", "Signature verification failed")
            reply = await ask(ws, {"url": "/jwt/mixed/secret", "jwt": "not.a.jwt"})
            assert_unauthorized(reply, "/jwt/mixed/secret", "invalid JWT")
            reply = await ask(ws, {"url": "/jwt/mixed/secret", "jwt": 42})
            assert_unauthorized(reply, "/jwt/mixed/secret", "must be a string")
            # alg "none" is never accepted
            unsigned = pyjwt.encode({"sub": "mallory"}, None, algorithm="none")
            reply = await ask(ws, {"url": "/jwt/mixed/secret", "jwt": unsigned})
            assert_unauthorized(reply, "/jwt/mixed/secret", "invalid JWT")

    run(go())


def test_no_token_on_protected_routes(server):
    async def go():
        async with client(server, "/jwtcls") as ws:
            reply = await ask(ws, {"url": "/jwtcls/cls/whoami"})
            assert_unauthorized(reply, "/jwtcls/cls/whoami", "a valid JWT is required")
            # exempted method of the same class
            await ws.send(json.dumps({"url": "/jwtcls/cls/ping"}))
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "pong"
            reply = await ask(ws, {"url": "/jwtcls/cls/whoami", "jwt": make_token(sub="zed")})
            assert reply == {"sub": "zed"}
        async with client(server, "/jwtdeco") as ws:
            reply = await ask(ws, {"url": "/jwtdeco/deco/whoami"})
            assert_unauthorized(reply, "/jwtdeco/deco/whoami", "a valid JWT is required")
            reply = await ask(
                ws, {"url": "/jwtdeco/deco/whoami", "jwt": make_token(sub="yan", role="admin")}
            )
            assert reply == {"sub": "yan", "role": "admin"}

    run(go())


# -- unprotected routes ---------------------------------------------------------------


def test_unprotected_routes_unaffected(server):
    async def go():
        async with client(server) as ws:
            assert await ask(ws, {"url": "/jwt/mixed/open"}) == {
                "open": True,
                "jwt": None,
                "claims": None,
            }
            # a bad token on an open route is not an error: there are just no claims
            assert await ask(ws, {"url": "/jwt/mixed/open", "jwt": "garbage"}) == {
                "open": True,
                "jwt": None,
                "claims": None,
            }
            reply = await ask(ws, {"url": "/jwt/mixed/open", "jwt": make_token(sub="opt")})
            assert reply["jwt"]["sub"] == "opt" and reply["claims"]["sub"] == "opt"
        # a client offering other subprotocols gets no bearer answer and may still connect
        async with client(server, additional_headers={"Authorization": "Basic eDp5"}) as ws:
            assert (await ask(ws, {"url": "/jwt/mixed/open"}))["open"] is True

    run(go())


def test_server_without_key(make_server):
    server = make_server(configure(with_key=False))

    async def go():
        async with client(server) as ws:
            assert (await ask(ws, {"url": "/jwt/mixed/open", "jwt": make_token()}))["jwt"] is None
            reply = await ask(ws, {"url": "/jwt/mixed/secret", "jwt": make_token()})
            assert_unauthorized(reply, "/jwt/mixed/secret", "no key")

    run(go())


def test_set_token_after_start(make_server):
    server = make_server(configure(with_key=False))
    server.SetToken(SECRET)

    async def go():
        async with client(server) as ws:
            assert (await ask(ws, {"url": "/jwt/mixed/secret", "jwt": make_token()}))[
                "sub"
            ] == "alice"

    run(go())


# -- simplew.auth unit checks ------------------------------------------------------


def test_cached_token_still_expires(monkeypatch):
    auth = JwtAuth(SECRET)
    now = time.time()
    token = make_token(exp=int(now) + 60)
    assert auth.decode(token)["sub"] == "alice"
    assert auth.decode(token)["sub"] == "alice"  # from the cache
    monkeypatch.setattr("simplew.auth.time.time", lambda: now + 120)
    with pytest.raises(Unauthorized, match="expired"):
        auth.decode(token)


def test_not_yet_valid_and_wrong_algorithm():
    auth = JwtAuth(SECRET)
    with pytest.raises(Unauthorized, match="not valid yet"):
        auth.decode(make_token(nbf=int(time.time()) + 300))
    hs512 = pyjwt.encode({"sub": "a"}, SECRET + SECRET, algorithm="HS512")
    with pytest.raises(Unauthorized, match="invalid JWT"):
        auth.decode(hs512)
    assert JwtAuth(SECRET + SECRET, algorithms=["HS256", "HS512"]).decode(hs512)["sub"] == "a"


def test_issuer_and_audience():
    auth = JwtAuth(SECRET, issuer="simplew", audience="ws")
    assert auth.decode(make_token(iss="simplew", aud="ws"))["sub"] == "alice"
    with pytest.raises(Unauthorized, match="invalid JWT"):
        auth.decode(make_token(iss="other", aud="ws"))
    with pytest.raises(ValueError):
        JwtAuth(SECRET, algorithms=["none"])


def test_header_parsing():
    assert token_from_headers({"authorization": "Bearer abc.def.ghi"}) == "abc.def.ghi"
    assert token_from_headers({"authorization": "bearer   xyz "}) == "xyz"
    assert token_from_headers({"authorization": "Basic eDp5"}) is None
    assert token_from_headers({"sec-websocket-protocol": "chat, bearer, t.o.k"}) == "t.o.k"
    assert token_from_headers({"sec-websocket-protocol": "bearer.t.o.k"}) == "t.o.k"
    assert token_from_headers({"sec-websocket-protocol": "bearer"}) is None
    assert token_from_headers({}) is None
    assert select_subprotocol("chat, bearer, t.o.k") == "bearer"
    assert select_subprotocol("bearer.t.o.k") == "bearer.t.o.k"
    assert select_subprotocol("chat") is None
