"""The WebSocket message layer: RFC 6455 framing rules, limits, the close
handshake, and multicast, with real clients: websockets 17, picows's own client
and a raw socket for the frames no library will send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import threading
import zlib
from typing import Any

import pytest
from picows import WSListener, WSMsgType, ws_connect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from helpers import run, wait_until
from rawclient import RawClient
from simplew import Controller, Session, WebSocketMessage, route

TIMEOUT = 5.0
MiB = 1 << 20


# -- helpers ----------------------------------------------------------------------


def client(server, path: str = "/echo", **kwargs):
    kwargs.setdefault("max_size", None)
    return connect(
        f"ws://127.0.0.1:{server.port}{path}",
        proxy=None,
        compression=None,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        **kwargs,
    )


async def recv(ws) -> Any:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


def echo(session: Session, data: Any) -> None:
    session.send(data)


def echo_server(make_server, **options):
    return make_server(lambda s: s.add_websocket_content("/echo", on_message=echo), **options)


def assert_still_serving(server, path: str = "/echo") -> None:
    """A fresh client on ``server`` gets its echo: the server survived."""

    async def main():
        async with client(server, path) as ws:
            await ws.send("still here")
            assert await recv(ws) == "still here"
            await ws.send(b"\x00bin")
            assert await recv(ws) == b"\x00bin"

    run(main())


@pytest.fixture
def no_error_logs(caplog):
    """Fail the test if anything logs at WARNING or above (protocol errors must not)."""
    caplog.set_level(logging.DEBUG, logger="simplew.websocket")
    yield caplog
    loud = [r for r in caplog.get_records("call") if r.levelno >= logging.WARNING]
    assert not loud, [f"{r.name} {r.levelname}: {r.getMessage()}" for r in loud]


# -- fragmentation and UTF-8 ---------------------------------------------------------


def test_fragmented_messages_are_reassembled(make_server):
    server = echo_server(make_server)

    async def main():
        async with client(server) as ws:
            await ws.send(["he", "ll", "o"])  # text, 3 fragments
            assert await recv(ws) == "hello"
            await ws.send([b"\x00", b"\x01\x02", b"", b"\x03"])  # binary
            assert await recv(ws) == b"\x00\x01\x02\x03"
            parts = [f"{i:05d}" for i in range(2000)]  # many fragments
            await ws.send(parts)
            assert await recv(ws) == "".join(parts)
            blob = os.urandom(300_000)
            await ws.send([blob[i : i + 7000] for i in range(0, len(blob), 7000)])
            assert await recv(ws) == blob
            text = "aé€😀" * 1000  # UTF-8 split anywhere
            raw = text.encode()
            chunks = [raw[i : i + 3] for i in range(0, len(raw), 3)]
            await ws.send(chunks)  # websockets sends bytes chunks as BINARY,
            assert await recv(ws) == raw  # so check TEXT splits with the raw client
            await ws.send("")
            assert await recv(ws) == ""
            await ws.send([""])
            assert await recv(ws) == ""

    run(main())


def test_control_frames_inside_a_fragmented_message(make_server):
    server = echo_server(make_server)
    raw = RawClient(server.port)
    try:
        text = "aé€😀" * 50
        data = text.encode()
        raw.send(0x1, data[:1], fin=False)  # TEXT start
        for i in range(1, len(data)):
            if i % 50 == 0:
                raw.send(0x9, b"ping%d" % i)  # PING in the middle
            if i % 70 == 0:
                raw.send(0xA, b"unsolicited")  # PONG: ignored
            raw.send(0x0, data[i : i + 1], fin=i == len(data) - 1)
        pongs = []
        while True:
            opcode, fin, payload = raw.recv()
            if opcode == 0xA:
                pongs.append(payload)
                continue
            assert (opcode, fin) == (0x1, True)
            assert payload.decode() == text
            break
        assert pongs == [b"ping%d" % i for i in range(50, len(data), 50)]

        blob = os.urandom(1000)  # BINARY, same
        raw.send(0x2, blob[:10], fin=False)
        raw.send(0x9, b"")
        raw.send(0x0, blob[10:500], fin=False)
        raw.send(0x9, b"x" * 125)
        raw.send(0x0, blob[500:], fin=True)
        assert raw.recv() == (0xA, True, b"")
        assert raw.recv() == (0xA, True, b"x" * 125)
        assert raw.recv() == (0x2, True, blob)
        raw.send_close(1000)
        assert raw.recv_close() == (1000, "")
        raw.expect_eof()
    finally:
        raw.close()


def test_pings_are_answered_with_the_same_payload(make_server):
    server = echo_server(make_server)
    raw = RawClient(server.port)
    try:
        for payload in [b"", b"abc", os.urandom(125)]:
            raw.send(0x9, payload)
            assert raw.recv() == (0xA, True, payload)
    finally:
        raw.close()

    async def main():
        async with client(server) as ws:
            waiter = await ws.ping(b"data")
            await asyncio.wait_for(waiter, TIMEOUT)

    run(main())


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([(0x1, b"bad \xff byte", True)], id="single-frame"),
        pytest.param([(0x1, b"\xed\xa0\x80", True)], id="surrogate"),
        pytest.param([(0x1, b"\xf4\x90\x80\x80", True)], id="above-U+10FFFF"),
        pytest.param([(0x1, b"\xc0\xaf", True)], id="overlong"),
        pytest.param([(0x1, b"ok \xe2\x82", False), (0x0, b"(", True)], id="split-invalid"),
        pytest.param([(0x1, b"ok", False), (0x0, b"\xe2\x82", True)], id="truncated-at-end"),
        pytest.param(
            [
                (0x1, b"ok", False),
                (0x0, b"fine", False),
                (0x0, b"\x80", False),
                (0x0, b"more", True),
            ],
            id="middle-fragment",
        ),
    ],
)
def test_invalid_utf8_closes_1007(make_server, no_error_logs, frames):
    server = echo_server(make_server)
    raw = RawClient(server.port)
    try:
        for opcode, payload, fin in frames:
            raw.send(opcode, payload, fin=fin)
        raw.expect_failure(1007)
    finally:
        raw.close()
    assert_still_serving(server)
    assert any(
        "1007" in r.getMessage()
        for r in no_error_logs.records
        if r.name == "simplew.websocket" and r.levelno == logging.DEBUG
    )


def test_invalid_utf8_split_valid_utf8_is_fine(make_server):
    server = echo_server(make_server)
    raw = RawClient(server.port)
    try:
        data = "€😀".encode()  # 3 + 4 bytes
        raw.send(0x1, data[:2], fin=False)
        raw.send(0x0, data[2:5], fin=False)
        raw.send(0x0, data[5:], fin=True)
        assert raw.recv() == (0x1, True, data)
    finally:
        raw.close()


def test_invalid_utf8_with_websockets_client(make_server):
    """A binary payload sent as a TEXT frame (websockets' ``text=True``)."""
    server = echo_server(make_server)

    async def main():
        async with client(server) as ws:
            await ws.send(b"\xff\xfe", text=True)
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1007

    run(main())
    assert_still_serving(server)


# -- on_message callbacks ------------------------------------------------------------------


def test_on_message_callbacks(make_server, caplog):
    async def async_echo(session: Session, data: Any) -> None:
        await asyncio.sleep(0)
        session.send(data)

    def broken(session: Session, data: Any) -> None:
        raise RuntimeError("callback bug")

    async def async_broken(session: Session, data: Any) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("async callback bug")

    def kinds(session: Session, data: Any) -> None:
        session.send_text(type(data).__name__)
        session.send_binary(bytearray(b"ba"))
        session.SendBinary(memoryview(b"xmv")[1:])
        session.send(b"bytes")
        session.SendText("done")

    def configure(s):
        s.add_websocket_content("/async", on_message=async_echo)
        s.add_websocket_content("/broken", on_message=broken)
        s.add_websocket_content("/async-broken", on_message=async_broken)
        s.add_websocket_content("/kinds", on_message=kinds)

    server = make_server(configure)

    async def main():
        async with client(server, "/async") as ws:
            await ws.send("a")
            assert await recv(ws) == "a"
            await ws.send(b"b")
            assert await recv(ws) == b"b"
        async with client(server, "/kinds") as ws:
            await ws.send("text")
            assert [await recv(ws) for _ in range(5)] == ["str", b"ba", b"mv", b"bytes", "done"]
            await ws.send(b"bin")
            assert await recv(ws) == "bytes"
        for path in ("/broken", "/async-broken"):  # an application bug: 1011
            async with client(server, path) as ws:
                await ws.send("x")
                with pytest.raises(ConnectionClosed):
                    await recv(ws)
                assert ws.close_code == 1011

    with caplog.at_level(logging.ERROR, logger="simplew"):
        run(main())
    assert sum(1 for r in caplog.records if "callback" in r.getMessage() and r.exc_info) == 2
    assert_still_serving(server, "/async")


# -- protocol violations: 1002 ---------------------------------------------------------


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([(0x0, b"orphan", True, 0)], id="continuation-without-start"),
        pytest.param([(0x0, b"orphan", False, 0)], id="continuation-without-start-nofin"),
        pytest.param([(0x1, b"a", False, 0), (0x1, b"b", True, 0)], id="text-inside-fragmented"),
        pytest.param([(0x2, b"a", False, 0), (0x1, b"b", False, 0)], id="text-inside-binary"),
        pytest.param([(0x1, b"a", False, 0), (0x2, b"b", True, 0)], id="binary-inside-text"),
        pytest.param([(0x1, b"a", True, 4)], id="rsv1"),
        pytest.param([(0x1, b"a", True, 2)], id="rsv2"),
        pytest.param([(0x2, b"a", True, 1)], id="rsv3"),
        pytest.param([(0x1, b"a", False, 0), (0x0, b"b", True, 4)], id="rsv1-on-continuation"),
        pytest.param([(0xA, b"a", True, 4)], id="rsv1-on-pong"),
        pytest.param([(0x3, b"", True, 0)], id="reserved-opcode-3"),
        pytest.param([(0xB, b"", True, 0)], id="reserved-opcode-B"),
        pytest.param([(0x9, b"p", False, 0)], id="fragmented-ping"),
        pytest.param([(0x9, b"p" * 126, True, 0)], id="ping-over-125"),
        pytest.param([(0x8, b"\x03", True, 0)], id="close-1-byte"),
        pytest.param([(0x8, struct.pack("!H", 1005), True, 0)], id="close-1005"),
        pytest.param([(0x8, struct.pack("!H", 1006), True, 0)], id="close-1006"),
        pytest.param([(0x8, struct.pack("!H", 999), True, 0)], id="close-999"),
        pytest.param([(0x8, struct.pack("!H", 0), True, 0)], id="close-0"),
        pytest.param([(0x8, struct.pack("!H", 1015), True, 0)], id="close-1015"),
        pytest.param([(0x8, struct.pack("!H", 2000), True, 0)], id="close-2000"),
        pytest.param([(0x8, struct.pack("!H", 5000), True, 0)], id="close-5000"),
    ],
)
def test_protocol_violations_close_1002(make_server, no_error_logs, frames):
    server = echo_server(make_server)
    raw = RawClient(server.port)
    try:
        for opcode, payload, fin, rsv in frames:
            raw.send(opcode, payload, fin=fin, rsv=rsv)
        raw.expect_failure(1002)
    finally:
        raw.close()
    assert_still_serving(server)


