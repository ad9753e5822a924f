"""The browser client ``/simplew.js`` in Chromium: its API against a real
server (token, direct messages, text and binary pubs, close), and the live
example (``examples/live.py``, ``www/live``), whose page sees every offset
exactly once across a dropped connection and across a restart of the server
process (the history then lives in a real Redis). Against a hostile server
(tests/hostile.py), every malformed message is a protocol error (a close 4002
and a reconnection) and the backoff restarts only after a connection lasted a
second past its welcome.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import jwt as pyjwt
import redis as redis_py

from helpers import ROOT
from hostile import EPOCH, OMIT, SESSION, HostileServer, nested, pub, welcome
from multiproc import free_port, port_open, wait_until
from simplew import Controller, WebSocketMessage, require_jwt, route, stream
from simplew.recovery import digest

INTERVAL_MS = 20


def start_live(port: int, redis_url: str | None = None) -> subprocess.Popen:
    """``examples/live.py`` on ``port``, ticking every INTERVAL_MS, listening."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "examples" / "live.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--interval",
            str(INTERVAL_MS),
        ]
        + (["--redis", redis_url] if redis_url else []),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 15, "live.py listening")
    except AssertionError:
        proc.kill()
        raise
    if proc.poll() is not None:
        raise AssertionError(f"live.py exited:\n{proc.stdout.read()}")
    return proc


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM (close 1001 to every client), wait, and return the output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    return output


SECRET = "a secret of the browser client tests, long enough"


@route("/browser")
class WhoAmI(Controller):
    @require_jwt
    @route("WEBSOCKET", "/me")
    def me(self, message: WebSocketMessage) -> str:
        return self.jwt["sub"]


def test_simplew_js_token_messages_pubs_and_close(browser, make_server):
    def configure(server) -> None:
        server.add_websocket_content(WhoAmI, "/ws")
        server.set_token(SECRET, algorithms=["HS256"])

    server = make_server(configure, recovery=True)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{server.port}/healthz")  # an origin for the import
    opened = page.evaluate(
        """async (token) => {
        const { SimplewClient, NotConnectedError } = await import("/simplew.js");
        const client = window.client = new SimplewClient({ token });
        const got = window.got = [];
        let refused = false;
        try { client.send("/ws/browser/me"); } catch (error) { refused = error instanceof NotConnectedError; }
        for (const type of ["open", "recovered", "reset", "msg", "pub", "close"]) {
          client.addEventListener(type, (e) => got.push([type, e.detail.data instanceof Uint8Array
            ? Array.from(e.detail.data) : e.detail]));
        }
        const welcome = await client.connect("/ws");
        client.send("/ws/browser/me");
        return { welcome, refused, connected: client.connected };
    }""",
        pyjwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
    )
    welcome = opened["welcome"]
    assert opened["refused"] and opened["connected"]
    assert welcome["recovered"] is False and len(welcome["session"]) >= 22
    page.wait_for_function("window.got.length >= 2")
    server.multicast_binary(b"\x00\x01\xfe\xff")
    server.multicast_text("héllo")
    page.wait_for_function("window.got.length >= 4")
    page.evaluate("window.client.close()")
    page.wait_for_function("window.got.length >= 5")
    got = page.evaluate("window.got")
    assert [event[0] for event in got] == ["open", "msg", "pub", "pub", "close"]
    assert got[1][1] == {"data": "alice"}
    binary, text = got[2][1], got[3][1]
    assert binary == [0, 1, 254, 255]  # a Uint8Array, from base64
    assert text["data"] == "héllo" and text["room"] is None
    assert text["offset"] > welcome["offset"]
    assert got[4][1] == {"code": 1000, "reason": "", "reconnecting": False}
    wait_until(lambda: len(server.sessions) == 0, 5, "the session gone")
    assert page.evaluate("window.client.connected") is False and errors == []
    # the reconnection delays: uniform in [0, min(20, 0.5 * 2**attempt)]
    delays = page.evaluate("""async () => {
        const { backoffDelay } = await import("/simplew.js");
        return [0, 1, 2, 3, 4, 5, 6, 7].map((attempt) =>
          Array.from({ length: 2000 }, () => backoffDelay(attempt, 0.5, 20)));
    }""")
    for samples, cap in zip(delays, [0.5, 1, 2, 4, 8, 16, 20, 20]):
        assert all(0 <= d <= cap for d in samples)
        assert 0.4 * cap < sum(samples) / len(samples) < 0.6 * cap


