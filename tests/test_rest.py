"""REST controllers, inline handlers and CORS (simplew.rest) against a real server.

Requests go out with http.client (and raw sockets for pipelining); the
multicast check uses a websockets client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum, IntFlag
from http.client import HTTPConnection
from typing import Any

import pytest
from websockets.sync.client import connect

from simplew import Controller, HttpError, Request, Response, require_jwt, route
from simplew.rest import http_routes_of

TIMEOUT = 5.0
JSON = {"Content-Type": "application/json"}


# -- clients -------------------------------------------------------------------


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self.headers
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.headers} {self.body[:100]!r}>"


def call(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> Reply:
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        headers = {"Content-Type": "application/json", **(headers or {})}
    conn = HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """``count`` HTTP/1.1 responses (status, body) off one socket, in arrival order."""
    buf = b""
    out = []
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(out)} responses"
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        while len(buf) < length:
            chunk = sock.recv(65536)
            assert chunk
            buf += chunk
        out.append((status, buf[:length]))
        buf = buf[length:]
    return out


# -- controllers (class routes unique to this module: the registry is global) -----


class Color(Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Item:
    name: str
    price: float = 0.0
    tags: list[str] = field(default_factory=list)
    id: uuid.UUID | None = None


class Perm(IntFlag):
    READ = 1
    WRITE = 2


ITEMS: dict[int, Item] = {}


@route("/rest-items")
class ItemController(Controller):
    @route("GET", "/{id}")
    def get(self, id: int, verbose: bool = False) -> Any:
        item = ITEMS.get(id)
        if item is None:
            raise HttpError(404, f"no item {id}")
        return {"id": id, "item": item, "verbose": verbose}

    @route("GET", "/")
    def search(
        self,
        q: str,
        limit: int = 10,
        ratio: float = 1.0,
        color: Color = Color.RED,
        ids: list[int] | None = None,
    ) -> dict:
        return {"q": q, "limit": limit, "ratio": ratio, "color": color, "ids": ids}

    @route("POST", "/")
    def create(self, item: Item) -> Response:
        new_id = len(ITEMS) + 1
        item.id = uuid.UUID(int=new_id)
        ITEMS[new_id] = item
        return Response(201, item, {"Location": f"/api/rest-items/{new_id}"})

    @route("PUT", "/{id}")
    def replace(self, id: int, body: dict) -> dict:
        return {"replaced": id, "with": body}

    @route("PATCH", "/{id}")
    def patch(self, id: int, body: Any = None) -> dict:
        return {"patched": id, "body": body}

    @route("DELETE", "/{id}")
    def delete(self, id: int) -> None:
        ITEMS.pop(id, None)

    @route("POST", "/perm")
    def perm(self, body: Perm) -> dict:
        return {"perm": int(body), "read": Perm.READ in body}

    @route("GET", "/by-uuid/{key}")
    def by_uuid(self, key: uuid.UUID, flag: bool | None = None) -> dict:
        return {"key": key, "version": key.version, "flag": flag}


@route("/rest-misc")
class MiscController(Controller):
    seen_before: list[str] = []

    def on_before_method(self) -> None:
        MiscController.seen_before.append(self.request.path)
        if self.request.headers.get("x-deny"):
            raise HttpError(403, "denied by on_before_method")

    @route("GET", "/text")
    def text(self) -> str:
        return "plain text é"

    @route("GET", "/bytes")
    def raw(self) -> bytes:
        return b"\x00\x01\x02"

    @route("GET", "/list")
    def a_list(self) -> list:
        return [1, "two", {"three": 3}]

    @route("POST", "/echo-request")
    def echo_request(self) -> dict:
        r = self.request
        return {
            "method": r.method,
            "path": r.path,
            "query": r.query,
            "header": r.headers.get("x-test"),
            "body": r.body.decode(),
        }

    @route("POST", "/raw-body")
    def raw_body(self, body: bytes) -> dict:
        return {"size": len(body)}

    @route("POST", "/text-body")
    def text_body(self, body: str, request: Request) -> dict:
        return {"text": body, "method": request.method}

    @route("GET", "/boom")
    def boom(self) -> None:
        raise ZeroDivisionError("boom")

    @route("GET", "/not-finite/{how}")
    def not_finite(self, how: str) -> Any:
        x = float(self.request.query.get("x", "nan"))  # not a float parameter: unchecked
        if how == "dict":
            return {"x": x}
        if how == "list":
            return [1, [x]]
        return Response(201, {"deep": {"x": x}})

    @route("GET", "/teapot")
    def teapot(self) -> Response:
        return Response(418, "short and stout", {"X-Kind": "teapot"})

    @route("GET", "/custom")
    def custom(self) -> Response:
        return Response(200, "<p>hi</p>", content_type="text/html; charset=utf-8")

    @route("GET", "/files/{name}.txt")
    def file(self, name: str) -> str:
        return f"file {name}"

    @route("GET", "/users/{user}/posts/{post}")
    def post(self, user: str, post: int) -> dict:
        return {"user": user, "post": post}


@route("/rest-async")
class AsyncController(Controller):
    @route("GET", "/sleep/{ms}")
    async def sleep(self, ms: int) -> dict:
        await asyncio.sleep(ms / 1000)
        return {"slept": ms}

    @route("GET", "/fast/{n}")
    def fast(self, n: int) -> dict:
        return {"fast": n}

    @route("GET", "/boom")
    async def boom(self) -> None:
        await asyncio.sleep(0)
        raise ValueError("async boom")

    @route("POST", "/echo")
    async def echo(self, body: Any) -> Any:
        await asyncio.sleep(0.01)
        return body


@route("/rest-news")
class NewsController(Controller):
    @route("POST", "/publish")
    def publish(self, body: dict) -> dict:
        self.server.multicast_text(json.dumps(body))
        return {"published": True, "clients": len(self.server.hub)}


def configure(server) -> None:
    server.add_dynamic_content(ItemController, "/api")
    server.add_dynamic_content(MiscController, "/api")
    server.add_dynamic_content(AsyncController, "/api")


@pytest.fixture
def server(make_server):
    ITEMS.clear()
    return make_server(configure)


# -- routing and argument mapping ---------------------------------------------------


def test_path_and_query_parameters_are_converted(server):
    ITEMS[7] = Item("seven", 7.5)
    r = call(server.port, "GET", "/api/rest-items/7?verbose=true")
    assert r.status == 200
    assert r.json() == {
        "id": 7,
        "item": {"name": "seven", "price": 7.5, "tags": [], "id": None},
        "verbose": True,
    }
    r = call(server.port, "GET", "/api/rest-items?q=a%20b&limit=3&ratio=0.5&color=blue&ids=1&ids=2")
    assert r.json() == {"q": "a b", "limit": 3, "ratio": 0.5, "color": "blue", "ids": [1, 2]}
    r = call(server.port, "GET", "/api/rest-items?q=x")  # defaults
    assert r.json() == {"q": "x", "limit": 10, "ratio": 1.0, "color": "red", "ids": None}
    key = uuid.uuid4()
    r = call(server.port, "GET", f"/api/rest-items/by-uuid/{key}?flag=0")
    assert r.json() == {"key": str(key), "version": 4, "flag": False}


def test_bad_and_missing_parameters_are_400_naming_them(server):
    r = call(server.port, "GET", "/api/rest-items/seven")
    assert r.status == 400
    assert r.json()["error"] == "bad_parameter" and r.json()["parameter"] == "id"
    assert "int" in r.json()["message"] and "'seven'" in r.json()["message"]
    r = call(server.port, "GET", "/api/rest-items/7?verbose=maybe")
    assert r.status == 400 and r.json()["parameter"] == "verbose"
    r = call(server.port, "GET", "/api/rest-items?q=x&limit=ten")
    assert r.status == 400 and r.json()["parameter"] == "limit"
    r = call(server.port, "GET", "/api/rest-items?q=x&color=green")
    assert r.status == 400 and r.json()["parameter"] == "color"
    r = call(server.port, "GET", "/api/rest-items/by-uuid/not-a-uuid")
    assert r.status == 400 and r.json()["parameter"] == "key"
    r = call(server.port, "GET", "/api/rest-items?limit=3")
    assert r.status == 400
    assert r.json() == {
        "error": "missing_parameter",
        "parameter": "q",
        "message": "missing required parameter 'q'",
    }


def test_json_body_maps_onto_a_dataclass(server):
    r = call(server.port, "POST", "/api/rest-items", {"name": "pen", "price": 2, "tags": ["a"]})
    assert r.status == 201
    assert r.headers["location"] == "/api/rest-items/1"
    assert r.json() == {
        "name": "pen",
        "price": 2.0,
        "tags": ["a"],
        "id": "00000000-0000-0000-0000-000000000001",
    }
    assert ITEMS[1] == Item("pen", 2.0, ["a"], uuid.UUID(int=1))
    r = call(server.port, "GET", "/api/rest-items/1")
    assert r.json()["item"]["name"] == "pen"


def test_bad_bodies_are_400(server):
    r = call(server.port, "POST", "/api/rest-items", {"name": 3})
    assert r.status == 400
    assert r.json()["error"] == "bad_body" and "body.name" in r.json()["message"]
    r = call(server.port, "POST", "/api/rest-items", {"price": 1})
    assert r.status == 400 and "missing field 'name'" in r.json()["message"]
    r = call(server.port, "POST", "/api/rest-items", {"name": "x", "colour": "red"})
    assert r.status == 400 and "colour" in r.json()["message"]
    r = call(server.port, "POST", "/api/rest-items", b"{not json", JSON)
    assert r.status == 400 and r.json()["error"] == "bad_json"
    r = call(server.port, "POST", "/api/rest-items", b"")
    assert r.status == 400 and r.json()["error"] == "bad_body"
    assert not ITEMS


def test_a_json_body_needs_a_json_content_type(server):
    """A body bound as JSON is read only under a JSON Content-Type: a cross-site form or
    ``fetch(..., {mode: "no-cors"})`` (text/plain, form types, or none at all for a Blob)
    reaches no handler, so cookies cannot carry a forged call (as FastAPI's CVE-2021-32677)."""
    body = b'{"name": "forged"}'
    for content_type in (
        "text/plain",
        "text/plain;charset=UTF-8",
        "text/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "text/json",
        "application/+json",
        "application/json, text/plain",
    ):
        r = call(server.port, "POST", "/api/rest-items", body, {"Content-Type": content_type})
        assert r.status == 415, (content_type, r)
        assert r.json() == {
            "error": "unsupported_media_type",
            "message": "the request body must be JSON (Content-Type: application/json), "
            f"got {content_type!r}",
            "parameter": "item",
        }
    r = call(server.port, "POST", "/api/rest-items", body)  # no Content-Type (a Blob body)
    assert r.status == 415 and r.json()["message"].endswith("got no Content-Type")
    r = call(server.port, "PUT", "/api/rest-items/4", body, {"Content-Type": "text/plain"})
    assert r.status == 415 and r.json()["parameter"] == "body"  # a parameter named body
    assert not ITEMS
    for content_type in (
        "application/json",
        "Application/JSON; charset=utf-8",
        " application/json ;charset=UTF-8",
        "application/vnd.api+json",
        "application/merge-patch+JSON",
    ):
        r = call(server.port, "PUT", "/api/rest-items/4", body, {"Content-Type": content_type})
        assert r.json() == {"replaced": 4, "with": {"name": "forged"}}, content_type
    # no body: nothing to read, whatever the type
    r = call(server.port, "PATCH", "/api/rest-items/4", headers={"Content-Type": "text/plain"})
    assert r.json() == {"patched": 4, "body": None}
    r = call(server.port, "POST", "/api/rest-items", b"", {"Content-Type": "text/plain"})
    assert r.status == 400 and r.json()["error"] == "bad_body"
    # raw bodies (bytes, str) take any type, as before
    r = call(server.port, "POST", "/api/rest-misc/raw-body", body, {"Content-Type": "text/plain"})
    assert r.json() == {"size": len(body)}
    r = call(server.port, "POST", "/api/rest-misc/text-body", b"hi", {"Content-Type": "text/xml"})
    assert r.json() == {"text": "hi", "method": "POST"}


def test_numbers_in_parameters_are_ascii_and_finite(server):
    """``int`` takes ASCII digits with an optional sign, not all that ``int()`` takes;
    ``float`` a finite decimal number: no NaN or infinity, which no JSON can answer."""
    r = call(server.port, "GET", "/api/rest-items?q=x&limit=-3&ratio=%2B1.5e2")
    assert r.status == 200 and (r.json()["limit"], r.json()["ratio"]) == (-3, 150.0)
    r = call(server.port, "GET", "/api/rest-items?q=x&limit=%2B7&ratio=.5&ids=007&ids=-0")
    assert (r.json()["limit"], r.json()["ratio"], r.json()["ids"]) == (7, 0.5, [7, 0])
    for limit in ("%D9%A7", "%EF%BC%97", "1_000", "%207", "7%20", "0x10", "", "-", "%2B-1"):
        r = call(server.port, "GET", f"/api/rest-items?q=x&limit={limit}")
        assert r.status == 400, (limit, r)
        assert r.json()["error"] == "bad_parameter" and r.json()["parameter"] == "limit"
    for ratio in ("1e999", "-1e999", "nan", "NaN", "inf", "-Infinity", "1_0", "%D9%A1.5", "%201"):
        r = call(server.port, "GET", f"/api/rest-items?q=x&ratio={ratio}")
        assert r.status == 400, (ratio, r)
        assert r.json()["error"] == "bad_parameter" and r.json()["parameter"] == "ratio"
    r = call(server.port, "GET", "/api/rest-items?q=x&ids=1&ids=%D9%A2")  # list[int] items
    assert r.status == 400 and r.json()["parameter"] == "ids"
    ITEMS[7] = Item("seven")
    assert call(server.port, "GET", "/api/rest-items/7").status == 200
    for path in ("%D9%A7", "%E0%A5%AD", "%207", "7_0"):  # Arabic-Indic, Devanagari 7
        r = call(server.port, "GET", f"/api/rest-items/{path}")
        assert r.status == 400 and r.json()["parameter"] == "id", (path, r)
    key = "%EF%BC%91" * 32  # fullwidth digits, which int(x, 16) also takes
    r = call(server.port, "GET", f"/api/rest-items/by-uuid/{key}")
    assert r.status == 400 and r.json()["parameter"] == "key"
    r = call(server.port, "GET", "/api/rest-items/by-uuid/" + "1234_678" * 4)
    assert r.status == 400 and r.json()["parameter"] == "key"


def test_json_bodies_hold_no_nan_or_infinity(server):
    for number in ("NaN", "Infinity", "-Infinity", "1e999", "-1E400"):
        body = '{"name": "x", "price": ' + number + "}"
        r = call(server.port, "POST", "/api/rest-items", body, JSON)
        assert r.status == 400, (number, r)
        assert r.json() == {
            "error": "bad_json",
            "message": f"the request body is not valid JSON: {number} is "
            + ("not JSON" if number[-1] in "Ny" else "out of range for a float")
            + " (numbers must be finite)",
            "parameter": "item",
        }
        r = call(server.port, "PUT", "/api/rest-items/1", '{"a": [' + number + "]}", JSON)
        assert r.status == 400 and r.json()["error"] == "bad_json", (number, r)
    # an integer too large for a float is a body that does not fit, not a handler error
    r = call(
        server.port, "POST", "/api/rest-items", '{"name": "x", "price": 1' + "0" * 400 + "}", JSON
    )
    assert r.status == 400 and r.json() == {
        "error": "bad_body",
        "message": "body.price: number out of range for float",
        "parameter": "item",
    }
    assert not ITEMS
    r = call(server.port, "POST", "/api/rest-items", '{"name": "x", "price": 1e308}', JSON)
    assert r.status == 201 and r.json()["price"] == 1e308


def test_a_handler_answering_nan_or_infinity_gets_500(make_server, caplog):
    """NaN and Infinity are never written: the answer would be JSON no client parses."""
    caplog.set_level(logging.ERROR, logger="simplew.rest")

    def configure_inline(s) -> None:
        configure(s)
        s.map_get("/inline-nan", lambda: {"x": float("nan")})  # the bare inline path
        s.map_get("/inline-list", lambda: [float("-inf")])

    server = make_server(configure_inline)
    targets = [
        ("/api/rest-misc/not-finite/dict", "GET /api/rest-misc/not-finite/{how}"),
        ("/api/rest-misc/not-finite/list?x=inf", "GET /api/rest-misc/not-finite/{how}"),
        ("/api/rest-misc/not-finite/response?x=-inf", "GET /api/rest-misc/not-finite/{how}"),
        ("/inline-nan", "GET /inline-nan"),
        ("/inline-list", "GET /inline-list"),
    ]
    for path, name in targets:
        r = call(server.port, "GET", path)
        assert r.status == 500, (path, r)
        assert r.json() == {
            "error": "handler_error",
            "message": f"ValueError in handler for {name}",
        }
    assert server.http_stats.handler_errors == len(targets)
    logged = [rec for rec in caplog.records if rec.name == "simplew.rest"]
    assert len(logged) == len(targets) and all(rec.exc_info[0] is ValueError for rec in logged)
    r = call(server.port, "GET", "/api/rest-misc/not-finite/dict?x=1e300")
    assert r.status == 200 and r.json() == {"x": 1e300}


def test_an_int_flag_body_takes_declared_bits_only(server):
    """Any integer made an IntFlag member the enum kept for ever (-5 became 3)."""
    r = call(server.port, "POST", "/api/rest-items/perm", 3)
    assert r.status == 200 and r.json() == {"perm": 3, "read": True}
    cached = len(Perm._value2member_map_)
    for value in (-5, 4, 1 << 40, True):
        r = call(server.port, "POST", "/api/rest-items/perm", value)
        assert r.status == 400, (value, r)
        assert r.json() == {
            "error": "bad_body",
            "message": f"body: expected a combination of 1, 2 for Perm, got {value!r}",
            "parameter": "body",
        }
    assert len(Perm._value2member_map_) == cached


def test_body_parameter_put_patch_delete(server):
    r = call(server.port, "PUT", "/api/rest-items/4", {"a": [1, 2]})
    assert r.status == 200 and r.json() == {"replaced": 4, "with": {"a": [1, 2]}}
    r = call(server.port, "PUT", "/api/rest-items/4", [1, 2])  # not a dict
    assert r.status == 400 and r.json()["error"] == "bad_body"
    r = call(server.port, "PATCH", "/api/rest-items/4", "null", JSON)
    assert r.json() == {"patched": 4, "body": None}
    r = call(server.port, "PATCH", "/api/rest-items/4")  # optional body
    assert r.json() == {"patched": 4, "body": None}
    ITEMS[4] = Item("x")
    r = call(server.port, "DELETE", "/api/rest-items/4")
    assert r.status == 204 and r.body == b"" and "content-type" not in r.headers
    assert 4 not in ITEMS


def test_return_values_become_responses(server):
    r = call(server.port, "GET", "/api/rest-misc/text")
    assert r.status == 200 and r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.body.decode() == "plain text é"
    r = call(server.port, "GET", "/api/rest-misc/bytes")
    assert r.headers["content-type"] == "application/octet-stream" and r.body == b"\x00\x01\x02"
    r = call(server.port, "GET", "/api/rest-misc/list")
    assert r.json() == [1, "two", {"three": 3}]
    r = call(server.port, "GET", "/api/rest-misc/teapot")
    assert (r.status, r.body, r.headers["x-kind"]) == (418, b"short and stout", "teapot")
    r = call(server.port, "GET", "/api/rest-misc/custom")
    assert r.headers["content-type"] == "text/html; charset=utf-8" and r.body == b"<p>hi</p>"


def test_self_request_and_request_parameters(server):
    r = call(
        server.port, "POST", "/api/rest-misc/echo-request?a=1&b=two", b"payload", {"X-Test": "yes"}
    )
    assert r.json() == {
        "method": "POST",
        "path": "/api/rest-misc/echo-request",
        "query": {"a": "1", "b": "two"},
        "header": "yes",
        "body": "payload",
    }
    r = call(server.port, "POST", "/api/rest-misc/raw-body", b"\xff" * 100)
    assert r.json() == {"size": 100}
    r = call(server.port, "POST", "/api/rest-misc/text-body", "héllo".encode())
    assert r.json() == {"text": "héllo", "method": "POST"}
    r = call(server.port, "POST", "/api/rest-misc/text-body", b"\xff\xfe")
    assert r.status == 400 and r.json()["error"] == "bad_body"


def test_parameterised_paths(server):
    r = call(server.port, "GET", "/api/rest-misc/files/report.txt")
    assert r.body == b"file report"
    r = call(server.port, "GET", "/api/rest-misc/users/ann%20b/posts/12")
    assert r.json() == {"user": "ann b", "post": 12}
    r = call(server.port, "GET", "/api/rest-misc/users/ann/posts/12/")  # trailing slash
    assert r.json() == {"user": "ann", "post": 12}
    r = call(server.port, "GET", "/api/rest-misc/users/ann/posts")
    assert r.status == 404


def test_on_before_method_runs_and_may_refuse(server):
    MiscController.seen_before.clear()
    assert call(server.port, "GET", "/api/rest-misc/text").status == 200
    assert MiscController.seen_before == ["/api/rest-misc/text"]
    r = call(server.port, "GET", "/api/rest-misc/text", headers={"X-Deny": "1"})
    assert r.status == 403
    assert r.json() == {"error": "forbidden", "message": "denied by on_before_method"}
    r = call(server.port, "GET", "/api/rest-items/99")  # HttpError in a handler
    assert r.status == 404 and r.json() == {"error": "not_found", "message": "no item 99"}


def test_unknown_routes_are_404_json_and_wrong_methods_405(server):
    r = call(server.port, "GET", "/api/nothing/here")
    assert r.status == 404
    assert r.json()["error"] == "not_found" and r.json()["path"] == "/api/nothing/here"
    r = call(server.port, "GET", "/elsewhere")  # outside the prefix
    assert r.status == 404 and r.headers["content-type"].startswith("text/plain")
    r = call(server.port, "POST", "/api/rest-misc/text")
    assert r.status == 405
    assert r.headers["allow"] == "GET, HEAD, OPTIONS"
    assert r.json()["error"] == "method_not_allowed"
    r = call(server.port, "DELETE", "/api/rest-items")
    assert r.status == 405 and r.headers["allow"] == "GET, HEAD, POST, OPTIONS"
    r = call(server.port, "OPTIONS", "/api/rest-items/3")
    assert r.status == 204
    assert r.headers["allow"] == "GET, HEAD, PUT, DELETE, PATCH, OPTIONS"


def test_head_uses_the_get_route_without_a_body(server):
    ITEMS[1] = Item("a")
    conn = HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.request("HEAD", "/api/rest-items/1")
    response = conn.getresponse()
    assert response.status == 200 and response.read() == b""
    assert int(response.getheader("content-length")) > 0
    conn.close()


def test_handler_exception_is_500_json_and_logged(server, caplog):
    caplog.set_level(logging.ERROR, logger="simplew.rest")
    r = call(server.port, "GET", "/api/rest-misc/boom")
    assert r.status == 500
    assert r.json() == {
        "error": "handler_error",
        "message": "ZeroDivisionError in handler for GET /api/rest-misc/boom",
    }
    assert any(
        rec.name == "simplew.rest" and rec.exc_info and rec.exc_info[0] is ZeroDivisionError
        for rec in caplog.records
    )
    r = call(server.port, "GET", "/api/rest-async/boom")
    assert r.status == 500 and "ValueError" in r.json()["message"]
    assert server.http_stats.handler_errors == 2
    assert call(server.port, "GET", "/api/rest-misc/text").status == 200  # still serving


# -- async handlers and ordering --------------------------------------------------


def test_async_handlers_are_awaited(server):
    r = call(server.port, "GET", "/api/rest-async/sleep/20")
    assert r.status == 200 and r.json() == {"slept": 20}
    r = call(server.port, "POST", "/api/rest-async/echo", {"x": [1, 2]})
    assert r.json() == {"x": [1, 2]}


def test_pipelined_responses_keep_request_order_behind_async_handlers(server):
    """A slow async answer holds the fast ones pipelined behind it: order is request order."""
    requests = [
        "GET /api/rest-async/sleep/150",
        "GET /api/rest-async/fast/1",
        "GET /api/rest-async/sleep/10",
        "GET /api/rest-misc/text",
        "POST /api/rest-async/echo",
        "GET /api/rest-async/fast/2",
        "GET /api/rest-async/boom",
        "GET /api/rest-async/fast/3",
    ]
    data = b""
    for line in requests:
        body, ctype = (
            (b'"e"', "Content-Type: application/json\r\n") if "POST" in line else (b"", "")
        )
        data += (
            f"{line} HTTP/1.1\r\nHost: x\r\n{ctype}Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        got = read_responses(sock, len(requests))
    assert [body for _, body in got] == [
        b'{"slept":150}',
        b'{"fast":1}',
        b'{"slept":10}',
        "plain text é".encode(),
        b"e",  # str: text
        b'{"fast":2}',
        b'{"error":"handler_error","message":"ValueError in handler for GET /api/rest-async/boom"}',
        b'{"fast":3}',
    ]
    assert [s for s, _ in got] == [200, 200, 200, 200, 200, 200, 500, 200]


def test_a_slow_async_handler_does_not_block_other_connections(server):
    results: dict[str, float] = {}

    def slow() -> None:
        call(server.port, "GET", "/api/rest-async/sleep/400")
        results["slow"] = time.monotonic()

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.05)
    assert call(server.port, "GET", "/api/rest-async/fast/9").json() == {"fast": 9}
    results["fast"] = time.monotonic()
    thread.join()
    assert results["fast"] < results["slow"]


def test_client_closing_during_an_async_handler(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /api/rest-async/sleep/100 HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)  # half-close: the answer must still come
        assert read_responses(sock, 1) == [(200, b'{"slept":100}')]
        assert sock.recv(100) == b""  # then the server closes
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /api/rest-async/sleep/50 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.1)  # the answer finds the connection gone
    assert call(server.port, "GET", "/api/rest-async/fast/1").status == 200


