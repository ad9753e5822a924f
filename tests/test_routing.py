"""WebSocket message routing to controllers, with real clients (websockets 17).

A url is endpoint path + class route + method route, matched exactly; every
message that cannot be served is answered with the documented JSON error and
the connection stays open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from websockets.asyncio.client import connect

from helpers import run
from simplew import BodyMappingError, Controller, WebSocketMessage, route

TIMEOUT = 5.0


run = partial(run, timeout=20)  # helpers.run, failing after 20 s rather than 30


def ws_url(server, path: str = "/websocket") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def client(server, path: str = "/websocket", **kwargs):
    kwargs.setdefault("additional_headers", {"X-Test": "yes"})
    return connect(
        ws_url(server, path),
        proxy=None,
        compression=None,
        open_timeout=TIMEOUT,
        max_size=None,
        **kwargs,
    )


async def ask(ws, message: Any) -> Any:
    """Send ``message`` (dict → JSON text) and return the next message received."""
    await ws.send(json.dumps(message) if isinstance(message, dict) else message)
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


async def ask_json(ws, message: Any) -> Any:
    return json.loads(await ask(ws, message))


# -- controllers ---------------------------------------------------------------

EVENTS: list[str] = []
SEEN: dict[str, Any] = {}


@dataclass
class Item:
    name: str
    count: int = 1


@route("/rt")
class RoutingController(Controller):
    instances = 0

    def __init__(self) -> None:
        RoutingController.instances += 1
        self.calls = 0

    def on_before_method(self) -> None:
        EVENTS.append("before")
        if self.request.query.get("deny") == "1":
            raise PermissionError("denied by on_before_method")

    @route("WEBSOCKET", "/index")
    def index(self, message: WebSocketMessage) -> None:
        EVENTS.append("index")
        self.session.send_text("index")

    @route("WEBSOCKET", "/create")
    def create(self, message: WebSocketMessage) -> str:
        return "create"

    @route("WEBSOCKET", "/Case")
    def case(self, message: WebSocketMessage) -> str:
        return "Case"

    @route("WEBSOCKET", "/count")
    def count(self, message: WebSocketMessage) -> dict:
        self.calls += 1
        return {"calls": self.calls, "instances": RoutingController.instances}

    @route("WEBSOCKET", "/context")
    def context(self, message: WebSocketMessage) -> dict:
        SEEN["server"] = self.server
        SEEN["session"] = self.session
        return {
            "path": self.request.path,
            "query": self.request.query,
            "header": self.request.headers.get("x-test"),
            "session": self.session.id,
            "same": self.Session is self.session and self.Request is self.request,
        }

    @route("WEBSOCKET", "/message")
    def message(self, message: WebSocketMessage) -> dict:
        return {
            "url": message.url,
            "body": message.body,
            "jwt": message.jwt,
            "body_is_none": message.body is None,
        }

    @route("WEBSOCKET", "/item")
    def item(self, message: WebSocketMessage) -> dict:
        item = message.map_body(Item)
        return {"name": item.name, "count": item.count}

    @route("WEBSOCKET", "/boom")
    def boom(self, message: WebSocketMessage) -> None:
        raise ZeroDivisionError("boom")

    @route("WEBSOCKET", "/binary")
    def binary(self, message: WebSocketMessage) -> bytes:
        return b"\x00\x01\x02"

    @route("WEBSOCKET", "/nothing")
    def nothing(self, message: WebSocketMessage) -> None:
        return None

    @route("WEBSOCKET", "/unserialisable")
    def unserialisable(self, message: WebSocketMessage) -> Any:
        loop: list = []
        loop.append(loop)
        return loop  # json.dumps fails: circular

    @route("WEBSOCKET", "/not-finite")
    def not_finite(self, message: WebSocketMessage) -> Any:
        return {"x": [1.5, float(message.body)]}  # "nan", "inf": not JSON

    @route("WEBSOCKET", "/async-not-finite")
    async def async_not_finite(self, message: WebSocketMessage) -> Any:
        await asyncio.sleep(0)
        return {"x": float(message.body)}

    @route("WEBSOCKET", "/async")
    async def async_ok(self, message: WebSocketMessage) -> dict:
        await asyncio.sleep(0)
        return {"async": message.body}

    @route("WEBSOCKET", "/async-boom")
    async def async_boom(self, message: WebSocketMessage) -> None:
        await asyncio.sleep(0)
        raise KeyError("async boom")

    @route("WEBSOCKET", "/async-item")
    async def async_item(self, message: WebSocketMessage) -> str:
        await asyncio.sleep(0)
        return message.map_body(Item).name

    @route("WEBSOCKET", "/async-send")
    async def async_send(self, message: WebSocketMessage) -> None:
        await asyncio.sleep(0.01)
        self.session.send_text("sent later")


@route("/solo")
class SoloController(Controller):
    @route("WEBSOCKET", "/hello")
    def hello(self, message: WebSocketMessage) -> str:
        return "solo hello"


@route("/other")
class OtherController(Controller):
    @route("WEBSOCKET", "/hello")
    def hello(self, message: WebSocketMessage) -> str:
        return f"other hello at {self.request.path}"


class SimpleWSpelling(Controller):  # no class route: urls are endpoint + method route
    def OnBeforeMethod(self) -> None:
        EVENTS.append("OnBeforeMethod")

    @route("websocket", "/simplew-spelling")
    def method(self, message: WebSocketMessage) -> None:
        self.Session.SendText("spelled")


@pytest.fixture(autouse=True)
def _reset():
    EVENTS.clear()
    SEEN.clear()
    RoutingController.instances = 0


def every_controller(server) -> None:
    server.add_websocket_content("/websocket")


# -- routing --------------------------------------------------------------------


def test_url_is_endpoint_class_and_method_route(make_server):
    server = make_server(every_controller)

    async def main():
        async with client(server) as ws:
            assert await ask(ws, {"url": "/websocket/rt/index"}) == "index"
            assert await ask(ws, {"url": "/websocket/rt/create"}) == "create"
            assert await ask(ws, {"url": "/websocket/rt/Case"}) == "Case"
            assert await ask(ws, {"url": "/websocket/solo/hello"}) == "solo hello"
            assert await ask(ws, {"url": "/websocket/simplew-spelling"}) == "spelled"
            for wrong in [
                "/websocket/rt/case",
                "/websocket/RT/index",
                "/websocket/rt/index/",
                "/rt/index",
                "/websocket/rt",
                "/websocket/rt/index?x=1",
                "websocket/rt/index",
                "/Websocket/rt/index",
                " /websocket/rt/index",
            ]:
                assert await ask_json(ws, {"url": wrong}) == {
                    "error": "unknown_url",
                    "url": wrong,
                    "message": f"no WEBSOCKET route for {wrong}",
                }
            assert await ask(ws, {"url": "/websocket/rt/index"}) == "index"

    run(main())
    assert EVENTS.count("OnBeforeMethod") == 1


def test_one_class_on_its_own_endpoint(make_server):
    server = make_server(lambda s: s.add_websocket_content(SoloController, "/ws"))
    assert set(server.endpoint_for("/ws").routes) == {"/ws/solo/hello"}

    async def main():
        async with client(server, "/ws") as ws:
            assert await ask(ws, {"url": "/ws/solo/hello"}) == "solo hello"
            reply = await ask_json(ws, {"url": "/ws/rt/create"})  # another class: not here
            assert reply["error"] == "unknown_url"
            reply = await ask_json(ws, {"url": "/websocket/solo/hello"})
            assert reply["error"] == "unknown_url"

    run(main())


def test_several_endpoints(make_server):
    def configure(s):
        s.add_websocket_content(SoloController, "/one")
        s.AddWebSocketContent(OtherController, "/two/")  # trailing slash is dropped
        s.add_websocket_content("/all")

    server = make_server(configure)

    async def main():
        async with (
            client(server, "/one") as one,
            client(server, "/two") as two,
            client(server, "/all") as every,
        ):
            assert await ask(one, {"url": "/one/solo/hello"}) == "solo hello"
            assert await ask(two, {"url": "/two/other/hello"}) == "other hello at /two"
            assert await ask(every, {"url": "/all/other/hello"}) == "other hello at /all"
            assert await ask(every, {"url": "/all/rt/create"}) == "create"
            assert (await ask_json(one, {"url": "/two/other/hello"}))["error"] == "unknown_url"
            assert (await ask_json(two, {"url": "/one/solo/hello"}))["error"] == "unknown_url"

    run(main())
    with pytest.raises(ValueError):
        server.add_websocket_content("/one")


def test_add_websocket_content_rejects_non_controllers(make_server):
    server = make_server()
    with pytest.raises(TypeError):
        server.add_websocket_content(dict, "/x")


def test_on_before_method_runs_first_and_can_reject(make_server):
    server = make_server(every_controller)

    async def main():
        async with client(server) as ws:
            assert await ask(ws, {"url": "/websocket/rt/index"}) == "index"
        assert EVENTS == ["before", "index"]
        EVENTS.clear()
        async with client(server, "/websocket?deny=1") as ws:
            reply = await ask_json(ws, {"url": "/websocket/rt/index"})
            assert reply == {
                "error": "handler_error",
                "url": "/websocket/rt/index",
                "message": "PermissionError in handler for /websocket/rt/index",
            }
            assert EVENTS == ["before"]  # the method never ran
            reply = await ask_json(ws, {"url": "/websocket/rt/count"})
            assert reply["error"] == "handler_error"  # every call is checked

    run(main())


def test_a_new_controller_per_message(make_server):
    server = make_server(every_controller)

    async def main():
        async with client(server) as ws:
            for n in range(1, 6):
                assert await ask_json(ws, {"url": "/websocket/rt/count"}) == {
                    "calls": 1,
                    "instances": n,
                }

    run(main())


def test_request_session_and_server_seen_by_the_controller(make_server):
    server = make_server(every_controller)

    async def main():
        async with client(server, "/websocket?a=1&b=two") as ws:
            reply = await ask_json(ws, {"url": "/websocket/rt/context"})
            assert reply["path"] == "/websocket"
            assert reply["query"] == {"a": "1", "b": "two"}
            assert reply["header"] == "yes"
            assert reply["same"] is True
            assert SEEN["server"] is server
            assert server.find_session(reply["session"]) is SEEN["session"]

    run(main())


def test_message_fields_reach_the_handler(make_server):
    server = make_server(every_controller)

    async def main():
        async with client(server) as ws:
            url = "/websocket/rt/message"
            assert await ask_json(ws, {"url": url}) == {
                "url": url,
                "body": None,
                "jwt": None,
                "body_is_none": True,
            }
            assert await ask_json(ws, {"url": url, "body": {"x": [1, 2]}, "jwt": "tok"}) == {
                "url": url,
                "body": {"x": [1, 2]},
                "jwt": "tok",
                "body_is_none": False,
            }
            assert await ask_json(ws, {"url": url, "body": "hello"}) == {
                "url": url,
                "body": "hello",
                "jwt": None,
                "body_is_none": False,
            }
            assert (await ask_json(ws, {"url": url, "body": None}))["body_is_none"] is True

    run(main())


def test_return_values_are_sent(make_server):
    server = make_server(every_controller)

    async def main():
        async with client(server) as ws:
            assert await ask(ws, {"url": "/websocket/rt/create"}) == "create"  # str → TEXT
            assert (
                await ask(ws, {"url": "/websocket/rt/binary"}) == b"\x00\x01\x02"
            )  # bytes → BINARY
            assert await ask_json(ws, {"url": "/websocket/rt/item", "body": {"name": "n"}}) == {
                "name": "n",
                "count": 1,
            }  # dict → JSON
            await ws.send(json.dumps({"url": "/websocket/rt/nothing"}))  # None → nothing
            assert await ask(ws, {"url": "/websocket/rt/create"}) == "create"

    run(main())


def test_async_handlers(make_server, caplog):
    server = make_server(every_controller)

    async def main():
        async with client(server) as ws:
            assert await ask_json(ws, {"url": "/websocket/rt/async", "body": 7}) == {"async": 7}
            assert await ask_json(ws, {"url": "/websocket/rt/async-boom"}) == {
                "error": "handler_error",
                "url": "/websocket/rt/async-boom",
                "message": "KeyError in handler for /websocket/rt/async-boom",
            }
            reply = await ask_json(ws, {"url": "/websocket/rt/async-item", "body": {"count": 2}})
            assert reply == {
                "error": "bad_body",
                "url": "/websocket/rt/async-item",
                "message": "body: missing field 'name' for Item",
            }
            assert await ask(ws, {"url": "/websocket/rt/async-item", "body": {"name": "x"}}) == "x"
            assert await ask(ws, {"url": "/websocket/rt/async-send"}) == "sent later"
            # many in flight at once, all answered
            for i in range(50):
                await ws.send(json.dumps({"url": "/websocket/rt/async", "body": i}))
            got = sorted(
                [json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["async"] for _ in range(50)]
            )
            assert got == list(range(50))

    with caplog.at_level(logging.ERROR, logger="simplew"):
        run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("async-boom" in r.getMessage() and r.exc_info for r in errors)


# -- errors ------------------------------------------------------------------------

GOOD = {"url": "/websocket/rt/create"}
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "sent, error, url, message",
    [
        ("not json", "bad_json", None, "message is not valid JSON: "),
        ('{"url": ', "bad_json", None, "message is not valid JSON: "),
        ("", "bad_json", None, "message is not valid JSON: "),
        (b"\xff\xfe\xfa not utf-8", "bad_json", None, "message is not valid JSON: "),
        (DEEP, "bad_json", None, "message is not valid JSON: "),
        ("[1, 2]", "bad_envelope", None, 'message must be a JSON object with a "url"'),
        (
            '"/websocket/rt/create"',
            "bad_envelope",
            None,
            'message must be a JSON object with a "url"',
        ),
        ("null", "bad_envelope", None, 'message must be a JSON object with a "url"'),
        ({"body": 1}, "missing_url", None, 'message has no "url" string'),
        ({"url": 5}, "missing_url", None, 'message has no "url" string'),
        ({"url": None}, "missing_url", None, 'message has no "url" string'),
        (
            {"url": "/websocket/nope"},
            "unknown_url",
            "/websocket/nope",
            "no WEBSOCKET route for /websocket/nope",
        ),
        (
            {"url": "/websocket/rt/item", "body": {"name": 3}},
            "bad_body",
            "/websocket/rt/item",
            "body.name: expected str, got a number",
        ),
        (
            {"url": "/websocket/rt/item", "body": {"name": "a", "colour": 1}},
            "bad_body",
            "/websocket/rt/item",
            "body: unknown field(s) for Item: colour",
        ),
        (
            {"url": "/websocket/rt/item"},
            "bad_body",
            "/websocket/rt/item",
            "body: expected an object for Item, got null",
        ),
        (
            {"url": "/websocket/rt/boom"},
            "handler_error",
            "/websocket/rt/boom",
            "ZeroDivisionError in handler for /websocket/rt/boom",
        ),
        # NaN and Infinity are not JSON: refused in, never sent out
        *(
            (
                '{"url": "/websocket/rt/message", "body": ' + number + "}",
                "bad_json",
                None,
                f"message is not valid JSON: {named} ",
            )
            for number, named in (
                ("NaN", "NaN"),
                ("Infinity", "Infinity"),
                ("-Infinity", "-Infinity"),
                ("[1, NaN]", "NaN"),
                ("1e999", "1e999"),
                ("-1E400", "-1E400"),
            )
        ),
        (
            '{"url": "/websocket/rt/message", "body": "\\ud800", "x": NaN}',
            "bad_json",
            None,
            "message is not valid JSON: NaN ",
        ),
        (
            {"url": "/websocket/rt/not-finite", "body": "nan"},
            "handler_error",
            "/websocket/rt/not-finite",
            "ValueError in handler for /websocket/rt/not-finite",
        ),
        (
            {"url": "/websocket/rt/not-finite", "body": "-inf"},
            "handler_error",
            "/websocket/rt/not-finite",
            "ValueError in handler for /websocket/rt/not-finite",
        ),
        (
            {"url": "/websocket/rt/async-not-finite", "body": "inf"},
            "handler_error",
            "/websocket/rt/async-not-finite",
            "ValueError in handler for /websocket/rt/async-not-finite",
        ),
        (
            {"url": "/websocket/rt/unserialisable"},
            "handler_error",
            "/websocket/rt/unserialisable",
            "ValueError in handler for /websocket/rt/unserialisable",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None,
)
def test_errors_are_answered_and_the_connection_stays_open(make_server, sent, error, url, message):
    server = make_server(every_controller)

    async def main():
        async with client(server) as ws:
            for _ in range(2):
                reply = await ask(ws, json.dumps(sent) if isinstance(sent, dict) else sent)
                assert isinstance(reply, str)  # errors are TEXT
                reply = json.loads(reply)
                assert set(reply) == {"error", "url", "message"}
                assert reply["error"] == error and reply["url"] == url
                assert reply["message"].startswith(message)
                if error != "bad_json":
                    assert reply["message"] == message
                assert await ask(ws, json.dumps(GOOD)) == "create"  # still open and served

    run(main())


def test_binary_messages_carrying_an_envelope_are_routed(make_server):
    server = make_server(every_controller)

    async def main():
        async with client(server) as ws:
            assert await ask(ws, json.dumps(GOOD).encode()) == "create"
            assert await ask(
                ws, '{"url": "/websocket/rt/message", "body": "é"}'.encode()
            ) == json.dumps(
                {"url": "/websocket/rt/message", "body": "é", "jwt": None, "body_is_none": False}
            )
            assert (await ask_json(ws, b"\x00\x01"))["error"] == "bad_json"
            assert (await ask_json(ws, b'{"url": "/nope"}'))["error"] == "unknown_url"
            # fragmented binary envelope
            data = json.dumps({"url": "/websocket/rt/message", "body": "x" * 5000}).encode()
            await ws.send([data[i : i + 100] for i in range(0, len(data), 100)])
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["body"] == "x" * 5000

    run(main())


def test_handler_errors_are_logged_request_errors_are_not(make_server, caplog):
    server = make_server(every_controller)

    async def main():
        async with client(server) as ws:
            for bad in [
                "nope",
                "[]",
                "{}",
                json.dumps({"url": "/x"}),
                DEEP,
                json.dumps({"url": "/websocket/rt/item", "body": 1}),
            ]:
                assert "error" in await ask_json(ws, bad)
            assert (await ask_json(ws, {"url": "/websocket/rt/boom"}))["error"] == "handler_error"

    with caplog.at_level(logging.DEBUG, logger="simplew"):
        run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "/websocket/rt/boom" in errors[0].getMessage()
    assert errors[0].exc_info[0] is ZeroDivisionError


def test_handlers_can_send_from_other_threads(make_server):
    """A controller may hand its session to a worker thread that sends later."""
    done = threading.Event()

    @route("/threaded")
    class Threaded(Controller):
        @route("WEBSOCKET", "/go")
        def go(self, message: WebSocketMessage) -> None:
            session = self.session

            def work():
                for i in range(20):
                    session.send_text(f"t{i}")
                session.SendBinary(b"end")
                done.set()

            threading.Thread(target=work).start()

    server = make_server(lambda s: s.add_websocket_content(Threaded, "/t"))

    async def main():
        async with client(server, "/t") as ws:
            await ws.send(json.dumps({"url": "/t/threaded/go"}))
            got = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(21)]
            assert got == [f"t{i}" for i in range(20)] + [b"end"]

    run(main())
    assert done.is_set()
    Controller._registry.remove(Threaded)  # keep "/websocket" servers of other tests clean


def test_two_routes_for_one_url_fail_at_start(make_server):
    @route("/dup")
    class DupA(Controller):
        @route("WEBSOCKET", "/x")
        def a(self, message):
            pass

        @route("WEBSOCKET", "/x")
        def b(self, message):
            pass

    try:
        with pytest.raises(ValueError, match="two WEBSOCKET methods answer /d/dup/x"):
            make_server(lambda s: s.add_websocket_content(DupA, "/d"))
    finally:
        Controller._registry.remove(DupA)


def test_mapping_error_is_a_value_error():
    assert issubclass(BodyMappingError, ValueError)