def test_unmasked_client_frames_close_1002(make_server, no_error_logs):
    server = echo_server(make_server)
    raw = RawClient(server.port)
    try:
        raw.send(0x1, b"hello", mask=False)
        raw.expect_failure(1002)
    finally:
        raw.close()
    assert_still_serving(server)


def test_close_reason_must_be_utf8(make_server, no_error_logs):
    server = echo_server(make_server)
    raw = RawClient(server.port)
    try:
        raw.send_close(1000, b"\xff")
        raw.expect_failure(1007)
    finally:
        raw.close()
    assert_still_serving(server)


def test_data_after_a_protocol_error_is_ignored(make_server):
    """Once failed, the connection drops what the client still sends and never echoes it."""
    server = echo_server(make_server)
    raw = RawClient(server.port)
    try:
        raw.send(0x0, b"orphan")
        raw.send(0x1, b"after")
        raw.send(0x9, b"ping")
        code, _ = raw.recv_close()
        assert code == 1002
        raw.send_close(1002)
        raw.expect_eof()
    finally:
        raw.close()


def test_a_failed_client_that_never_answers_is_dropped(make_server):
    server = echo_server(make_server)
    server.endpoint_for("/echo").close_timeout = 0.2
    raw = RawClient(server.port)
    try:
        raw.send(0x0, b"orphan")
        assert raw.recv_close()[0] == 1002
        raw.expect_eof()  # no answer from us: dropped after 0.2 s
    finally:
        raw.close()
    wait_until(lambda: len(server.hub) == 0)