def test_many_requests_pipelined_behind_an_async_handler(server):
    """Past a few queued requests reading pauses, and resumes once the answer is out."""
    data = b"GET /api/rest-async/sleep/100 HTTP/1.1\r\nHost: x\r\n\r\n"
    for i in range(60):
        path = f"/api/rest-async/sleep/{i % 3}" if i % 5 == 0 else f"/api/rest-async/fast/{i}"
        data += f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        got = read_responses(sock, 61)
    assert got[0] == (200, b'{"slept":100}')
    for i, (status, body) in enumerate(got[1:]):
        expected = {"slept": i % 3} if i % 5 == 0 else {"fast": i}
        assert (status, json.loads(body)) == (200, expected)


def test_an_async_handler_slower_than_idle_timeout_still_answers(make_server):
    server = make_server(configure, idle_timeout=0.2, header_timeout=0.2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"GET /api/rest-async/sleep/600 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /api/rest-async/fast/2 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert read_responses(sock, 2) == [(200, b'{"slept":600}'), (200, b'{"fast":2}')]
        started = time.monotonic()
        assert sock.recv(100) == b""  # then the idle timeout closes it
        assert time.monotonic() - started < 2


# -- registration ------------------------------------------------------------------


def test_add_dynamic_content_registers_every_controller(make_server):
    server = make_server(lambda s: s.AddDynamicContent("/all"))
    routes = set(server._router.routes())
    assert {
        "GET /all/rest-items/{id}",
        "POST /all/rest-items",
        "GET /all/rest-misc/text",
        "POST /all/rest-news/publish",
        "GET /all/rest-async/sleep/{ms}",
    } <= routes
    assert not any(r.startswith("WEBSOCKET") for r in routes)
    assert call(server.port, "GET", "/all/rest-async/fast/5").json() == {"fast": 5}


def test_http_routes_of_skips_websocket_routes():
    class Mixed(Controller):
        @route("WEBSOCKET", "/ws")
        def ws(self, message) -> None: ...

        @route("GET", "/get")
        def get(self) -> None: ...

    try:
        assert [(m, p) for m, p, _ in http_routes_of(Mixed)] == [("GET", "/get")]
    finally:
        Controller._registry.remove(Mixed)


def test_two_handlers_for_one_route_fail_at_start(make_server):
    def configure(s):
        s.map_get("/dup", lambda: 1)
        s.map_get("/dup", lambda: 2)

    with pytest.raises(ValueError, match="two handlers answer GET /dup"):
        make_server(configure)


def test_map_get_and_map_post(make_server):
    def configure(s):
        def hello(name: str, shout: bool = False) -> str:
            return name.upper() if shout else name

        s.map_get("/hello/{name}", hello)
        s.MapPost("/sum", lambda body: {"sum": sum(body)})

        @s.map_get("/square/{n}")
        def square(n: int) -> dict:
            return {"square": n * n}

        @s.map_post("/async-double")
        async def double(x: float) -> dict:
            await asyncio.sleep(0)
            return {"double": x * 2}

    server = make_server(configure)
    assert call(server.port, "GET", "/hello/ann").body == b"ann"
    assert call(server.port, "GET", "/hello/ann?shout=true").body == b"ANN"
    assert call(server.port, "POST", "/sum", [1, 2, 3]).json() == {"sum": 6}
    assert call(server.port, "GET", "/square/12").json() == {"square": 144}
    r = call(server.port, "GET", "/square/x")
    assert r.status == 400 and r.json()["parameter"] == "n"
    assert call(server.port, "POST", "/async-double?x=1.5").json() == {"double": 3.0}
    assert call(server.port, "GET", "/sum").status == 405
    assert call(server.port, "GET", "/nothing").status == 404


def test_routes_added_while_serving(make_server):
    server = make_server()
    server.map_get("/late", lambda: "late")
    assert call(server.port, "GET", "/late").body == b"late"


def test_routes_with_static_content_and_websocket(make_server, tmp_path):
    (tmp_path / "index.html").write_text("<h1>home</h1>")
    (tmp_path / "page.txt").write_text("static page")

    def configure(s):
        s.add_static_content(str(tmp_path), "/")
        s.add_dynamic_content(MiscController, "/api")
        s.add_websocket_content("/ws", on_message=lambda session, data: None)

    server = make_server(configure)
    assert call(server.port, "GET", "/page.txt").body == b"static page"
    assert call(server.port, "GET", "/api/rest-misc/text").status == 200
    assert call(server.port, "GET", "/ws").status == 426
    assert call(server.port, "GET", "/api/missing").json()["error"] == "not_found"
    assert call(server.port, "GET", "/missing.txt").status == 404


# -- HTTP → WebSocket ----------------------------------------------------------------


def test_http_post_multicasts_to_websocket_clients(make_server):
    def configure(s):
        s.add_websocket_content("/ws", on_message=lambda session, data: None)
        s.add_dynamic_content(NewsController, "/api")

    server = make_server(configure)
    url = f"ws://127.0.0.1:{server.port}/ws"
    with connect(url, open_timeout=TIMEOUT) as a, connect(url, open_timeout=TIMEOUT) as b:
        deadline = time.monotonic() + TIMEOUT
        while len(server.hub) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = call(server.port, "POST", "/api/rest-news/publish", {"headline": "hello"})
        assert r.json() == {"published": True, "clients": 2}
        assert json.loads(a.recv(timeout=TIMEOUT)) == {"headline": "hello"}
        assert json.loads(b.recv(timeout=TIMEOUT)) == {"headline": "hello"}


# -- CORS ---------------------------------------------------------------------------


def test_cors_any_origin(make_server):
    def configure(s):
        s.add_dynamic_content(MiscController, "/api")
        s.AddCORS(max_age=600)

    server = make_server(configure)
    r = call(
        server.port,
        "OPTIONS",
        "/api/rest-misc/echo-request",
        headers={
            "Origin": "https://a.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-test",
        },
    )
    assert r.status == 204 and r.body == b""
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == "content-type, x-test"
    assert r.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in r.headers
    r = call(server.port, "GET", "/api/rest-misc/text", headers={"Origin": "https://a.example"})
    assert r.status == 200 and r.headers["access-control-allow-origin"] == "*"
    r = call(server.port, "GET", "/api/rest-misc/nope", headers={"Origin": "https://a.example"})
    assert r.status == 404 and r.headers["access-control-allow-origin"] == "*"
    r = call(server.port, "GET", "/api/rest-misc/text")  # same-origin request
    assert r.headers["access-control-allow-origin"] == "*"


def test_cors_origin_list_echoes_and_varies(make_server):
    def configure(s):
        s.add_dynamic_content(AsyncController, "/api")
        s.add_cors(
            origin=["https://a.example", "https://b.example"],
            methods=["GET", "POST"],
            headers="Content-Type",
            credentials=True,
            expose_headers=["X-Total"],
        )

    server = make_server(configure)
    preflight = {"Origin": "https://b.example", "Access-Control-Request-Method": "POST"}
    r = call(server.port, "OPTIONS", "/api/rest-async/echo", headers=preflight)
    assert r.status == 204
    assert r.headers["access-control-allow-origin"] == "https://b.example"
    assert r.headers["access-control-allow-methods"] == "GET, POST"
    assert r.headers["access-control-allow-headers"] == "Content-Type"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["vary"] == "Origin"
    r = call(
        server.port,
        "OPTIONS",
        "/api/rest-async/echo",
        headers={**preflight, "Origin": "https://evil.example"},
    )
    assert r.status == 403 and "access-control-allow-origin" not in r.headers
    # actual requests, async handler included
    r = call(server.port, "GET", "/api/rest-async/sleep/1", headers={"Origin": "https://a.example"})
    assert r.status == 200
    assert r.headers["access-control-allow-origin"] == "https://a.example"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-expose-headers"] == "X-Total"
    assert r.headers["vary"] == "Origin"
    r = call(
        server.port, "GET", "/api/rest-async/fast/1", headers={"Origin": "https://evil.example"}
    )
    assert r.status == 200 and "access-control-allow-origin" not in r.headers
    assert r.headers["vary"] == "Origin"


# -- JWT (simplew.auth) on REST routes ------------------------------------------------


@route("/rest-secure")
class SecureController(Controller):
    @route("GET", "/open")
    def open(self) -> dict:
        return {"sub": (self.jwt or {}).get("sub")}

    @route("GET", "/closed")
    @require_jwt
    def closed(self) -> dict:
        return {"sub": self.jwt["sub"]}


def test_require_jwt_on_rest_routes(make_server):
    pyjwt = pytest.importorskip("jwt")
    server = make_server(
        lambda s: (
            s.add_dynamic_content(SecureController, "/api"),
            s.set_token("s3cret-key-for-tests-0123456789abcdef"),
        )
    )
    token = pyjwt.encode({"sub": "ann"}, "s3cret-key-for-tests-0123456789abcdef", algorithm="HS256")
    bearer = {"Authorization": f"Bearer {token}"}
    assert call(server.port, "GET", "/api/rest-secure/open").json() == {"sub": None}
    assert call(server.port, "GET", "/api/rest-secure/open", headers=bearer).json() == {
        "sub": "ann"
    }
    r = call(server.port, "GET", "/api/rest-secure/closed")
    assert r.status == 401 and r.json()["error"] == "unauthorized"
    r = call(server.port, "GET", "/api/rest-secure/closed", headers={"Authorization": "Bearer x"})
    assert r.status == 401
    assert call(server.port, "GET", "/api/rest-secure/closed", headers=bearer).json() == {
        "sub": "ann"
    }


def test_json_bodies_are_the_stdlib_encoding_byte_for_byte():
    """msgspec writes plain values; the rest goes through json with the server's default."""
    import datetime as dt

    from simplew.rest import compile_router
    from simplew.server import _json_default

    router = compile_router([], [("GET", "/x", lambda: None)], None, _json_default)
    stdlib = json.JSONEncoder(default=_json_default, ensure_ascii=False, separators=(",", ":"))
    deep: Any = 1
    for _ in range(40):  # deeper than msgspec is trusted with
        deep = [deep]
    values = [
        {"message": "Hello, World!"},
        {"é": 'ü\u2028\x00"\\'},
        [1, -2, 2**70, True, None],
        {
            "f": [
                0.0,
                -0.0,
                0.1,
                1e-4,
                9.999e15,
                1e16,
                1e-5,
                1.5e-7,
                1e300,
            ]
        },
        {1: "int key"},
        {True: 1},
        {None: 2},
        {1.5: 3},
        (1, 2),
        {"t": (1, 2)},
        {"s": {3}},
        {"when": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)},
        {"d": dt.date(2024, 1, 2)},
        {"u": uuid.UUID(int=7)},
        {"e": Color.RED},
        {"deep": deep},
        "text",
        5,
        1e20,
        None,
        [],
    ]
    for value in values:
        assert router.json_body(value) == stdlib.encode(value).encode("utf-8"), value
    with pytest.raises(UnicodeEncodeError):  # as before: the handler's failure, a 500
        router.json_body({"bad": "\ud800"})
    for value in ({"f": float("nan")}, [float("inf")], {"t": (float("-inf"),)}):
        with pytest.raises(ValueError, match="not JSON compliant"):  # a 500 too
            router.json_body(value)
