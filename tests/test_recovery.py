"""Recovery in one process: simplew.v1 sessions survive a cut connection.

Real server on a loopback port, real websockets clients offering the
``simplew.v1`` subprotocol; connections are cut with a TCP reset.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from simplew import Controller, WebSocketMessage, route

TIMEOUT = 5.0


@route("/rooms")
class RoomsController(Controller):
    @route("WEBSOCKET", "/join")
    def join(self, message: WebSocketMessage) -> None:
        self.session.join(message.body)
        self.session.send_text("joined " + message.body)

    @route("WEBSOCKET", "/whoami")
    def whoami(self, message: WebSocketMessage) -> dict[str, Any]:
        return {"rooms": sorted(self.session.rooms), "recovered": self.session.recovered}


def open_v1(port: int, query: str = "", **kwargs):
    """An open simplew.v1 connection; usable in ``with`` or cut with ``reset``."""
    return connect(
        f"ws://127.0.0.1:{port}/ws{query}",
        subprotocols=["simplew.v1"],
        proxy=None,
        open_timeout=TIMEOUT,
        close_timeout=1,
        compression=None,
        **kwargs,
    ).__enter__()


def resume_query(welcome: dict[str, Any], offset: int) -> str:
    return f"?session={welcome['session']}&epoch={welcome['epoch']}&offset={offset}"


def recv_json(ws, timeout: float = TIMEOUT) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def reset(ws) -> None:
    """Cut the TCP connection with a reset (no close handshake, no FIN)."""
    ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.socket.close()
    try:
        ws.close()
    except Exception:
        pass


class Publisher(threading.Thread):
    """Multicasts ``i`` (text) at ``rate`` per second, to everyone or round-robin rooms."""

    def __init__(self, server, rate: float, rooms: list[str | None] | None = None) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.period = 1.0 / rate
        self.rooms = rooms or [None]
        self.count = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stopped.is_set():
            room = self.rooms[self.count % len(self.rooms)]
            self.server.multicast_text(f"{self.count}", room=room)
            self.count += 1
            delay = start + self.count * self.period - time.monotonic()
            if delay > 0:
                self.stopped.wait(delay)

    def stop(self) -> int:
        self.stopped.set()
        self.join()
        return self.count


@pytest.fixture
def v1_server(make_server):
    def make(**options):
        options.setdefault("recovery", True)
        return make_server(lambda s: s.add_websocket_content(RoomsController, "/ws"), **options)

    return make


def collect_pubs(
    ws, pubs: list[dict[str, Any]], until_text: str | None = None, duration: float | None = None
) -> None:
    """Append every ``pub`` received to ``pubs`` until the text ``until_text`` arrives
    or ``duration`` seconds pass."""
    deadline = time.monotonic() + (duration if duration is not None else TIMEOUT)
    if pubs and until_text is not None and pubs[-1].get("text") == until_text:
        return
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            if duration is not None:
                return
            raise AssertionError(f"{until_text!r} never arrived")
        try:
            message = recv_json(ws, timeout=left)
        except TimeoutError:
            continue
        if message["type"] == "pub":
            pubs.append(message)
            if message.get("text") == until_text:
                return


def test_welcome_pub_and_msg_frames(v1_server):
    server = v1_server()
    with open_v1(server.port) as ws:
        assert ws.subprotocol == "simplew.v1"
        welcome = recv_json(ws)
        assert welcome["type"] == "welcome" and welcome["recovered"] is False
        assert welcome["missed"] == 0 and welcome["offset"] == 0
        assert len(welcome["session"]) >= 22 and welcome["epoch"]
        server.multicast_text("héllo")
        server.multicast_binary(b"\x00\xff")
        assert recv_json(ws) == {"type": "pub", "offset": 1, "room": None, "text": "héllo"}
        assert recv_json(ws) == {"type": "pub", "offset": 2, "room": None, "binary": "AP8="}
        ws.send(json.dumps({"url": "/ws/rooms/whoami"}))
        reply = recv_json(ws)
        assert reply["type"] == "msg"
        assert json.loads(reply["text"]) == {"rooms": [], "recovered": False}
        ws.send("{not json")
        error = recv_json(ws)
        assert error["type"] == "msg" and json.loads(error["text"])["error"] == "bad_json"
        assert server.find_session(welcome["session"]) is not None


def test_plain_clients_unchanged(v1_server):
    server = v1_server()
    with (
        connect(f"ws://127.0.0.1:{server.port}/ws", proxy=None, compression=None) as plain,
        open_v1(server.port) as v1,
    ):
        assert plain.subprotocol is None
        recv_json(v1)  # welcome
        server.multicast_text("raw")
        assert plain.recv(timeout=TIMEOUT) == "raw"
        assert recv_json(v1)["text"] == "raw"
        plain.send(json.dumps({"url": "/ws/rooms/whoami"}))
        assert json.loads(plain.recv(timeout=TIMEOUT)) == {"rooms": [], "recovered": False}


def test_reset_under_load_loses_nothing(v1_server):
    """Cut by RST while 500 multicasts a second go out; back after 1 s: every
    offset exactly once, in order."""
    server = v1_server()
    ws = open_v1(server.port)
    welcome = recv_json(ws)
    publisher = Publisher(server, 500)
    publisher.start()
    pubs: list[dict[str, Any]] = []
    collect_pubs(ws, pubs, duration=0.7)
    assert pubs, "no publication before the cut"
    reset(ws)
    time.sleep(1.0)
    ws = open_v1(server.port, resume_query(welcome, pubs[-1]["offset"]))
    again = recv_json(ws)
    assert again["recovered"] is True and again["session"] == welcome["session"]
    assert again["offset"] == pubs[-1]["offset"] and again["missed"] >= 400
    collect_pubs(ws, pubs, duration=0.7)
    total = publisher.stop()
    collect_pubs(ws, pubs, until_text=str(total - 1))
    ws.close()
    offsets = [p["offset"] for p in pubs]
    assert offsets == list(range(welcome["offset"] + 1, welcome["offset"] + total + 1))
    assert [p["text"] for p in pubs] == [str(i) for i in range(total)]


def test_rooms_restored_without_application_code(v1_server):
    server = v1_server()
    joins: list[str] = []
    server.on_connect(lambda session: joins.append(session.id))
    ws = open_v1(server.port)
    welcome = recv_json(ws)
    for room in ("a", "b", "c"):
        ws.send(json.dumps({"url": "/ws/rooms/join", "body": room}))
        assert recv_json(ws)["text"] == "joined " + room
    publisher = Publisher(server, 500, rooms=[None, "a", "b", "c", "d"])
    publisher.start()
    pubs: list[dict[str, Any]] = []
    collect_pubs(ws, pubs, duration=0.5)
    reset(ws)
    time.sleep(1.0)
    ws = open_v1(server.port, resume_query(welcome, pubs[-1]["offset"]))
    assert recv_json(ws)["recovered"] is True
    collect_pubs(ws, pubs, duration=0.5)
    total = publisher.stop()
    last = max(i for i in range(total) if i % 5 != 4)  # the last one not for "d"
    collect_pubs(ws, pubs, until_text=str(last))
    ws.send(json.dumps({"url": "/ws/rooms/whoami"}))
    while (reply := recv_json(ws))["type"] != "msg":
        pass
    assert json.loads(reply["text"]) == {"rooms": ["a", "b", "c"], "recovered": True}
    ws.close()
    assert [p["text"] for p in pubs] == [str(i) for i in range(last + 1) if i % 5 != 4]
    assert all(p["room"] in (None, "a", "b", "c") for p in pubs)
    offsets = [p["offset"] for p in pubs]
    assert offsets == sorted(set(offsets))
    assert len(joins) == 2  # on_connect runs per connection


def test_beyond_the_window_is_a_fresh_session(v1_server):
    server = v1_server(recovery_window=0.3)
    ended: list[str] = []
    server.on_session_end(ended.append)
    ws = open_v1(server.port)
    welcome = recv_json(ws)
    ws.close()
    time.sleep(1.6)  # the sweep runs every second
    assert ended == [welcome["session"]]
    with open_v1(server.port, resume_query(welcome, welcome["offset"])) as ws:
        again = recv_json(ws)
        assert again["recovered"] is False and again["session"] != welcome["session"]


def test_history_trimmed_means_not_recovered(v1_server):
    server = v1_server(history_size=5)
    ws = open_v1(server.port)
    welcome = recv_json(ws)
    ws.close()
    for i in range(10):
        server.multicast_text(str(i))
    with open_v1(server.port, resume_query(welcome, 0)) as ws:
        again = recv_json(ws)
        assert again["recovered"] is False and again["offset"] == 10


@pytest.mark.parametrize(
    "query",
    [
        "?session=AAAAAAAAAAAAAAAAAAAAAA&epoch={epoch}&offset=0",  # another id
        "?session={session}&epoch=forged&offset=0",
        "?session={session}&epoch={epoch}&offset=-1",
        "?session={session}&epoch={epoch}&offset=99999999999999999999999",
        "?session={session}&epoch={epoch}&offset=5",  # beyond the top
        "?session={session}'%22&epoch={epoch}&offset=0",
        "?session=&epoch=&offset=",
        "?session={session}&epoch={epoch}",
    ],
)
def test_forged_or_malformed_resume_is_a_fresh_session(v1_server, query):
    server = v1_server()
    with open_v1(server.port) as other:
        first = recv_json(other)
        with open_v1(server.port) as victim_probe:
            recv_json(victim_probe)
        with open_v1(
            server.port, query.format(session=first["session"], epoch=first["epoch"])
        ) as ws:
            welcome = recv_json(ws)
            assert welcome["recovered"] is False
            assert welcome["session"] != first["session"]
        server.multicast_text("still here")
        assert recv_json(other)["text"] == "still here"  # the real owner is untouched


def test_a_live_session_is_taken_over(v1_server):
    """The client comes back before the server saw its old connection go."""
    server = v1_server()
    closed: list[str] = []
    server.on_disconnect(lambda session: closed.append(session.id))
    old = open_v1(server.port)
    welcome = recv_json(old)
    old.send(json.dumps({"url": "/ws/rooms/join", "body": "r"}))
    assert recv_json(old)["text"] == "joined r"
    server.multicast_text("x", room="r")
    assert recv_json(old)["offset"] == 1
    with open_v1(server.port, resume_query(welcome, 0)) as new:
        again = recv_json(new)
        assert again["recovered"] is True and again["missed"] == 1
        assert recv_json(new)["text"] == "x"
        with pytest.raises(ConnectionClosed):
            old.recv(timeout=TIMEOUT)
        server.multicast_text("y", room="r")
        assert recv_json(new) == {"type": "pub", "offset": 2, "room": "r", "text": "y"}
        assert len(server.sessions) == 1
        assert closed == [welcome["session"]]
    old.close()


def test_without_recovery_the_subprotocol_is_not_selected(make_server):
    server = make_server(lambda s: s.add_websocket_content(RoomsController, "/ws"))
    with open_v1(server.port) as ws:
        assert ws.subprotocol is None
        server.multicast_text("plain")
        assert ws.recv(timeout=TIMEOUT) == "plain"


def test_session_ids_are_not_logged(v1_server, caplog):
    server = v1_server()
    with caplog.at_level("INFO", logger="simplew.access"):
        with open_v1(server.port) as ws:
            welcome = recv_json(ws)
        time.sleep(0.2)
    assert "WebSocket connect" in caplog.text
    assert welcome["session"] not in caplog.text


def test_recovery_metrics(v1_server):
    import urllib.request

    server = v1_server(metrics=True)
    ws = open_v1(server.port)
    welcome = recv_json(ws)
    server.multicast_text("one")
    recv_json(ws)
    reset(ws)
    time.sleep(0.3)
    with open_v1(server.port, resume_query(welcome, 0)) as again:
        assert recv_json(again)["recovered"] is True
    with open_v1(server.port, "?session=AAAAAAAAAAAAAAAAAAAAAA&epoch=x&offset=0") as fresh:
        assert recv_json(fresh)["recovered"] is False
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics") as response:
        text = response.read().decode()
    values = dict(
        line.split(" ")
        for line in text.splitlines()
        if line.startswith("simplew_s") or line.startswith("simplew_h")
    )
    assert values["simplew_stream_offset"] == "1"
    assert values["simplew_history_publications"] == "1"
    assert values["simplew_sessions_recovered_total"] == "1"
    assert values["simplew_sessions_reset_total"] == "1"


@pytest.mark.parametrize("use_aiofastnet", [False, True])
def test_fanout_survives_clients_dropped_while_it_writes(make_server, use_aiofastnet):
    """Clients reset while the loop is busy, then one callback multicasts a burst
    of big messages, so that each client's output is written from inside the
    fan-out loop (a turn over max_write_buffer) to sockets already reset. Every
    client that stays gets every message, on both transports. (The hub's loop
    also runs over a snapshot, so a client dropped synchronously by a write,
    which neither transport does today, could not make it skip another.)"""
    server = make_server(
        lambda s: s.add_websocket_content("/ws", on_message=lambda s, d: None),
        use_aiofastnet=use_aiofastnet,
        max_write_buffer=1024,
        slow_client_policy="skip",
    )
    url = f"ws://127.0.0.1:{server.port}/ws"
    clients = [
        connect(url, proxy=None, compression=None, max_size=None).__enter__() for _ in range(60)
    ]
    deadline = time.monotonic() + TIMEOUT
    while len(server.sessions) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    stay = clients[::3]
    big = [f"{i}:" + "x" * 600 for i in range(8)]
    blocked = threading.Event()

    def busy_then_burst() -> None:
        blocked.set()
        time.sleep(0.3)  # the resets happen now, unseen by the loop
        for text in big:
            server.multicast_text(text)

    server._loop.call_soon_threadsafe(busy_then_burst)
    blocked.wait(TIMEOUT)
    for ws in clients:
        if ws not in stay:
            reset(ws)
    for ws in stay:
        assert [ws.recv(timeout=TIMEOUT) for _ in big] == big
        ws.close()