# -- message size ------------------------------------------------------------------------


def test_max_message_size_default_is_1_mib(make_server, no_error_logs):
    server = echo_server(make_server)
    assert server.endpoint_for("/echo").max_message_size == MiB

    async def main():
        async with client(server) as ws:
            await ws.send("a" * MiB)  # exactly the limit
            assert await recv(ws) == "a" * MiB
            await ws.send([b"b" * 1024] * 1024)  # 1 MiB in fragments
            assert await recv(ws) == b"b" * MiB
        async with client(server) as ws:
            await ws.send("a" * (MiB + 1))  # one frame, too big
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1009
        async with client(server) as ws:
            await ws.send([b"c" * 1000] * 1049 + [b"c" * 577])  # MiB + 1 in fragments
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1009

    run(main())
    assert_still_serving(server)


def test_max_message_size_many_small_fragments_raw(make_server, no_error_logs):
    server = echo_server(make_server, max_message_size=1000)
    raw = RawClient(server.port)
    try:
        raw.send(0x1, b"x" * 10, fin=False)
        for _ in range(98):
            raw.send(0x0, b"x" * 10, fin=False)  # 990 bytes: fine so far
        raw.send(0x0, b"x" * 10, fin=False)  # 1000: still fine
        raw.send(0x0, b"x", fin=False)  # 1001: too big
        for _ in range(200):  # a client that keeps sending
            raw.send(0x0, b"y" * 100, fin=False)
        assert "1000" in raw.expect_failure(1009)
    finally:
        raw.close()
    assert_still_serving(server)