# messages that break simplew.v1 after a welcome: each closes its connection
BAD_AFTER_WELCOME = [
    pub(offset=10**4000),
    pub(offset=True),
    pub(offset=2**53),
    pub(offset=0),
    pub(offset="7"),
    pub(room=5),
    pub(room=OMIT),
    pub(text=5),
    pub(text=OMIT),
    pub(binary="AAE="),
    pub(text=OMIT, binary="AAE"),
    pub(text=OMIT, binary="AA*="),
    pub(text="\ud800"),
    json.dumps({"type": "msg", "text": 5}),
    json.dumps({"type": "msg", "binary": "A"}),
    welcome(recovered=True, offset=6),
    b"\x00",
    nested(),
    "[1]",
    json.dumps({"type": 1}),
    "{",
]
BAD_WELCOMES = [
    welcome(offset=True),
    welcome(session="s" * 300_000),
    welcome(epoch="e" * 65),
    welcome(missed=3),
    welcome(recovered=True),  # not asked for
    welcome(offset=2**53),
    pub(),
]


def simplew_js_page(browser, make_server):
    """A page of a simplew server (the origin that serves /simplew.js), with the
    client's events recorded in ``window.got``."""
    server = make_server(lambda s: s.add_websocket_content(WhoAmI, "/ws"), recovery=True)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{server.port}/healthz")
    return page, errors


def test_simplew_js_refuses_every_protocol_violation(browser, make_server):
    """Before the welcome, a violation closes the attempt with 4002 and the client
    tries again; after it, the same and a close event with 1002, nothing of the
    message applied: the resume query keeps the last valid pub's offset."""
    bad = len(BAD_WELCOMES)

    def script(index: int, path: str) -> tuple[list[str | bytes], float | None]:
        if index < bad:
            return [BAD_WELCOMES[index]], None
        if index == bad:
            return [welcome(), pub(offset=6, text="ok"), BAD_AFTER_WELCOME[0]], None
        after = index - bad
        if after < len(BAD_AFTER_WELCOME):
            return [welcome(recovered=True, offset=6), BAD_AFTER_WELCOME[after]], None
        return [welcome(recovered=True, offset=6)], None

    page, errors = simplew_js_page(browser, make_server)
    with HostileServer(script) as hostile:
        page.evaluate(
            """async (url) => {
            const { SimplewClient } = await import("/simplew.js");
            const client = window.client = new SimplewClient({ backoffMin: 0.01, backoffMax: 0.05 });
            const got = window.got = [];
            for (const type of ["open", "recovered", "reset", "msg", "pub", "close"]) {
              client.addEventListener(type, (e) => got.push([type, e.detail]));
            }
            await client.connect(url);
        }""",
            hostile.url,
        )
        page.wait_for_function(
            f"window.client.reconnects === {len(BAD_AFTER_WELCOME)} && window.client.connected",
            timeout=30_000,
        )
        state = page.evaluate(
            "({offset: client.offset, session: client.session, duplicates: client.duplicates})"
        )
        got = page.evaluate("window.got")
        page.evaluate("window.client.close()")
        connections = hostile.wait_connections(bad + len(BAD_AFTER_WELCOME) + 1)
    assert errors == []
    assert state == {"offset": 6, "session": SESSION, "duplicates": 0}
    pubs = [detail for kind, detail in got if kind == "pub"]
    assert pubs == [{"offset": 6, "room": None, "data": "ok"}]
    closes = [detail for kind, detail in got if kind == "close"]
    assert len(closes) == len(BAD_AFTER_WELCOME)
    for close in closes:
        assert (close["code"], close["reconnecting"]) == (1002, True)
        assert close["reason"].startswith("protocol error: ")
    assert [c.code for c in connections[:-1]] == [4002] * (len(connections) - 1)
    for connection in connections[bad + 1 :]:
        assert f"session={SESSION}&epoch={EPOCH}&offset=6" in connection.path


def test_simplew_js_backoff_restarts_only_after_a_stable_connection(browser, make_server):
    """A server that welcomes and closes at once: the waits double (Math.random
    is 1 here: each wait is the cap); after a connection that stayed up for
    more than a second, the next one comes back at once."""
    held = 5

    def script(index: int, path: str) -> tuple[list[str | bytes], float | None]:
        fields = {} if index == 0 else {"recovered": True}
        return [welcome(**fields)], 1.2 if index == held else 0.0

    page, errors = simplew_js_page(browser, make_server)
    with HostileServer(script) as hostile:
        page.evaluate(
            """async (url) => {
            Math.random = () => 1;
            const { SimplewClient } = await import("/simplew.js");
            window.client = new SimplewClient({ backoffMin: 0.05, backoffMax: 1 });
            await window.client.connect(url);
        }""",
            hostile.url,
        )
        page.wait_for_function(f"window.client.reconnects >= {held + 1}", timeout=20_000)
        page.evaluate("window.client.close()")
        connections = hostile.wait_connections(held + 2)
    assert errors == []
    waits = [b.opened - a.ended for a, b in zip(connections, connections[1:])]
    for attempt, wait in enumerate(waits[:held]):
        assert wait >= min(1.0, 0.05 * 2**attempt) * 0.9, waits
    assert waits[held] < 0.5, waits


