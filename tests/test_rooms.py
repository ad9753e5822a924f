"""Rooms: ``session.join/leave``, ``session.rooms``, ``multicast_*(..., room=)``.

The room index lives in the Hub (Cython): room name -> list of members with
O(1) swap removal, like the hub's main list; a room multicast runs the same
one-frame fan-out over the room's list.
"""

from __future__ import annotations

import random
import threading
from contextlib import ExitStack
from typing import Any

import pytest
from websockets.sync.client import connect

from helpers import wait_until
from simplew import Session, SimpleWServer
from simplew._fast.connection import Endpoint, WebSocketConnection
from simplew._fast.context import ServerContext
from simplew._fast.hub import Hub

TIMEOUT = 5.0


def on_message(session: Session, data: Any) -> None:
    """join/leave/rooms commands, answered to the sender."""
    command, _, room = data.partition(" ")
    if command == "join":
        session.join(room)
        session.send_text(f"joined {room}")
    elif command == "leave":
        session.leave(room)
        session.send_text(f"left {room}")
    elif command == "rooms":
        session.send_text(",".join(sorted(session.rooms)))
    elif command == "id":
        session.send_text(session.id)


@pytest.fixture
def server(make_server):
    return make_server(lambda s: s.add_websocket_content("/ws", on_message=on_message))


@pytest.fixture
def clients():
    with ExitStack() as stack:

        def open_client(server, **kwargs):
            kwargs.setdefault("compression", None)
            return stack.enter_context(
                connect(
                    f"ws://127.0.0.1:{server.port}/ws",
                    proxy=None,
                    open_timeout=TIMEOUT,
                    close_timeout=1,
                    **kwargs,
                )
            )

        yield open_client


def command(ws, text: str) -> str:
    ws.send(text)
    return ws.recv(timeout=TIMEOUT)


def nothing(ws, timeout: float = 0.15) -> None:
    try:
        message = ws.recv(timeout=timeout)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message {message!r}")


def test_room_multicast_reaches_only_members(server, clients):
    a, b, c = clients(server), clients(server), clients(server)
    assert command(a, "join red") == "joined red"
    assert command(b, "join red") == "joined red"
    assert command(b, "join blue") == "joined blue"
    assert command(b, "rooms") == "blue,red"
    assert command(c, "rooms") == ""
    assert server.rooms == {"red": 2, "blue": 1}
    assert {s.id for s in server.room_sessions("red")} == {
        s.id for s in server.sessions if s.rooms & {"red"}
    }

    server.multicast_text("to red", room="red")
    assert a.recv(timeout=TIMEOUT) == "to red"
    assert b.recv(timeout=TIMEOUT) == "to red"
    server.multicast_binary(b"\x00blue", room="blue")
    assert b.recv(timeout=TIMEOUT) == b"\x00blue"
    server.multicast_text("nobody", room="green")  # no member: nothing, no error
    server.multicast_text("all")
    for ws in (a, b, c):
        assert ws.recv(timeout=TIMEOUT) == "all"  # and nothing before it
    nothing(a)
    nothing(c)


def test_leave_and_disconnect(server, clients):
    a, b = clients(server), clients(server)
    command(a, "join red")
    command(b, "join red")
    assert command(a, "leave red") == "left red"
    assert command(a, "leave red") == "left red"  # leaving twice is harmless
    server.multicast_text("red only", room="red")
    assert b.recv(timeout=TIMEOUT) == "red only"
    nothing(a)

    command(a, "join red")
    session_b = server.find_session(command(b, "id"))
    assert session_b.rooms == {"red"}
    b.close()
    wait_until(lambda: server.rooms == {"red": 1})
    assert session_b.rooms == set()  # a gone session is in no room
    server.multicast_text("still", room="red")
    assert a.recv(timeout=TIMEOUT) == "still"
    a.close()
    wait_until(lambda: server.rooms == {})


def test_join_and_leave_from_another_thread(server, clients):
    a, b = clients(server), clients(server)
    first = server.find_session(command(a, "id"))
    second = server.find_session(command(b, "id"))
    first.join("x")  # not the loop thread: queued on it
    second.join("x")
    second.JoinRoom("y")
    wait_until(lambda: server.rooms == {"x": 2, "y": 1})
    assert first.rooms == {"x"} and second.Rooms == {"x", "y"}
    second.leave("x")
    wait_until(lambda: server.rooms == {"x": 1, "y": 1})
    server.MulticastText("x!", room="x")  # the SimpleW spelling takes room= too
    assert a.recv(timeout=TIMEOUT) == "x!"
    nothing(b)
    second.LeaveRoom("y")
    wait_until(lambda: server.rooms == {"x": 1})


def test_room_multicasts_keep_their_order(server, clients):
    """Many room and global multicasts from another thread arrive in order (one queue
    per client, flushed once per loop turn)."""
    a, b = clients(server), clients(server)
    command(a, "join r")
    for i in range(200):
        server.multicast_text(f"r{i}", room="r")
        if i % 50 == 0:
            server.multicast_text(f"all{i}")
    expected_a = []
    for i in range(200):
        expected_a.append(f"r{i}")
        if i % 50 == 0:
            expected_a.append(f"all{i}")
    assert [a.recv(timeout=TIMEOUT) for _ in expected_a] == expected_a
    assert [b.recv(timeout=TIMEOUT) for _ in range(4)] == ["all0", "all50", "all100", "all150"]
    nothing(b)


