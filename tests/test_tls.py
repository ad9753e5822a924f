"""https:// and wss:// from a certificate and key, with certificate verification on.

A throw-away CA and a server certificate for 127.0.0.1/localhost are made at
run time with trustme; the clients trust that CA only. Every test runs on both
transports: the event loop's own (the default, ``use_aiofastnet=False``) and aiofastnet's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest
import trustme
from websockets.asyncio.client import connect

from helpers import ROOT, free_port, run, wait_for_port
from simplew import Controller, WebSocketMessage, route

TIMEOUT = 5.0
MIB = 1 << 20
PAGE = (ROOT / "www" / "push" / "index.html").read_bytes()


@route("/tls")
class TlsController(Controller):
    @route("WEBSOCKET", "/echo")
    def echo(self, message: WebSocketMessage) -> Any:
        return {"echo": message.body, "scheme": "wss"}


def echo(session, data) -> None:
    if isinstance(data, str):
        session.send_text(data)
    else:
        session.send_binary(data)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cert(ca) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def client_ctx(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # verification on
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture(params=[True, False], ids=["aiofastnet", "asyncio"])
def tls_server(request, make_server, cert):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)

    def setup(server) -> None:
        server.add_static_content(str(ROOT / "www" / "push"), "/")
        server.add_websocket_content(TlsController, "/websocket")
        server.add_websocket_content("/echo", on_message=echo)

    server = make_server(setup, ssl=ctx, use_aiofastnet=request.param)
    assert server._use_aiofastnet is request.param
    return server


def wss(server, ctx, path: str, **kwargs):
    return connect(
        f"wss://localhost:{server.port}{path}",
        ssl=ctx,
        proxy=None,
        compression=None,
        open_timeout=TIMEOUT,
        max_size=None,
        **kwargs,
    )


def test_https_static_file(tls_server, client_ctx):
    url = f"https://localhost:{tls_server.port}/index.html"
    with urllib.request.urlopen(url, context=client_ctx, timeout=TIMEOUT) as response:
        assert response.status == 200
        assert response.read() == PAGE
    # verification is really on: a client that does not trust the CA is refused
    with pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=TIMEOUT)
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    # and plain HTTP on the TLS port gets nothing useful
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{tls_server.port}/", timeout=TIMEOUT).read()


def test_wss_controller_round_trip_and_multicast(tls_server, client_ctx):
    async def go():
        async with (
            wss(tls_server, client_ctx, "/websocket") as a,
            wss(tls_server, client_ctx, "/websocket") as b,
        ):
            await a.send(json.dumps({"url": "/websocket/tls/echo", "body": {"n": 1}}))
            assert json.loads(await asyncio.wait_for(a.recv(), TIMEOUT)) == {
                "echo": {"n": 1},
                "scheme": "wss",
            }
            tls_server.multicast_text("to everyone")
            for ws in (a, b):
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "to everyone"
            tls_server.multicast_binary(b"\x00\x01")
            for ws in (a, b):
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"\x00\x01"

    run(go())


def test_one_mib_messages_both_ways(tls_server, client_ctx):
    binary = os.urandom(MIB)  # exactly max_message_size
    text = "é" * (MIB // 2)  # 1 MiB of UTF-8

    async def go():
        async with (
            wss(tls_server, client_ctx, "/echo") as a,
            wss(tls_server, client_ctx, "/echo") as b,
        ):
            await a.send(binary)
            assert await asyncio.wait_for(a.recv(), TIMEOUT) == binary
            await a.send(text)
            assert await asyncio.wait_for(a.recv(), TIMEOUT) == text
            tls_server.multicast_binary(binary)
            for ws in (a, b):
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == binary
            # one byte more is refused with 1009, as over plain TCP
            await b.send(binary + b"x")
            await asyncio.wait_for(b.wait_closed(), TIMEOUT)
            assert b.close_code == 1009

    run(go())


def test_get_then_upgrade_hand_off_over_tls(tls_server, client_ctx):
    """A keep-alive GET, then the upgrade on the same TLS connection, with a frame
    in the same write as the upgrade request: the TLS transport moves to picows
    without losing a byte."""

    async def go():
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", tls_server.port, ssl=client_ctx, server_hostname="localhost"
        )
        try:
            writer.write(b"GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            assert await reader.readexactly(length) == PAGE

            key = base64.b64encode(os.urandom(16))
            payload = b"right after the upgrade"
            mask = os.urandom(4)
            frame = (
                bytes([0x81, 0x80 | len(payload)])
                + mask
                + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            )
            writer.write(
                b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: "
                + key
                + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
                + frame
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 101")
            assert (
                await asyncio.wait_for(reader.readexactly(2 + len(payload)), TIMEOUT)
                == bytes([0x81, len(payload)]) + payload
            )
            # a clean close over TLS
            writer.write(
                bytes([0x88, 0x82])
                + mask
                + bytes(c ^ mask[i % 4] for i, c in enumerate(b"\x03\xe8"))
            )
            close = await asyncio.wait_for(reader.readexactly(4), TIMEOUT)
            assert close == b"\x88\x02\x03\xe8"
        finally:
            writer.close()

    run(go())


def test_cli_serves_https_and_wss(cert, client_ctx, tmp_path):
    """``simplew serve --certfile --keyfile``: the same over TLS from the command line."""
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simplew",
            "serve",
            "--static",
            "www/push",
            "--ws",
            "/websocket",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--certfile",
            str(certfile),
            "--keyfile",
            str(keyfile),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port)
        with urllib.request.urlopen(
            f"https://localhost:{port}/", context=client_ctx, timeout=TIMEOUT
        ) as response:
            assert response.read() == PAGE

        async def go():
            async with connect(
                f"wss://localhost:{port}/websocket",
                ssl=client_ctx,
                proxy=None,
                open_timeout=TIMEOUT,
            ) as ws:
                await ws.send("not json")
                assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["error"] == "bad_json"

        run(go())
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert f"https://127.0.0.1:{port}/" in out
