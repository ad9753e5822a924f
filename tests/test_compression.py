"""permessage-deflate (RFC 7692) through a real server: negotiation, per-endpoint
switch, shared multicast compression, and the decompression-bomb limit."""

from __future__ import annotations

import asyncio
import zlib

import pytest
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from helpers import run, wait_until
from rawclient import RawClient

TIMEOUT = 5.0


def echo(session, data):
    session.send(data)


def deflate_client(server, path="/echo", **deflate):
    extensions = [ClientPerMessageDeflateFactory(**deflate)] if deflate else None
    kwargs = {"extensions": extensions} if extensions else {}
    return connect(f"ws://127.0.0.1:{server.port}{path}", max_size=None, **kwargs)


def negotiated(ws) -> str:
    return ws.response.headers.get("Sec-WebSocket-Extensions", "")


def test_compression_is_off_by_default(make_server):
    server = make_server(lambda s: s.add_websocket_content("/echo", on_message=echo))

    async def main():
        async with deflate_client(server) as ws:
            assert negotiated(ws) == ""
            await ws.send("x" * 1000)
            assert await ws.recv() == "x" * 1000

    run(main())


def test_negotiated_and_round_trips(make_server):
    server = make_server(
        lambda s: s.add_websocket_content("/echo", on_message=echo), compression=True
    )
    text = "simplew " * 5000

    async def main():
        async with deflate_client(server) as ws:
            assert negotiated(ws).startswith("permessage-deflate")
            for _ in range(3):  # context takeover across messages
                await ws.send(text)
                assert await ws.recv() == text
            await ws.send(text.encode())
            assert await ws.recv() == text.encode()

    run(main())


def test_compression_can_be_switched_off_per_endpoint(make_server):
    def configure(s):
        s.add_websocket_content("/echo", on_message=echo)
        s.add_websocket_content("/plain", on_message=echo, compression=False)

    server = make_server(configure, compression=True)

    async def main():
        async with deflate_client(server, "/plain") as ws:
            assert negotiated(ws) == ""
            await ws.send("hello")
            assert await ws.recv() == "hello"
        async with deflate_client(server, "/echo") as ws:
            assert negotiated(ws).startswith("permessage-deflate")

    run(main())


def test_frames_on_the_wire_are_compressed(make_server):
    server = make_server(
        lambda s: s.add_websocket_content("/echo", on_message=echo), compression=True
    )
    raw = RawClient(server.port, "/echo", extensions="permessage-deflate")
    try:
        assert "permessage-deflate" in raw.head.lower()
        message = b"a" * 10000
        body = zlib.compressobj(1, zlib.DEFLATED, -15)
        data = body.compress(message) + body.flush(zlib.Z_SYNC_FLUSH)
        raw.send(0x2, data[:-4], rsv=4)  # RSV1: compressed
        opcode, fin, payload = raw.recv()
        assert (opcode, fin, raw.last_rsv1) == (0x2, True, True)
        assert len(payload) < 200
        assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == message
    finally:
        raw.close()


def test_a_small_frame_that_inflates_past_the_limit_closes_1009(make_server):
    server = make_server(
        lambda s: s.add_websocket_content("/echo", on_message=echo),
        compression=True,
        max_message_size=1 << 20,
    )
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = bomb.compress(bytes(8 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    assert len(data) < 20000  # 8 MiB of zeros in a few KiB
    raw = RawClient(server.port, "/echo", extensions="permessage-deflate")
    try:
        raw.send(0x2, data[:-4], rsv=4)
        raw.expect_failure(1009)
    finally:
        raw.close()
    # the server and its other clients go on
    other = RawClient(server.port, "/echo")
    try:
        other.send(0x1, b"still here")
        assert other.recv() == (0x1, True, b"still here")
    finally:
        other.close()


def test_compressed_data_frames_need_a_negotiation(make_server):
    server = make_server(
        lambda s: s.add_websocket_content("/echo", on_message=echo), compression=True
    )
    raw = RawClient(server.port, "/echo")  # no extension offered
    try:
        raw.send(0x1, b"x", rsv=4)
        raw.expect_failure(1002)
    finally:
        raw.close()


def test_multicast_is_compressed_once_per_window_size(make_server):
    """Clients of two window sizes and plain clients: each gets the message,
    the server compresses it twice per multicast, not once per client."""
    server = make_server(
        lambda s: s.add_websocket_content("/echo", on_message=echo), compression=True
    )
    text = "broadcast " * 300

    async def main():
        wide = [deflate_client(server) for _ in range(3)]
        narrow = [deflate_client(server, server_max_window_bits=10) for _ in range(3)]
        plain = [connect(f"ws://127.0.0.1:{server.port}/echo", compression=None) for _ in range(2)]
        clients = [await c.__aenter__() for c in wide + narrow + plain]
        try:
            await asyncio.to_thread(wait_until, lambda: len(server.hub) == 8, interval=0.01)
            before = server.hub.compressions
            for round_ in range(3):
                server.multicast_text(f"{round_}:{text}")
                for ws in clients:
                    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == f"{round_}:{text}"
                # per-client messages after a shared frame still decode (context reset)
                for ws in clients:
                    await ws.send(f"own {round_} {text}")
                    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == f"own {round_} {text}"
            assert server.hub.compressions - before == 3 * 2
        finally:
            for ws in clients:
                await ws.close()

    run(main())


@pytest.mark.parametrize("fragment", [100, 4096])
def test_fragmented_compressed_messages(make_server, fragment):
    server = make_server(
        lambda s: s.add_websocket_content("/echo", on_message=echo), compression=True
    )
    message = ("fragmented " * 2000).encode()
    body = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = (body.compress(message) + body.flush(zlib.Z_SYNC_FLUSH))[:-4]
    raw = RawClient(server.port, "/echo", extensions="permessage-deflate")
    try:
        pieces = [data[i : i + fragment] for i in range(0, len(data), fragment)]
        for i, piece in enumerate(pieces):
            raw.send(
                0x1 if i == 0 else 0x0, piece, fin=i == len(pieces) - 1, rsv=4 if i == 0 else 0
            )
        opcode, fin, payload = raw.recv()
        assert opcode == 0x1 and fin
        assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == message
    finally:
        raw.close()
