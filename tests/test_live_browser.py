"""The browser client ``/simplew.js`` (simplew.v2) in Chromium: its API against a
real server (token, direct messages, text and binary pubs, close; a resume with
missed pubs in two rooms and a roomreset of a third after the server dropped the
page; a session in 1,100 rooms resumed), and the live example
(``examples/live.py``, ``www/live``), whose page sees every offset of every
stream (everyone's, and two rooms') exactly once across a dropped connection
and across restarts of the server process (the history then lives in a real
Redis). Against a hostile server (tests/hostile.py): every malformed message is
a protocol error (a close 4002 and a reconnection), each resume message holds
the positions of the last valid messages, join/leave/reset messages and a
recovered welcome's streams and ``left`` move the positions and fire their
events, and the backoff restarts only after a connection lasted a second past
its welcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import jwt as pyjwt
import redis as redis_py

from helpers import ROOT
from hostile import (
    EPOCH,
    OMIT,
    SESSION,
    HostileServer,
    encode,
    leave,
    nested,
    pub,
    recovered,
    welcome,
)
from multiproc import free_port, port_open, wait_until
from simplew import Controller, WebSocketMessage, require_jwt, route
from simplew.engines import Engine
from simplew.recovery import digest

INTERVAL_MS = 20


def start_live(port: int, redis_url: str | None = None) -> subprocess.Popen:
    """``examples/live.py`` on ``port``, ticking every INTERVAL_MS, listening."""
    pythonpath = os.environ.get("PYTHONPATH")
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
        # this checkout's simplew, not the one the environment may have installed
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), pythonpath]))},
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


@route("/pagerooms")
class PageRooms(Controller):
    @route("WEBSOCKET", "/join")
    def join(self, message: WebSocketMessage) -> None:
        self.session.join(message.body)

    @route("WEBSOCKET", "/leave")
    def leave(self, message: WebSocketMessage) -> None:
        self.session.leave(message.body)

    @route("WEBSOCKET", "/join-all")
    def join_all(self, message: WebSocketMessage) -> None:
        for room in message.body:
            self.session.join(room)


def test_simplew_js_resumes_missed_pubs_of_two_rooms(browser, make_server):
    """A page in the rooms blue, green and red; the server drops it (1001) and
    publishes while it is away: 1 pub to everyone, 1 to blue, 2 to red, 5 to
    green (more than the history of 3 holds). The resume recovers the session,
    the broadcast stream, blue and red (4 missed pubs, in the welcome's order) and
    resets green (a roomreset at green's position now); then a leave."""
    server = make_server(
        lambda s: s.add_websocket_content(PageRooms, "/ws"), recovery=True, history_size=3
    )
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{server.port}/healthz")
    page.evaluate(
        f"""async () => {{
        Math.random = () => 1;  // every reconnection waits the cap: 1 s
        const {{ SimplewClient }} = await import("/simplew.js");
        const client = window.client = new SimplewClient({{ backoffMin: 1, backoffMax: 1 }});
        const got = window.got = [];
        for (const type of {EVENTS}) client.addEventListener(type, (e) => got.push([type, e.detail]));
        await client.connect("/ws");
        for (const room of ["red", "blue", "green"]) client.send("/ws/pagerooms/join", room);
    }}"""
    )
    page.wait_for_function("window.got.filter(([t]) => t === 'join').length === 3")
    server.multicast_text("everyone 1")
    server.multicast_text("red 1", room="red")
    server.multicast_text("blue 1", room="blue")
    page.wait_for_function("window.got.filter(([t]) => t === 'pub').length === 3")
    before = dict((room, p) for room, p in positions(page))
    session = page.evaluate("window.client.session")

    server.disconnect_all()
    wait_until(lambda: not server.sessions, 5, "the page's connection gone")
    server.multicast_text("everyone 2")
    server.multicast_text("blue 2", room="blue")
    for n in (2, 3):
        server.multicast_text(f"red {n}", room="red")
    for n in range(1, 6):
        server.multicast_text(f"green {n}", room="green")
    page.wait_for_function(
        "window.client.reconnects === 1 && window.got.length >= 15", timeout=10_000
    )
    page.evaluate("window.client.send('/ws/pagerooms/leave', 'blue')")
    page.wait_for_function("window.got.some(([t]) => t === 'leave')")
    after = dict((room, p) for room, p in positions(page))
    got = page.evaluate("window.got")
    page.evaluate("window.client.close()")

    assert errors == []
    kinds = [kind for kind, _ in got]
    assert kinds == [
        "open",
        *["join"] * 3,
        *["pub"] * 3,
        "close",
        "open",
        "recovered",
        "roomreset",
        *["pub"] * 4,
        "leave",
    ], kinds
    first, joins = got[0][1], [detail for kind, detail in got[1:4]]
    assert first["recovered"] is False and first["missed"] == 0 and len(first["streams"]) == 1
    assert sorted(join["room"] for join in joins) == ["blue", "green", "red"]
    assert all(join["offset"] == 0 for join in joins)
    assert got[7][1]["code"] == 1001 and got[7][1]["reconnecting"] is True
    welcome = got[8][1]
    assert got[9][1] == welcome
    assert welcome["session"] == session and welcome["recovered"] is True
    assert welcome["missed"] == 4 and welcome["left"] == []
    green = before["green"]
    assert welcome["streams"] == [
        {"room": None, **before[None], "recovered": True, "missed": 1},
        {"room": "blue", **before["blue"], "recovered": True, "missed": 1},
        {"room": "green", "epoch": green["epoch"], "offset": 5, "recovered": False, "missed": 0},
        {"room": "red", **before["red"], "recovered": True, "missed": 2},
    ]
    assert got[10][1] == {"room": "green", "epoch": green["epoch"], "offset": 5}
    assert [(d["room"], d["offset"], d["data"]) for _, d in got[11:15]] == [
        (None, before[None]["offset"] + 1, "everyone 2"),
        ("blue", 2, "blue 2"),
        ("red", 2, "red 2"),
        ("red", 3, "red 3"),
    ]
    assert got[15][1] == {"room": "blue"}
    assert after == {
        None: {**before[None], "offset": before[None]["offset"] + 1},
        "green": {"epoch": green["epoch"], "offset": 5},
        "red": {**before["red"], "offset": 3},
    }
    assert page.evaluate("window.client.duplicates") == 0


def test_simplew_js_resumes_a_thousand_rooms(browser, make_server):
    """A session in 1,100 rooms (max_rooms_per_session=1200): its resume message
    holds 1,101 positions, and the welcome recovers every stream, with the pubs
    two rooms got while it was away."""
    count = 1100
    server = make_server(
        lambda s: s.add_websocket_content(PageRooms, "/ws"),
        recovery=True,
        max_rooms_per_session=1200,
    )
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{server.port}/healthz")
    page.evaluate(
        f"""async (count) => {{
        Math.random = () => 1;  // every reconnection waits the cap: 1 s
        const {{ SimplewClient }} = await import("/simplew.js");
        const client = window.client = new SimplewClient({{ backoffMin: 1, backoffMax: 1 }});
        const got = window.got = [];
        for (const type of {EVENTS}) client.addEventListener(type, (e) => got.push([type, e.detail]));
        await client.connect("/ws");
        const rooms = Array.from({{ length: count }}, (_, i) => `room ${{i}} ✓`);
        client.send("/ws/pagerooms/join-all", rooms);
    }}""",
        count,
    )
    page.wait_for_function(f"window.client.positions.size === {count + 1}", timeout=10_000)
    server.disconnect_all()
    wait_until(lambda: not server.sessions, 5, "the page's connection gone")
    server.multicast_text("first", room="room 7 ✓")
    server.multicast_text("last", room=f"room {count - 1} ✓")
    page.wait_for_function(
        "window.got.filter(([t]) => t === 'pub').length === 2 && window.client.connected",
        timeout=10_000,
    )
    got = page.evaluate(
        "window.got.filter(([t]) => t === 'recovered' || t === 'pub' || t === 'roomreset')"
        ".map(([t, d]) => [t, t === 'recovered' ? {...d, streams: d.streams.length,"
        " continued: d.streams.every((s) => s.recovered)} : d])"
    )
    size = page.evaluate("window.client.positions.size")
    page.evaluate("window.client.close()")
    assert errors == []
    assert [kind for kind, _ in got] == ["recovered", "pub", "pub"]
    welcome = got[0][1]
    assert (welcome["streams"], welcome["continued"], welcome["missed"]) == (count + 1, True, 2)
    assert sorted((d["room"], d["offset"], d["data"]) for _, d in got[1:]) == [
        (f"room {count - 1} ✓", 1, "last"),
        ("room 7 ✓", 1, "first"),
    ]
    assert size == count + 1


# -- simplew.v2 messages for the hostile server (tests/hostile.py sends what it is given):
# welcome, recovered, pub and leave from hostile.py; joins and resets at given positions

ROOM_EPOCH = "roomEpoch_1"
BROADCAST = [None, EPOCH, 5, False, 0]  # the broadcast stream's entry of a fresh welcome


def join2(room: Any = "red", epoch: Any = ROOM_EPOCH, offset: Any = 2, **fields: Any) -> str:
    return encode({"type": "join", "room": room, "epoch": epoch, "offset": offset}, fields)


def reset2(room: Any = "red", epoch: Any = "newEpoch", offset: Any = 0, **fields: Any) -> str:
    return encode({"type": "reset", "room": room, "epoch": epoch, "offset": offset}, fields)


def resume_of(connection) -> dict[str, Any]:
    """The resume message a connection of the hostile server received first."""
    assert "resume=1" in connection.path and "session" not in connection.path, connection.path
    assert connection.resume is not None, "no resume message"
    return connection.resume


# messages that break simplew.v2 after a welcome: each closes its connection
BAD_AFTER_WELCOME = [
    pub(offset=10**4000),
    pub(offset=True),
    pub(offset=2**53),
    pub(offset=0),
    pub(offset="7"),
    pub(room=5),
    pub(room=OMIT),
    pub(room=""),
    pub(room="r" * 256),
    pub(room="é" * 128),  # 128 UTF-16 units, 256 bytes of UTF-8
    pub(room="\ud800"),
    pub(epoch=OMIT),
    pub(epoch=""),
    pub(epoch="e" * 65),
    pub(epoch="an epoch"),
    pub(epoch=5),
    pub(text=5),
    pub(text=OMIT),
    pub(binary="AAE="),
    pub(text=OMIT, binary="AAE"),
    pub(text=OMIT, binary="AA*="),
    pub(text="\ud800"),
    json.dumps({"type": "msg", "text": 5}),
    json.dumps({"type": "msg", "binary": "A"}),
    join2(room=None),
    join2(room=OMIT),
    join2(room="r" * 256),
    join2(epoch="e" * 65),
    join2(offset=-1),
    join2(offset=True),
    leave(room=None),
    leave(room=5),
    reset2(room=OMIT),
    reset2(room=""),
    reset2(epoch=OMIT),
    reset2(offset=1.5),
    reset2(room=None, offset=2**53),
    welcome(),
    b"\x00",
    nested(),
    "[1]",
    json.dumps({"type": 1}),
    "{",
]
BAD_WELCOMES = [
    welcome(session="s" * 300_000),
    welcome(session="s" * 15),
    welcome(session=OMIT),
    welcome(recovered="no"),
    welcome(missed=True),
    welcome(missed=3),  # not the sum of the streams'
    welcome(streams=OMIT),
    welcome(streams=[]),
    welcome(streams={"0": BROADCAST}),
    welcome(streams=[["red", EPOCH, 5, False, 0]]),  # the first is not the broadcast stream
    welcome(streams=[BROADCAST, BROADCAST]),
    welcome(streams=[BROADCAST, ["r", EPOCH, 1, False, 0], ["r", EPOCH, 1, False, 0]]),
    welcome(streams=[BROADCAST, ["", EPOCH, 1, False, 0]]),
    welcome(streams=[[None, EPOCH, 5, False]]),
    welcome(streams=[[None, EPOCH, 5, False, 0, 0]]),
    welcome(streams=[[None, "e" * 65, 5, False, 0]]),
    welcome(streams=[[None, EPOCH, 2**53, False, 0]]),
    welcome(streams=[[None, EPOCH, True, False, 0]]),
    welcome(streams=[[None, EPOCH, 5, 0, 0]]),
    welcome(streams=[[None, EPOCH, 5, False, 1]], missed=1),  # missed of a stream not recovered
    welcome(streams=[[None, EPOCH, 5, True, 0]]),  # recovered without a resume
    welcome(recovered=True),  # not asked for
    welcome(left=["red"]),  # left in a fresh welcome
    pub(),
]
# welcomes that break simplew.v2 on a connection that resumed with
# [[null, EPOCH, 6], ["red", ROOM_EPOCH, 3]]
BAD_RESUMED_WELCOMES = [
    recovered([None, EPOCH, 5, True, 0], ["red", ROOM_EPOCH, 3, True, 0]),  # another offset
    recovered([None, "other", 6, True, 0], ["red", ROOM_EPOCH, 3, True, 0]),  # another epoch
    recovered([None, EPOCH, 6, True, 0], ["blue", ROOM_EPOCH, 3, True, 0]),  # not sent
    recovered([None, EPOCH, 6, True, 0], ["red", ROOM_EPOCH, 3, True, 0], session="x" * 20),
    recovered([None, EPOCH, 6, True, 1], ["red", ROOM_EPOCH, 3, True, 0], missed=2),
    recovered([None, EPOCH, 6, True, 0], ["red", ROOM_EPOCH, 3, True, 0], left="blue"),
    recovered([None, EPOCH, 6, True, 0], left=[None]),
    recovered([None, EPOCH, 6, True, 0], left=["r" * 256]),
    recovered([None, EPOCH, 6, True, 0], left=["red", "blue"]),  # blue: not sent
    recovered([None, EPOCH, 6, True, 0], ["red", ROOM_EPOCH, 3, True, 0], left=["red"]),
]
GOOD_RESUMED = recovered([None, EPOCH, 6, True, 0], ["red", ROOM_EPOCH, 3, True, 0])


def simplew_js_page(browser, make_server):
    """A page of a simplew server (the origin that serves /simplew.js), with the
    client's events recorded in ``window.got``."""
    server = make_server(lambda s: s.add_websocket_content(WhoAmI, "/ws"), recovery=True)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{server.port}/healthz")
    return page, errors


EVENTS = '["open", "recovered", "reset", "msg", "pub", "join", "leave", "roomreset", "close"]'


def positions(page) -> list[list[Any]]:
    """``client.positions`` as [[room, {epoch, offset}], ...]."""
    return page.evaluate("[...window.client.positions]")


def test_simplew_js_refuses_every_protocol_violation(browser, make_server):
    """Before the welcome, a violation closes the attempt with 4002 and the client
    tries again; after it, the same and a close event with 1002, nothing of the
    message applied: each resume message keeps the positions of the last valid
    pubs (the broadcast stream's and red's)."""
    bad, after = len(BAD_WELCOMES), len(BAD_AFTER_WELCOME)

    def script(index: int, path: str) -> tuple[list[str | bytes], float | None]:
        if index < bad:
            return [BAD_WELCOMES[index]], None
        if index == bad:
            return [
                welcome(),
                join2("red", ROOM_EPOCH, 2),
                pub(offset=6, text="ok"),
                pub(room="red", epoch=ROOM_EPOCH, offset=3, text="r"),
                pub(offset=6, text="again"),  # duplicates: an offset not above the held one,
                pub(room="red", epoch="other", offset=4),  # another epoch,
                pub(room="blue", epoch=ROOM_EPOCH, offset=4),  # a room not held
                reset2(room="blue"),  # a reset of a room not held: nothing
                BAD_AFTER_WELCOME[0],
            ], None
        index -= bad
        if index < after:
            return [GOOD_RESUMED, BAD_AFTER_WELCOME[index]], None
        index -= after
        if index < len(BAD_RESUMED_WELCOMES):
            return [BAD_RESUMED_WELCOMES[index]], None
        return [GOOD_RESUMED], None

    page, errors = simplew_js_page(browser, make_server)
    with HostileServer(script) as hostile:
        page.evaluate(
            f"""async (url) => {{
            const {{ SimplewClient }} = await import("/simplew.js");
            const client = window.client = new SimplewClient({{ backoffMin: 0.01, backoffMax: 0.05 }});
            const got = window.got = [];
            for (const type of {EVENTS}) {{
              client.addEventListener(type, (e) => got.push([type, e.detail]));
            }}
            await client.connect(url);
        }}""",
            hostile.url,
        )
        page.wait_for_function(
            f"window.client.reconnects === {after} && window.client.connected", timeout=60_000
        )
        state = page.evaluate(
            "({offset: client.offset, epoch: client.epoch, session: client.session,"
            " duplicates: client.duplicates})"
        )
        held = positions(page)
        got = page.evaluate("window.got")
        page.evaluate("window.client.close()")
        connections = hostile.wait_connections(bad + after + len(BAD_RESUMED_WELCOMES) + 1)
    assert errors == []
    assert state == {"offset": 6, "epoch": EPOCH, "session": SESSION, "duplicates": 3}
    assert held == [
        [None, {"epoch": EPOCH, "offset": 6}],
        ["red", {"epoch": ROOM_EPOCH, "offset": 3}],
    ]
    pubs = [detail for kind, detail in got if kind == "pub"]
    assert pubs == [
        {"room": None, "epoch": EPOCH, "offset": 6, "data": "ok"},
        {"room": "red", "epoch": ROOM_EPOCH, "offset": 3, "data": "r"},
    ]
    assert [detail for kind, detail in got if kind == "join"] == [
        {"room": "red", "epoch": ROOM_EPOCH, "offset": 2}
    ]
    kinds = {kind for kind, _ in got}
    assert not kinds & {"reset", "roomreset", "leave", "msg"}, kinds
    closes = [detail for kind, detail in got if kind == "close"]
    assert len(closes) == after
    for close in closes:
        assert (close["code"], close["reconnecting"]) == (1002, True)
        assert close["reason"].startswith("protocol error: ")
    assert [c.code for c in connections[:-1]] == [4002] * (len(connections) - 1)
    for connection in connections[: bad + 1]:
        assert "resume" not in connection.path and connection.resume is None
    for connection in connections[bad + 1 :]:
        assert resume_of(connection) == {
            "type": "resume",
            "session": SESSION,
            "streams": [[None, EPOCH, 6], ["red", ROOM_EPOCH, 3]],
        }


def test_simplew_js_join_leave_reset_and_a_thousand_rooms(browser, make_server):
    """join, leave and reset messages change the positions the client holds and
    fire join, leave and roomreset; the resume message carries 1,200 rooms; a
    recovered welcome continues the streams it recovered, fires roomreset for the
    others and leave for its ``left`` rooms; a fresh one (reset) replaces them all."""
    rooms = [f"room-{i:04d}-é" for i in range(1200)]

    def script(index: int, path: str) -> tuple[list[str | bytes], float | None]:
        if index == 0:
            return [
                welcome(),
                *(join2(room, ROOM_EPOCH, i) for i, room in enumerate(rooms)),
                join2("gone", ROOM_EPOCH, 9),
                leave("gone"),
                pub(room=rooms[1], epoch=ROOM_EPOCH, offset=2, text="one"),
                reset2(room=rooms[2], epoch="newEpoch", offset=10),
                pub(room=rooms[2], epoch=ROOM_EPOCH, offset=3),  # the old epoch: dropped
                pub(room=rooms[2], epoch="newEpoch", offset=11, text="two"),
                reset2(room=None, epoch="broadcast2", offset=0),
                pub(epoch="broadcast2", offset=1, text="three"),
            ], None
        if index == 1:
            streams = [[None, "broadcast2", 1, True, 1]]
            streams += [[room, ROOM_EPOCH, i, True, 0] for i, room in enumerate(rooms) if i > 3]
            streams += [
                [rooms[1], ROOM_EPOCH, 2, True, 2],
                [rooms[2], "newEpoch", 11, True, 0],
                [rooms[3], "fresh", 40, False, 0],
                ["new room", ROOM_EPOCH, 5, False, 0],
            ]
            return [
                recovered(*streams, left=[rooms[0]]),
                pub(epoch="broadcast2", offset=2, text="missed"),
                pub(room=rooms[1], epoch=ROOM_EPOCH, offset=3, text="missed 1"),
                pub(room=rooms[1], epoch=ROOM_EPOCH, offset=4, text="missed 2"),
                pub(room=rooms[0], epoch=ROOM_EPOCH, offset=1),  # left: dropped
            ], None
        return [welcome(session="another_session_0123")], None

    page, errors = simplew_js_page(browser, make_server)
    with HostileServer(script) as hostile:
        page.evaluate(
            f"""async (url) => {{
            const {{ SimplewClient }} = await import("/simplew.js");
            const client = window.client = new SimplewClient({{ backoffMin: 0.01, backoffMax: 0.05 }});
            const got = window.got = [];
            for (const type of {EVENTS}) {{
              client.addEventListener(type, (e) => got.push([type,
                type === "open" || type === "recovered" ? {{...e.detail, streams: e.detail.streams.length}}
                : e.detail]));
            }}
            await client.connect(url);
        }}""",
            hostile.url,
        )
        page.wait_for_function("window.got.filter(([t]) => t === 'pub').length === 3")
        first = positions(page)
        page.evaluate("window.client._ws.close(4001, 'dropped by the test')")  # not client.close()
        page.wait_for_function("window.got.filter(([t]) => t === 'pub').length === 6")
        second = positions(page)
        got_before_reset = page.evaluate("window.got")
        page.evaluate("window.client._ws.close(4001, 'dropped by the test')")
        page.wait_for_function("window.client.resets === 1 && window.client.connected")
        third = positions(page)
        reset_detail = page.evaluate("window.got.filter(([t]) => t === 'reset')[0][1]")
        page.evaluate("window.client.close()")
        connections = hostile.wait_connections(3)
    assert errors == []
    assert dict((room, tuple(p.values())) for room, p in first) == {
        None: ("broadcast2", 1),
        rooms[0]: (ROOM_EPOCH, 0),
        rooms[1]: (ROOM_EPOCH, 2),
        rooms[2]: ("newEpoch", 11),
        **{room: (ROOM_EPOCH, i) for i, room in enumerate(rooms) if i > 2},
    }
    resume = resume_of(connections[1])
    assert resume["session"] == SESSION and len(resume["streams"]) == 1201
    assert sorted(map(tuple, resume["streams"]), key=repr) == sorted(
        ((room, *p.values()) for room, p in first), key=repr
    )
    assert dict((room, tuple(p.values())) for room, p in second) == {
        None: ("broadcast2", 2),
        rooms[1]: (ROOM_EPOCH, 4),
        rooms[2]: ("newEpoch", 11),
        rooms[3]: ("fresh", 40),
        "new room": (ROOM_EPOCH, 5),
        **{room: (ROOM_EPOCH, i) for i, room in enumerate(rooms) if i > 3},
    }
    events = [(kind, detail) for kind, detail in got_before_reset if kind not in ("join", "close")]
    joins = [detail["room"] for kind, detail in got_before_reset if kind == "join"]
    assert joins == [*rooms, "gone"]
    assert events == [
        (
            "open",
            {
                "session": SESSION,
                "epoch": EPOCH,
                "offset": 5,
                "recovered": False,
                "missed": 0,
                "left": [],
                "streams": 1,
            },
        ),
        ("leave", {"room": "gone"}),
        ("pub", {"room": rooms[1], "epoch": ROOM_EPOCH, "offset": 2, "data": "one"}),
        ("roomreset", {"room": rooms[2], "epoch": "newEpoch", "offset": 10}),
        ("pub", {"room": rooms[2], "epoch": "newEpoch", "offset": 11, "data": "two"}),
        ("roomreset", {"room": None, "epoch": "broadcast2", "offset": 0}),
        ("pub", {"room": None, "epoch": "broadcast2", "offset": 1, "data": "three"}),
        (
            "open",
            {
                "session": SESSION,
                "epoch": "broadcast2",
                "offset": 1,
                "recovered": True,
                "missed": 3,
                "left": [rooms[0]],
                "streams": 1201,
            },
        ),
        (
            "recovered",
            {
                "session": SESSION,
                "epoch": "broadcast2",
                "offset": 1,
                "recovered": True,
                "missed": 3,
                "left": [rooms[0]],
                "streams": 1201,
            },
        ),
        ("roomreset", {"room": rooms[3], "epoch": "fresh", "offset": 40}),
        ("roomreset", {"room": "new room", "epoch": ROOM_EPOCH, "offset": 5}),
        ("leave", {"room": rooms[0]}),
        ("pub", {"room": None, "epoch": "broadcast2", "offset": 2, "data": "missed"}),
        ("pub", {"room": rooms[1], "epoch": ROOM_EPOCH, "offset": 3, "data": "missed 1"}),
        ("pub", {"room": rooms[1], "epoch": ROOM_EPOCH, "offset": 4, "data": "missed 2"}),
    ]
    assert page.evaluate("window.client.duplicates") == 2
    # the fresh session: its streams replace everything held
    assert len(resume_of(connections[2])["streams"]) == 1201
    assert third == [[None, {"epoch": EPOCH, "offset": 5}]]
    assert reset_detail == {
        "session": "another_session_0123",
        "epoch": EPOCH,
        "offset": 5,
        "recovered": False,
        "missed": 0,
        "left": [],
        "streams": [{"room": None, "epoch": EPOCH, "offset": 5, "recovered": False, "missed": 0}],
    }


def test_simplew_js_backoff_restarts_only_after_a_stable_connection(browser, make_server):
    """A server that welcomes and closes at once: the waits double (Math.random
    is 1 here: each wait is the cap); after a connection that stayed up for
    more than a second, the next one comes back at once. The waits are measured
    in the page, from each close event to the next open event."""
    held = 5

    def script(index: int, path: str) -> tuple[list[str | bytes], float | None]:
        message = welcome() if index == 0 else recovered([None, EPOCH, 5, True, 0])
        return [message], 1.2 if index == held else 0.0

    page, errors = simplew_js_page(browser, make_server)
    with HostileServer(script) as hostile:
        page.evaluate(
            """async (url) => {
            Math.random = () => 1;
            const { SimplewClient } = await import("/simplew.js");
            const client = window.client = new SimplewClient({ backoffMin: 0.05, backoffMax: 1 });
            const times = window.times = [];
            for (const type of ["open", "close"]) {
              client.addEventListener(type, () => times.push([type, performance.now() / 1000]));
            }
            await client.connect(url);
        }""",
            hostile.url,
        )
        page.wait_for_function(f"window.client.reconnects >= {held + 1}", timeout=20_000)
        page.evaluate("window.client.close()")
        times = page.evaluate("window.times")
        hostile.wait_connections(held + 2)
    assert errors == []
    kinds = [kind for kind, _ in times]
    assert kinds[: 2 * (held + 1) + 1] == ["open", "close"] * (held + 1) + ["open"], kinds
    waits = [times[i + 1][1] - times[i][1] for i in range(1, 2 * (held + 1), 2)]
    for attempt, wait in enumerate(waits[:held]):
        assert wait >= min(1.0, 0.05 * 2**attempt) * 0.95, waits
    assert waits[held] < 0.5, waits


LIVE_ROOMS = "red,blue"  # the rooms the live page joins (?rooms=)
LIVE_STREAMS = "[null, 'red', 'blue']"  # its streams: everyone's and the two rooms'


def received(page) -> list[int]:
    """The pubs the live page received of each of LIVE_STREAMS."""
    return page.evaluate(
        f"{LIVE_STREAMS}.map((room) => window.stats.streams.get(room)?.received ?? 0)"
    )


def wait_received(page, counts: list[int], timeout: float = 10_000) -> None:
    page.wait_for_function(
        f"""(counts) => window.stats && {LIVE_STREAMS}.every((room, i) =>
            (window.stats.streams.get(room)?.received ?? 0) >= counts[i])""",
        arg=counts,
        timeout=timeout,
    )


def open_live_page(browser, port: int, errors: list[str]):
    page = browser.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    # backoffMax: a slow restart makes no long waits
    page.goto(f"http://127.0.0.1:{port}/?backoffMax=1&rooms={LIVE_ROOMS}")
    wait_received(page, [25, 25, 25])
    return page


def wait_recovered_and_more(page) -> None:
    """Wait for the "recovered" status, then for 25 live pubs more in each stream."""
    page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('recovered')", timeout=30_000
    )
    wait_received(page, [count + 25 for count in received(page)])


def assert_every_offset_once(page, errors: list[str]) -> None:
    """In each stream: every offset once, in order, no gap, duplicate or reset;
    the table shows the positions the client holds."""
    final = page.evaluate(
        """({resets: window.stats.resets,
             streams: [...window.stats.streams].map(([room, s]) => [room, s]),
             positions: [...window.client.positions].map(([room, p]) => [room, p.epoch]),
             rows: [...document.querySelectorAll('#streams tbody tr')].map((row) =>
               [...row.children].slice(0, 2).map((cell) => cell.textContent))})"""
    )
    assert errors == []
    assert final["resets"] == 0
    streams = dict(final["streams"])
    assert sorted(streams, key=str) == sorted([None, "red", "blue"], key=str)
    for room, s in streams.items():
        offsets = s["offsets"]
        assert (s["gaps"], s["dups"], s["resets"]) == (0, 0, 0), (room, s)
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), room
        assert s["received"] == len(offsets) >= 50, room
    assert final["rows"] == [
        ["everyone" if room is None else room, epoch]
        for room, epoch in sorted(final["positions"], key=lambda p: (p[0] is not None, p[0] or ""))
    ]
    assert [row[0] for row in final["rows"]] == ["everyone", "blue", "red"]