def stats(page) -> dict:
    return page.evaluate("({...window.stats, offsets: undefined})")


def status(page) -> str:
    return page.text_content("#status")


def open_live_page(browser, port: int, errors: list[str]):
    page = browser.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{port}/?backoffMax=1")  # a slow restart: no long waits
    page.wait_for_function("window.stats && window.stats.received >= 25", timeout=10_000)
    return page


def wait_recovered_and_more(page) -> None:
    """Wait for the "recovered" status, then for 25 live pubs more."""
    page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('recovered')", timeout=30_000
    )
    received = stats(page)["received"]
    page.wait_for_function(f"window.stats.received >= {received + 25}", timeout=10_000)


def assert_every_offset_once(page, errors: list[str]) -> None:
    final = page.evaluate("({...window.stats, offsets: [...window.stats.offsets]})")
    offsets = final["offsets"]
    assert errors == []
    assert (final["gaps"], final["dups"], final["resets"]) == (0, 0, 0), final
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
    assert final["received"] == len(offsets)


def test_live_page_recovers_a_dropped_connection(browser):
    port = free_port()
    proc = start_live(port)
    try:
        errors: list[str] = []
        page = open_live_page(browser, port, errors)
        page.evaluate("window.client._ws.close(4001, 'dropped by the test')")  # not client.close()
        wait_recovered_and_more(page)
        assert_every_offset_once(page, errors)
        assert page.evaluate("window.client.reconnects") == 1
    finally:
        stop(proc)


def test_live_page_sees_every_offset_once_across_server_restarts(browser, redis_server):
    """A graceful restart (SIGTERM: close 1001), then a crash (SIGKILL) once
    Redis holds the session; the history lives in Redis."""
    port = free_port()
    procs = [start_live(port, redis_server.url)]
    store = redis_py.Redis.from_url(redis_server.url)
    try:
        errors: list[str] = []
        page = open_live_page(browser, port, errors)
        for crash in (False, True):
            if crash:
                session = page.evaluate("window.client.session")
                key = f"{stream.PREFIX}:session:{digest(session).hex()}"
                wait_until(lambda key=key: store.exists(key), 10, "the session written to Redis")
                procs[-1].kill()
            stop(procs[-1])
            page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('reconnecting')",
                timeout=10_000,
            )
            procs.append(start_live(port, redis_server.url))
            wait_recovered_and_more(page)
        assert_every_offset_once(page, errors)
        assert page.evaluate("window.client.reconnects") == 2
    finally:
        store.close()
        for proc in procs:
            stop(proc)


def test_simplew_js_refreshes_an_expiring_token_by_itself(browser, make_server):
    """The page's token function (a Promise from a /token route) is asked again when
    the server says the token expired: the connection stays and keeps its pubs."""

    def configure(server) -> None:
        server.add_websocket_content(WhoAmI, "/ws")
        server.set_token(SECRET, algorithms=["HS256"])
        server.map_get("/token", lambda: {"token": short_token("alice")})

    server = make_server(configure, recovery=True, token_grace=1.0)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{server.port}/healthz")
    page.evaluate("""async () => {
        const { SimplewClient } = await import("/simplew.js");
        const token = async () => (await (await fetch("/token")).json()).token;
        const client = window.client = new SimplewClient({ token });
        const got = window.got = [];
        for (const type of ["pub", "close"]) client.addEventListener(type, (e) => got.push([type, e.detail]));
        await client.connect("/ws");
    }""")
    wait_until(lambda: server.credentials.refreshed >= 2, 10, "two refreshes by the page")
    server.multicast_text("still here")
    page.wait_for_function("window.got.length >= 1")
    got = page.evaluate("window.got")
    assert got == [["pub", {"offset": got[0][1]["offset"], "room": None, "data": "still here"}]]
    assert server.credentials.expired == 0 and server.credentials.refused == 0
    assert errors == []
    page.evaluate("window.client.close()")


def short_token(sub: str, seconds: int = 2) -> str:
    import time

    return pyjwt.encode({"sub": sub, "exp": int(time.time()) + seconds}, SECRET, algorithm="HS256")