def test_room_multicast_is_compressed_once_per_window(make_server, clients):
    server = make_server(
        lambda s: s.add_websocket_content("/ws", on_message=on_message), compression=True
    )
    members = [clients(server, compression="deflate") for _ in range(3)]
    plain = clients(server)  # no deflate: the shared frame
    outsider = clients(server, compression="deflate")
    for ws in members + [plain]:
        command(ws, "join room")
    before = server.hub.compressions
    text = "compress me " * 50
    server.multicast_text(text, room="room")
    for ws in members + [plain]:
        assert ws.recv(timeout=TIMEOUT) == text
    assert server.hub.compressions - before == 1  # one window size in use
    nothing(outsider)


def test_room_argument_types(server, clients):
    a = clients(server)
    wait_until(lambda: len(server.sessions) == 1)
    with pytest.raises(TypeError):
        server.multicast_text("x", room=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        server.sessions[0].join(None)  # type: ignore[arg-type]
    session = server.sessions[0]
    with pytest.raises(ValueError, match="empty"):
        session.join("")
    with pytest.raises(ValueError, match="255 bytes"):
        session.join("é" * 128)  # 256 bytes of UTF-8
    command(a, "join " + "é" * 127 + "x")  # 255 bytes: the longest name
    wait_until(lambda: server.rooms.get("é" * 127 + "x") == 1)
    server.multicast_text("longest", room="é" * 127 + "x")
    assert a.recv(timeout=TIMEOUT) == "longest"


def test_rooms_per_session_are_capped():
    """A session joins at most max_rooms_per_session rooms (128 by default); the
    next joins are refused, counted, and cost nothing."""
    server = SimpleWServer("127.0.0.1", 0, max_rooms_per_session=3, metrics=True)
    joined: list[bool] = []

    def on_message(session: Any, data: Any) -> None:
        for i in range(5):
            joined.append(session.join(f"r{i}"))

    server.add_websocket_content("/ws", on_message=on_message)
    server.start()
    try:
        with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            ws.send("go")
            wait_until(lambda: len(joined) == 5)
            assert joined == [True, True, True, False, False]
            assert server.sessions[0].rooms == {"r0", "r1", "r2"}
            assert server.hub.rooms_refused == 2
    finally:
        server.stop()


def test_room_index_against_a_model():
    """Random joins, leaves and removals keep every room's list exact (swap removal)."""
    hub = Hub()
    endpoint = Endpoint("/t", 1024, ServerContext(hub=hub))
    conns = [WebSocketConnection(endpoint, None) for _ in range(60)]
    for conn in conns:
        hub.add(conn)
    model: dict[str, set[int]] = {}
    rng = random.Random(7)
    rooms = [f"room{i}" for i in range(7)]
    alive = set(range(len(conns)))
    for step in range(5000):
        i = rng.randrange(len(conns))
        room = rng.choice(rooms)
        op = rng.random()
        if op < 0.55:
            joined = hub.join(conns[i], room)
            assert joined == (i in alive and i not in model.get(room, set()))
            if i in alive:
                model.setdefault(room, set()).add(i)
        elif op < 0.97:
            left = hub.leave(conns[i], room)
            assert left == (i in model.get(room, set()))
            model.get(room, set()).discard(i)
        elif i in alive:
            hub.remove(conns[i])
            alive.discard(i)
            for members in model.values():
                members.discard(i)
            assert conns[i].rooms == set()
        if step % 97 == 0 or step == 4999:
            index = {id(c): n for n, c in enumerate(conns)}
            for name in rooms:
                members = hub.room_sessions(name)
                assert len(members) == len(set(map(id, members)))
                assert {index[id(c)] for c in members} == model.get(name, set())
                assert hub.room_size(name) == len(model.get(name, set()))
            assert hub.rooms() == {k: len(v) for k, v in model.items() if v}
            for n in alive:
                assert conns[n].rooms == {k for k, v in model.items() if n in v}
    for conn in conns:
        hub.remove(conn)
    assert hub.rooms() == {} and len(hub) == 0


def test_session_that_is_gone_joins_nothing():
    hub = Hub()
    endpoint = Endpoint("/t", 1024, ServerContext(hub=hub))
    conn = WebSocketConnection(endpoint, None)
    assert hub.join(conn, "r") is False  # never added to the hub
    hub.add(conn)
    assert hub.join(conn, "r") is True
    assert hub.join(conn, "r") is False
    hub.remove(conn)
    assert hub.join(conn, "r") is False and hub.rooms() == {}


def test_room_multicast_from_many_threads(server, clients):
    a = clients(server)
    command(a, "join t")
    threads = [
        threading.Thread(
            target=lambda n=n: [server.multicast_text(f"{n}:{i}", room="t") for i in range(50)]
        )
        for n in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [a.recv(timeout=TIMEOUT) for _ in range(200)]
    for n in range(4):  # each thread's order is kept
        assert [m for m in got if m.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(50)]
