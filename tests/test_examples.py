"""The example programs, run as subprocesses and driven by real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from datetime import datetime
from functools import partial

import pytest
from websockets.asyncio.client import connect

from helpers import ROOT, run

TIMEOUT = 5.0


run = partial(run, timeout=20)  # helpers.run, failing after 20 s rather than 30


async def recv(ws, timeout: float = TIMEOUT):
    return await asyncio.wait_for(ws.recv(), timeout)


async def ask(ws, message: dict):
    """Send a WebSocketMessage envelope and return the decoded JSON answer."""
    await ws.send(json.dumps(message))
    return json.loads(await recv(ws))


# -- push --------------------------------------------------------------------


def test_push_interval_reaches_two_clients(run_example):
    _, port = run_example("push.py", "--interval", "0.2")

    async def scenario():
        url = f"ws://127.0.0.1:{port}/websocket"
        async with connect(url) as a, connect(url) as b:
            assert await recv(a) == "hello"
            assert await recv(b) == "hello"
            assert await recv(a) == "hello"  # the timer keeps going

    run(scenario())


def test_push_line_s_on_stdin(run_example):
    proc, port = run_example("push.py")

    async def scenario():
        url = f"ws://127.0.0.1:{port}/websocket"
        async with connect(url) as a, connect(url) as b:
            proc.stdin.write("x\n")  # other lines are ignored
            proc.stdin.write("s\n")
            proc.stdin.flush()
            assert await recv(a) == "hello"
            assert await recv(b) == "hello"
            with pytest.raises(asyncio.TimeoutError):
                await recv(a, timeout=0.3)  # one line, one hello

    run(scenario())


def test_push_keeps_serving_after_stdin_eof(run_example):
    proc, port = run_example("push.py", "--interval", "0.2")
    proc.stdin.close()

    async def scenario():
        async with connect(f"ws://127.0.0.1:{port}/websocket") as ws:
            assert await recv(ws) == "hello"

    run(scenario())
    assert proc.poll() is None


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_push_key_press_on_a_terminal():
    """On a terminal a single ``s`` key, without Enter, multicasts."""
    import pty

    from helpers import free_port, wait_for_port

    port = free_port()
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "push.py"), "--port", str(port)],
        cwd=ROOT,
        stdin=terminal,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(terminal)
    try:
        wait_for_port(port)

        async def scenario():
            async with connect(f"ws://127.0.0.1:{port}/websocket") as ws:
                os.write(controller, b"s")
                assert await recv(ws) == "hello"

        run(scenario())
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        os.close(controller)


# -- receiving ---------------------------------------------------------------


def test_receiving_routes_to_test_controller(run_example):
    _, port = run_example("receiving.py")

    async def scenario():
        async with connect(f"ws://127.0.0.1:{port}/websocket") as ws:
            await ws.send(json.dumps({"url": "/websocket/test/index"}))
            assert await recv(ws) == "index"
            await ws.send(json.dumps({"url": "/websocket/test/create"}))
            assert await recv(ws) == "create"

    run(scenario())


# -- advanced ----------------------------------------------------------------


def test_advanced_index_and_create(run_example):
    proc, port = run_example("advanced.py")

    async def scenario():
        async with connect(f"ws://127.0.0.1:{port}/websocket") as ws:
            assert await ask(ws, {"url": "/websocket/user/index", "body": "hello"}) == {
                "hello": "world"
            }
            user = await ask(
                ws, {"url": "/websocket/user/create", "body": {"name": "John Doe", "enabled": True}}
            )
            assert set(user) == {"id", "name", "creation", "enabled"}
            assert uuid.UUID(user["id"]).version == 4
            assert user["name"] == "John Doe"
            assert user["enabled"] is True
            assert isinstance(datetime.fromisoformat(user["creation"]), datetime)
            other = await ask(ws, {"url": "/websocket/user/create", "body": {"name": "Jane"}})
            assert other["id"] != user["id"]
            assert other["enabled"] is False

    run(scenario())


def test_advanced_create_with_a_body_that_does_not_fit(run_example):
    _, port = run_example("advanced.py")

    async def scenario():
        async with connect(f"ws://127.0.0.1:{port}/websocket") as ws:
            for body in [{"name": 5}, {"nickname": "x"}, {"enabled": "yes"}, "John Doe", None]:
                error = await ask(ws, {"url": "/websocket/user/create", "body": body})
                assert error["error"] == "bad_body", body
                assert error["url"] == "/websocket/user/create"
                assert error["message"]
                # the connection stays usable
                assert await ask(ws, {"url": "/websocket/user/index"}) == {"hello": "world"}

    run(scenario())


# -- echo --------------------------------------------------------------------


def test_echo_returns_every_message_as_it_came(run_example):
    _, port = run_example("echo.py")
    big = os.urandom(100 * 1024)

    async def scenario():
        async with connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
            for message in [
                "hello",
                "héllo wörld ✓ 日本語 🎉",
                "",
                b"\x00\x01\xff",
                b"",
                big,
                "x" * 70000,
            ]:
                await ws.send(message)
                echoed = await recv(ws)
                assert type(echoed) is type(message)
                assert echoed == message
            # fragmented messages come back whole
            await ws.send(["frag", "mented ", "ünïcode"])
            assert await recv(ws) == "fragmented ünïcode"
            await ws.send([b"ab", b"cd"])
            assert await recv(ws) == b"abcd"

    run(scenario())


# -- pages and process behaviour ---------------------------------------------


@pytest.mark.parametrize("name", ["push", "receiving", "advanced"])
def test_page_is_served(run_example, name):
    _, port = run_example(f"{name}.py")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=TIMEOUT) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        assert "max-age=86400" in response.headers.get("Cache-Control", "")
        body = response.read()
    assert body == (ROOT / "www" / name / "index.html").read_bytes()
    assert b'<ul id="logs">' in body


def test_examples_serve_their_page_whatever_the_working_directory(tmp_path):
    from helpers import free_port, wait_for_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "examples" / "receiving.py"),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=TIMEOUT) as response:
            assert b"/websocket/test/index" in response.read()
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize(
    "script, signum",
    [
        ("push.py", signal.SIGTERM),
        ("receiving.py", signal.SIGTERM),
        ("advanced.py", signal.SIGTERM),
        ("echo.py", signal.SIGTERM),
        ("push.py", signal.SIGINT),
        ("echo.py", signal.SIGINT),
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else v,
)
def test_example_prints_its_address_and_stops_cleanly(run_example, script, signum):
    proc, port = run_example(script)

    async def scenario():
        path = "/" if script == "echo.py" else "/websocket"
        async with connect(f"ws://127.0.0.1:{port}{path}") as ws:
            proc.send_signal(signum)
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            return ws.close_code

    assert run(scenario()) == 1001  # clients are told the server goes away
    assert proc.wait(timeout=10) == 0
    output = proc.stdout.read()
    scheme = "ws" if script == "echo.py" else "http"
    assert output.splitlines()[0].startswith(f"serving {scheme}://localhost:{port}/")