def test_max_message_size_per_server(make_server):
    server = echo_server(make_server, max_message_size=100)

    async def main():
        async with client(server) as ws:
            await ws.send("x" * 100)
            assert await recv(ws) == "x" * 100
            await ws.send(["x" * 50, "x" * 50])
            assert await recv(ws) == "x" * 100
            await ws.send(["x" * 50, "x" * 51])
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1009
        async with client(server) as ws:
            await ws.send(b"x" * 101)
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1009

    run(main())


def test_max_message_size_per_endpoint(make_server):
    def configure(s):
        s.add_websocket_content("/echo", on_message=echo)
        s.add_websocket_content("/small", on_message=echo, max_message_size=10)
        s.add_websocket_content(EchoController, "/routed", max_message_size=64)

    server = make_server(configure, max_message_size=1000)
    assert server.endpoint_for("/echo").max_message_size == 1000
    assert server.endpoint_for("/small").max_message_size == 10
    assert server.endpoint_for("/routed").max_message_size == 64

    async def main():
        async with client(server, "/echo") as ws:
            await ws.send("x" * 1000)
            assert await recv(ws) == "x" * 1000
        async with client(server, "/small") as ws:
            await ws.send("x" * 10)
            assert await recv(ws) == "x" * 10
            await ws.send("x" * 11)
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1009
        async with client(server, "/routed") as ws:
            await ws.send(json.dumps({"url": "/routed/echo-ctl/echo", "body": [1]}))
            assert json.loads(await recv(ws)) == [1]
            await ws.send(json.dumps({"url": "/routed/echo-ctl/echo", "body": "x" * 64}))
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1009

    run(main())
    assert_still_serving(server)


# -- close handshake -----------------------------------------------------------------------