def test_live_page_recovers_a_dropped_connection(browser):
    """Every offset of each stream once across a dropped connection; then the
    room boxes leave blue and join green (leave and join events: the table follows)."""
    port = free_port()
    proc = start_live(port)
    try:
        errors: list[str] = []
        page = open_live_page(browser, port, errors)
        page.evaluate("window.client._ws.close(4001, 'dropped by the test')")  # not client.close()
        wait_recovered_and_more(page)
        assert_every_offset_once(page, errors)
        assert page.evaluate("window.client.reconnects") == 1
        page.uncheck("input[value=blue]")
        page.check("input[value=green]")
        page.wait_for_function(
            "[...window.client.positions.keys()].filter((r) => r !== null).sort().join() === 'green,red'",
            timeout=10_000,
        )
        page.wait_for_selector("#streams tr[data-room=green]")
        rows = page.eval_on_selector_all(
            "#streams tbody tr", "(rows) => rows.map((r) => r.dataset.room)"
        )
        assert rows == ["everyone", "green", "red"]
        assert errors == []
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
                key = Engine.session_key(digest(session).hex())
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
    detail = got[0][1]
    assert got == [["pub", {**detail, "room": None, "data": "still here"}]]
    assert detail["offset"] >= 1 and detail["epoch"]
    assert server.credentials.expired == 0 and server.credentials.refused == 0
    assert errors == []
    page.evaluate("window.client.close()")


def short_token(sub: str, seconds: int = 2) -> str:
    import time

    return pyjwt.encode({"sub": sub, "exp": int(time.time()) + seconds}, SECRET, algorithm="HS256")