def test_client_close_is_echoed_then_tcp_dropped(make_server, no_error_logs):
    server = echo_server(make_server)
    raw = RawClient(server.port)
    try:
        wait_until(lambda: len(server.hub) == 1)
        raw.send_close(1000, b"done")
        opcode, fin, payload = raw.recv()
        assert (opcode, fin) == (0x8, True)
        assert struct.unpack("!H", payload[:2])[0] == 1000
        raw.expect_eof()
    finally:
        raw.close()
    wait_until(lambda: len(server.hub) == 0)

    for code in (None, 1001, 4321):  # no code → 1000; other codes echoed
        raw = RawClient(server.port)
        try:
            raw.send_close(code)
            assert raw.recv_close()[0] == (1000 if code is None else code)
            raw.expect_eof()
        finally:
            raw.close()

    async def main():
        async with client(server) as ws:
            await ws.send("x")
            assert await recv(ws) == "x"
        assert ws.close_code == 1000  # the code the server sent back

    run(main())
    wait_until(lambda: len(server.hub) == 0)


def test_close_during_a_fragmented_message(make_server):
    server = echo_server(make_server)
    raw = RawClient(server.port)
    try:
        raw.send(0x1, b"half", fin=False)
        raw.send_close(1000)
        assert raw.recv_close()[0] == 1000
        raw.expect_eof()
    finally:
        raw.close()


def test_server_initiated_close(make_server):
    server = echo_server(make_server)

    async def main():
        async with client(server) as ws:
            await ws.send("hi")
            assert await recv(ws) == "hi"
            (session,) = server.sessions
            session.close(4000, "bye")  # from this (non-loop) thread
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert (ws.close_code, ws.close_reason) == (4000, "bye")

    run(main())
    wait_until(lambda: len(server.hub) == 0)

    raw = RawClient(server.port)  # same, on the wire
    try:
        wait_until(lambda: len(server.hub) == 1)
        server.sessions[0].Close(4001, "über")
        assert raw.recv_close() == (4001, "über")
        raw.send(0x1, b"ignored after CLOSE")  # allowed before our CLOSE arrives
        raw.send_close(4001)
        raw.expect_eof()
    finally:
        raw.close()
    wait_until(lambda: len(server.hub) == 0)


def test_server_close_without_an_answer_times_out(make_server):
    server = echo_server(make_server)
    server.endpoint_for("/echo").close_timeout = 0.2
    raw = RawClient(server.port)
    try:
        wait_until(lambda: len(server.hub) == 1)
        server.sessions[0].close(1001, "going")
        assert raw.recv_close() == (1001, "going")
        raw.expect_eof()  # no answer: dropped after 0.2 s
    finally:
        raw.close()
    wait_until(lambda: len(server.hub) == 0)


def test_close_rejects_codes_that_cannot_be_sent(make_server):
    server = echo_server(make_server)
    raw = RawClient(server.port)
    try:
        wait_until(lambda: len(server.hub) == 1)
        session = server.sessions[0]
        for bad in (999, 1004, 1005, 1006, 1015, 2000, 5000):
            with pytest.raises(ValueError):
                session.close(bad)
        raw.send(0x1, b"still open")
        assert raw.recv() == (0x1, True, b"still open")
    finally:
        raw.close()


def test_sends_after_close_are_dropped(make_server):
    server = echo_server(make_server)
    raw = RawClient(server.port)
    try:
        wait_until(lambda: len(server.hub) == 1)
        session = server.sessions[0]
        session.close(1000)
        session.send_text("after close")
        server.multicast_text("after close too")
        assert raw.recv_close()[0] == 1000  # CLOSE is the last frame
        raw.send_close(1000)
        raw.expect_eof()
    finally:
        raw.close()


def test_abrupt_disconnect_is_noticed(make_server):
    server = echo_server(make_server)
    raw = RawClient(server.port)
    wait_until(lambda: len(server.hub) == 1)
    raw.send(0x1, b"half", fin=False)
    raw.close()  # no CLOSE at all
    wait_until(lambda: len(server.hub) == 0)
    assert_still_serving(server)


# -- multicast, sessions, hooks --------------------------------------------------------------


@route("/echo-ctl")
class EchoController(Controller):
    @route("WEBSOCKET", "/echo")
    def echo(self, message: WebSocketMessage) -> Any:
        return message.body

    @route("WEBSOCKET", "/whoami")
    def whoami(self, message: WebSocketMessage) -> str:
        return self.session.id

    @route("WEBSOCKET", "/shout")
    def shout(self, message: WebSocketMessage) -> None:
        self.server.multicast_text(f"shout:{message.body}")  # from the loop thread

    @route("WEBSOCKET", "/bye")
    def bye(self, message: WebSocketMessage) -> None:
        self.session.close(4000, "bye")


class PicowsCollector(WSListener):
    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.close_code: int | None = None

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.queue.put_nowait(frame.get_payload_as_utf8_text())
        elif frame.msg_type == WSMsgType.BINARY:
            self.queue.put_nowait(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    async def recv(self) -> Any:
        return await asyncio.wait_for(self.queue.get(), TIMEOUT)


def multicast_server(make_server, **options):
    def configure(s):
        s.add_websocket_content(EchoController, "/routed")
        s.add_websocket_content("/echo", on_message=echo)
        s.add_websocket_content("/quiet", on_message=lambda session, data: None)

    return make_server(configure, **options)


TRANSPORTS = [pytest.param(True, id="aiofastnet"), pytest.param(False, id="uvloop")]


def test_multicast_reaches_every_client_on_every_endpoint(make_server):
    server = multicast_server(make_server)

    async def main():
        url = f"ws://127.0.0.1:{server.port}"
        async with (
            client(server, "/routed") as a,
            client(server, "/echo") as b,
            client(server, "/quiet") as c,
        ):
            transport, d = await ws_connect(PicowsCollector, url + "/quiet")
            try:
                await asyncio.to_thread(wait_until, lambda: len(server.hub) == 4)
                await asyncio.to_thread(server.multicast_text, "hello")  # another thread
                server.MulticastBinary(b"\x00\x01")  # this (non-loop) thread
                for ws in (a, b, c):
                    assert await recv(ws) == "hello"
                    assert await recv(ws) == b"\x00\x01"
                assert await d.recv() == "hello"
                assert await d.recv() == b"\x00\x01"

                await a.send(json.dumps({"url": "/routed/echo-ctl/shout", "body": 1}))
                for ws in (a, b, c):
                    assert await recv(ws) == "shout:1"
                assert await d.recv() == "shout:1"

                server.multicast_text("x" * 200_000)  # large frames too
                for ws in (a, b, c):
                    assert await recv(ws) == "x" * 200_000
                assert await d.recv() == "x" * 200_000
            finally:
                transport.disconnect()
            await asyncio.to_thread(wait_until, lambda: len(server.hub) == 3)

    run(main())
    wait_until(lambda: len(server.hub) == 0)


def test_picows_client_close_handshake(make_server):
    server = multicast_server(make_server)

    async def main():
        transport, listener = await ws_connect(
            PicowsCollector, f"ws://127.0.0.1:{server.port}/routed"
        )
        transport.send(WSMsgType.TEXT, json.dumps({"url": "/routed/echo-ctl/echo", "body": [1]}))
        assert json.loads(await listener.recv()) == [1]
        transport.send(WSMsgType.TEXT, json.dumps({"url": "/routed/echo-ctl/bye"}))
        await asyncio.wait_for(transport.wait_disconnected(), TIMEOUT)
        assert listener.close_code == 4000
        assert transport.close_handshake.recv.reason == "bye"

    run(main())
    wait_until(lambda: len(server.hub) == 0)


@pytest.mark.parametrize("use_aiofastnet", TRANSPORTS)
def test_concurrent_senders_never_interleave_frames(make_server, use_aiofastnet):
    """Threads multicasting and sending to one session at once: every message arrives whole."""
    server = multicast_server(make_server, use_aiofastnet=use_aiofastnet)
    threads_n, per_thread = 6, 40

    def payload(kind: str, t: int, i: int) -> str:
        size = (1000, 70_000, 130)[(t + i) % 3]  # 7-bit, 16-bit and 64-bit lengths
        body = (f"{kind}{t}-{i}-" * (size // 8 + 1))[:size]
        return f"{kind}|{t}|{i}|{zlib.crc32(body.encode())}|{body}"

    def check(message: str) -> tuple[str, int, int]:
        kind, t, i, crc, body = message.split("|", 4)
        assert zlib.crc32(body.encode()) == int(crc), "corrupted message"
        return kind, int(t), int(i)

    async def main():
        async with client(server, "/routed") as a, client(server, "/quiet") as b:
            await a.send(json.dumps({"url": "/routed/echo-ctl/whoami"}))
            session = server.find_session(await recv(a))
            assert session is not None
            await asyncio.to_thread(wait_until, lambda: len(server.hub) == 2)
            start = threading.Barrier(threads_n)

            def worker(t: int) -> None:
                start.wait()
                for i in range(per_thread):
                    if i % 2:
                        server.multicast_text(payload("m", t, i))
                    else:
                        session.send_text(payload("s", t, i))

            workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
            for w in workers:
                w.start()
            multicasts = threads_n * per_thread // 2
            got_a = [check(await recv(a)) for _ in range(threads_n * per_thread)]
            got_b = [check(await recv(b)) for _ in range(multicasts)]
            for w in workers:
                await asyncio.to_thread(w.join)
            assert sorted(got_a) == sorted(
                ("m" if i % 2 else "s", t, i) for t in range(threads_n) for i in range(per_thread)
            )
            assert sorted(got_b) == sorted(
                ("m", t, i) for t in range(threads_n) for i in range(1, per_thread, 2)
            )
            for t in range(threads_n):  # each thread's messages keep their order
                assert [i for k, tt, i in got_a if tt == t] == list(range(per_thread))

    run(main())


def test_sessions_find_session_and_hooks(make_server):
    connected: list[Session] = []
    disconnected: list[Session] = []
    async_connected: list[str] = []
    threads: set[int] = set()

    def configure(s):
        s.add_websocket_content(EchoController, "/routed")
        s.add_websocket_content("/echo", on_message=echo)

        @s.on_connect
        def opened(session):
            threads.add(threading.get_ident())
            connected.append(session)

        async def opened_async(session):
            await asyncio.sleep(0)
            async_connected.append(session.id)

        s.on_connect(opened_async)
        s.on_disconnect(disconnected.append)

        @s.on_connect
        def broken_hook(session):
            raise RuntimeError("a broken hook does not break the server")

    server = make_server(configure)

    async def main():
        async with client(server, "/routed", additional_headers={"X-Who": "a"}) as a:
            async with client(server, "/echo"):
                await a.send(json.dumps({"url": "/routed/echo-ctl/whoami"}))
                a_id = await recv(a)
                await asyncio.to_thread(wait_until, lambda: len(connected) == 2)
                assert len(server.sessions) == 2 == len(server.hub)
                assert {s.id for s in server.sessions} == {s.id for s in connected}
                session_a = server.find_session(a_id)
                assert session_a is server.FindSession(a_id)
                assert session_a.request.headers["x-who"] == "a"
                assert session_a.endpoint.path == "/routed" and session_a.Id == a_id
                assert session_a.remote_address[0] == "127.0.0.1"
                assert server.find_session("no-such-id") is None
                await asyncio.to_thread(wait_until, lambda: len(async_connected) == 2)
            await asyncio.to_thread(wait_until, lambda: len(disconnected) == 1)
            assert disconnected[0] is not session_a and disconnected[0] in connected
            assert server.sessions == [session_a]
            assert server.find_session(disconnected[0].id) is None
            assert disconnected[0].closed
        await asyncio.to_thread(wait_until, lambda: len(disconnected) == 2)
        assert server.sessions == [] and server.find_session(a_id) is None
        assert threads == {server._loop_thread_id}

    run(main())
    assert_still_serving(server)


@pytest.mark.parametrize("use_aiofastnet", TRANSPORTS)
def test_disconnected_clients_leave_the_hub(make_server, use_aiofastnet):
    server = multicast_server(make_server, use_aiofastnet=use_aiofastnet)
    raws = [RawClient(server.port) for _ in range(10)]
    wait_until(lambda: len(server.hub) == 10)
    for raw in raws[:4]:  # vanish without a CLOSE
        raw.close()
    for raw in raws[4:7]:  # close properly
        raw.send_close(1000)
        assert raw.recv_close()[0] == 1000
        raw.close()
    wait_until(lambda: len(server.hub) == 3)
    server.multicast_text("left")
    for raw in raws[7:]:
        assert raw.recv() == (0x1, True, b"left")
        raw.close()
    wait_until(lambda: len(server.hub) == 0)
    server.multicast_text("nobody")  # multicast to no one is fine


@pytest.mark.parametrize("use_aiofastnet", TRANSPORTS)
def test_multicast_while_clients_vanish(make_server, no_error_logs, use_aiofastnet):
    """Clients dropping mid-stream never stop a multicast from reaching the others."""
    server = multicast_server(make_server, use_aiofastnet=use_aiofastnet)
    stayers = [RawClient(server.port, "/quiet") for _ in range(3)]
    leavers = [RawClient(server.port, "/quiet") for _ in range(12)]
    wait_until(lambda: len(server.hub) == 15)
    count = 300

    def blast() -> None:
        for i in range(count):
            server.multicast_text(f"{i}:" + "v" * (i * 37 % 20000))

    sender = threading.Thread(target=blast)
    sender.start()
    for n, raw in enumerate(leavers):
        if n % 2:
            raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()  # FIN, or RST when lingering 0
    sender.join()
    for raw in stayers:
        for i in range(count):
            opcode, fin, payload = raw.recv()
            assert (opcode, fin) == (0x1, True)
            assert payload == (f"{i}:" + "v" * (i * 37 % 20000)).encode()
        raw.close()
    wait_until(lambda: len(server.hub) == 0)


@pytest.mark.parametrize("use_aiofastnet", TRANSPORTS)
def test_a_client_that_does_not_read_is_dropped(make_server, no_error_logs, use_aiofastnet):
    """Once more than ``max_write_buffer`` bytes wait for a client, it is dropped;
    clients that read are not affected."""
    server = multicast_server(make_server, use_aiofastnet=use_aiofastnet)
    endpoint = server.endpoint_for("/quiet")
    assert endpoint.max_write_buffer == 1 << 20  # the default
    sleeper = RawClient(server.port, "/quiet")  # never reads
    reader = RawClient(server.port, "/echo")
    wait_until(lambda: len(server.hub) == 2)
    chunk = "r" * 65536
    received = 0
    try:
        for i in range(400):  # 26 MB: more than socket buffers
            server.multicast_text(chunk)
            if i % 20 == 19:
                for _ in range(20):
                    assert reader.recv() == (0x1, True, chunk.encode())
                    received += 1
        wait_until(lambda: len(server.hub) == 1)
        assert server.sessions[0].endpoint.path == "/echo"
        assert received == 400
        assert any(
            "max_write_buffer" in r.getMessage() and r.levelno == logging.INFO
            for r in no_error_logs.records
        )
    finally:
        sleeper.close()
        reader.close()


def test_disconnect_all(make_server):
    server = multicast_server(make_server)

    async def main():
        async with client(server, "/echo") as a, client(server, "/quiet") as b:
            await asyncio.to_thread(wait_until, lambda: len(server.hub) == 2)
            server.disconnect_all()
            for ws in (a, b):
                await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
                assert ws.close_code == 1001
        await asyncio.to_thread(wait_until, lambda: len(server.hub) == 0)

    run(main())


def test_slow_reader_does_not_log_warnings(make_server, no_error_logs):
    """Filling a client's socket makes the transport pause writing; picows logs a
    WARNING for that unless the listener handles it, which a slow reader could abuse.
    With slow_client_policy="skip" the client loses the messages sent while it was
    over max_write_buffer, receives the others intact, and stays connected."""
    server = multicast_server(make_server, max_write_buffer=2 << 20, slow_client_policy="skip")
    raw = RawClient(server.port, "/quiet")
    try:
        wait_until(lambda: len(server.hub) == 1)
        session = server.sessions[0]
        chunk = "z" * 65536
        for _ in range(400):  # 26 MB the client does not read yet
            server.multicast_text(chunk)

        async def barrier():  # every multicast above has run
            pass

        asyncio.run_coroutine_threadsafe(barrier(), server._loop).result(TIMEOUT)
        assert session.write_paused  # the buffer crossed its mark
        assert session.dropped_messages > 0
        for _ in range(400 - session.dropped_messages):
            assert raw.recv() == (0x1, True, chunk.encode())
        wait_until(lambda: not session.write_paused)
        assert len(server.hub) == 1
        server.multicast_text("after")
        assert raw.recv() == (0x1, True, b"after")
    finally:
        raw.close()
