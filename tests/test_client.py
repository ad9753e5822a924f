"""The Python ``simplew.v2`` client (``simplew.client.Client``) against a real
server with recovery on: welcome, direct messages, pubs in order, a connection
cut with a TCP RST during a 500 msg/s multicast and recovered without a loss or
a duplicate, rooms kept across the reconnection with the pubs missed in each, a
session in 1,000 rooms resumed, join and leave events, reset after the recovery
window, and ``/simplew.js`` served to browsers. Against a hostile server
(tests/hostile.py): every malformed field, nested JSON and BINARY frame is a
protocol error (connect() raises ProtocolError before the welcome, a close 1002
and a reconnection after it), a recovered welcome must continue the positions
sent, pubs of streams not held are dropped, the resume message holds thousands
of rooms, and the backoff restarts only after a connection lasted a second past
its welcome.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import jwt as pyjwt
import pytest

from helpers import run
from hostile import (
    EPOCH,
    OMIT,
    SESSION,
    HostileServer,
    entry,
    join,
    leave,
    nested,
    pub,
    recovered,
    reset,
    welcome,
)
from simplew import Controller, SimpleWServer, WebSocketMessage, recovery, require_jwt, route
from simplew import client as client_module
from simplew.client import (
    Client,
    Event,
    Join,
    Leave,
    NotConnected,
    ProtocolError,
    Pub,
    RoomReset,
    StreamPosition,
    backoff_delay,
)

TIMEOUT = 10.0
RATE = 500  # multicasts per second while a connection is cut


class LiveController(Controller):
    """The routed handlers the client talks to."""

    @route("WEBSOCKET", "/echo")
    def echo(self, message: WebSocketMessage) -> Any:
        return {"echo": message.body}

    @route("WEBSOCKET", "/join")
    def join(self, message: WebSocketMessage) -> str:
        rooms = message.body if isinstance(message.body, list) else [message.body]
        for room in rooms:
            self.session.join(room)
        return f"joined {message.body}" if len(rooms) == 1 else f"joined {len(rooms)}"

    @route("WEBSOCKET", "/leave")
    def leave(self, message: WebSocketMessage) -> str:
        self.session.leave(message.body)
        return f"left {message.body}"

    @require_jwt
    @route("WEBSOCKET", "/me")
    def me(self, message: WebSocketMessage) -> str:
        return self.jwt["sub"]

    @route("WEBSOCKET", "/token")
    def token(self, message: WebSocketMessage) -> str:
        return f"{self.jwt['sub']} {self.jwt['n']}"


SECRET = "a secret of the client tests, long enough for HS256"


def recovery_server(make_server, **options):
    def configure(server) -> None:
        server.add_websocket_content(LiveController, "/ws")
        server.set_token(SECRET, algorithms=["HS256"])

    options.setdefault("recovery", True)
    return make_server(configure, **options)


def url(server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


async def next_event(events: AsyncIterator[Event], kind: str) -> Any:
    """The next event of type ``kind`` (others are skipped)."""

    async def find() -> Any:
        async for event in events:
            if event.type == kind:
                return event
        raise AssertionError(f"events ended before a {kind!r} event")

    return await asyncio.wait_for(find(), TIMEOUT)


async def until(predicate: Any) -> None:
    """Poll ``predicate`` (server state, read from another thread) until it holds."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def connected(server, **options: Any) -> tuple[Client, AsyncIterator[Event], Any]:
    """A client of ``server``'s /ws with its events() iterator, after its welcome."""
    client = Client(url(server), **options)
    events = client.events(max_pending=100_000)
    return client, events, await client.connect()


def cut_with_rst(client: Client) -> None:
    """Drop the client's TCP connection as a dead network would: RST, no CLOSE."""
    transport = client.transport
    assert transport is not None
    sock = transport.underlying_transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.disconnect(graceful=False)


async def cut_and_recover(client: Client, events: AsyncIterator[Event]) -> Any:
    """Cut with RST, check the client's state while it is away, return the
    ``recovered`` welcome of its reconnection (same session)."""
    session = client.session
    cut_with_rst(client)
    assert (await next_event(events, "close")).code == 1006
    assert not client.connected
    with pytest.raises(NotConnected):
        client.send("/ws/echo", "while disconnected")
    recovered = await next_event(events, "recovered")
    assert recovered.session == session == client.session and recovered.recovered
    return recovered


class Ticker:
    """Multicasts ``tick N`` (to every client, or round-robin over ``rooms``) at
    about ``RATE`` per second from its own thread, until ``stop()``."""

    def __init__(self, server, rooms: list[str | None] | None = None) -> None:
        self.server = server
        self.rooms = rooms or [None]
        self.sent = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(1 / RATE):
            room = self.rooms[self.sent % len(self.rooms)]
            self.server.multicast_text(f"tick {self.sent} {room}", room=room)
            self.sent += 1

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


# -- tests --------------------------------------------------------------------------


def test_welcome_direct_messages_and_pubs_in_order(make_server):
    server = recovery_server(make_server)

    async def main() -> None:
        client = Client(url(server))
        events = client.events()
        assert not client.connected
        with pytest.raises(NotConnected):
            client.send("/ws/echo", 1)
        welcome = await client.connect()
        assert welcome.type == "open" and welcome.recovered is False and welcome.missed == 0
        assert len(welcome.session) >= 22 and isinstance(welcome.epoch, str)
        assert (client.session, client.epoch, client.offset) == (
            welcome.session,
            welcome.epoch,
            welcome.offset,
        )
        assert welcome.streams == (StreamPosition(None, welcome.epoch, welcome.offset, False, 0),)
        assert client.positions == {None: (welcome.epoch, welcome.offset)}
        assert client.connected
        assert (await next_event(events, "open")) == welcome

        client.send("/ws/echo", {"a": [1, "é"]})
        assert json.loads((await next_event(events, "msg")).data) == {"echo": {"a": [1, "é"]}}
        client.send("/ws/nowhere", None)
        error = json.loads((await next_event(events, "msg")).data)
        assert (error["error"], error["url"]) == ("unknown_url", "/ws/nowhere")

        for n in range(20):
            server.multicast_text(f"text {n}")
        server.multicast_binary(b"\x00\xffbinary")
        pubs = [await next_event(events, "pub") for _ in range(21)]
        assert [p.data for p in pubs] == [f"text {n}" for n in range(20)] + [b"\x00\xffbinary"]
        offsets = [p.offset for p in pubs]
        assert offsets == sorted(set(offsets)) and offsets[0] > welcome.offset
        assert all(p.room is None and p.epoch == welcome.epoch for p in pubs)
        assert client.offset == offsets[-1]

        await client.close()
        closed = await next_event(events, "close")
        assert closed.code == 1000 and closed.reconnecting is False
        assert [event async for event in events] == []  # the iterator ends
        assert not client.connected
        with pytest.raises(NotConnected):
            client.send("/ws/echo", 1)

    run(main())


def test_rst_during_multicast_every_offset_exactly_once_in_order(make_server):
    server = recovery_server(make_server)

    async def main() -> None:
        # no jitter: the reconnection comes 1 s after the cut, ~500 multicasts later
        client, events, welcome = await connected(server, backoff_min=1.0, jitter=False)
        ticker = Ticker(server)
        try:
            seen = [(await next_event(events, "pub")).offset for _ in range(100)]
            recovered = await cut_and_recover(client, events)
            assert recovered.missed >= RATE // 4  # the second without a connection
            cut_at = recovered.offset
            while True:
                pub = await next_event(events, "pub")
                seen.append(pub.offset)
                if pub.offset > cut_at + recovered.missed + 100:
                    break  # recovered ones, then live ones
        finally:
            ticker.stop()
        await client.close()
        assert seen == list(range(welcome.offset + 1, seen[-1] + 1))
        assert client.reconnects == 1 and client.resets == 0

    run(main())


def test_rooms_joined_by_a_handler_are_restored_after_reconnect(make_server):
    server = recovery_server(make_server)

    async def main() -> None:
        client, events, _ = await connected(server, backoff_min=0.3, jitter=False)
        client.send("/ws/join", "red")
        assert (await next_event(events, "msg")).data == "joined red"
        ticker = Ticker(server, rooms=["red", "blue", None])
        try:
            before = [await next_event(events, "pub") for _ in range(30)]
            recovered = await cut_and_recover(client, events)
            missed = [await next_event(events, "pub") for _ in range(recovered.missed)]
            live = [await next_event(events, "pub") for _ in range(40)]
        finally:
            ticker.stop()
        await client.close()
        assert {(s.room, s.recovered) for s in recovered.streams} == {(None, True), ("red", True)}
        for pubs in (before, missed, live):  # never "blue"
            assert {p.room for p in pubs} == {"red", None}
        pubs = before + missed + live
        assert all(p.data.endswith(f" {p.room}") for p in pubs)
        for room in ("red", None):  # every offset of each stream once, in order
            offsets = [p.offset for p in pubs if p.room == room]
            assert offsets == list(range(offsets[0], offsets[-1] + 1))

    run(main())


def test_a_resume_gives_back_the_pubs_missed_in_each_room(make_server):
    """Pubs of three rooms and of everyone while the client is away: the welcome
    continues each stream from the position sent, with its own ``missed``, and the
    missed pubs follow stream by stream (the broadcast one, then the rooms by name)."""
    server = recovery_server(make_server)

    async def main() -> None:
        client, events, _ = await connected(server, backoff_min=1.0, jitter=False)
        client.send("/ws/join", ["red", "blue", "green"])
        assert (await next_event(events, "msg")).data == "joined 3"
        assert set(client.positions) == {None, "red", "blue", "green"}
        server.multicast_text("red before", room="red")
        assert (await next_event(events, "pub")).data == "red before"
        held = client.positions
        cut_with_rst(client)
        assert (await next_event(events, "close")).code == 1006
        sent: dict[str | None, int] = {"red": 3, "blue": 2, "green": 0, None: 4}
        for room, count in sent.items():
            for n in range(count):
                server.multicast_text(f"{room} away {n}", room=room)
        recovered = await next_event(events, "recovered")
        assert recovered.missed == 9
        assert recovered.streams == tuple(
            StreamPosition(room, *held[room], True, sent[room])
            for room in (None, "blue", "green", "red")
        )
        missed = [await next_event(events, "pub") for _ in range(9)]
        assert [p.data for p in missed] == [
            *(f"None away {n}" for n in range(4)),
            *(f"blue away {n}" for n in range(2)),
            *(f"red away {n}" for n in range(3)),
        ]
        assert client.positions == {
            room: (epoch, offset + sent[room]) for room, (epoch, offset) in held.items()
        }
        assert client.duplicates == 0 and client.room_resets == 0 and client.resets == 0
        await client.close()

    run(main())


def test_a_session_in_1000_rooms_resumes(make_server):
    """The resume message (not the URL) carries 1,001 positions; every stream is
    recovered and the pubs missed in some of the rooms follow, in room order."""
    server = recovery_server(make_server, max_rooms_per_session=2000)
    rooms = [f"room {n}" for n in range(1000)]
    away = rooms[::100]

    async def main() -> None:
        client, events, _ = await connected(server, backoff_min=0.5, jitter=False)
        client.send("/ws/join", rooms)
        assert (await next_event(events, "msg")).data == "joined 1000"
        assert len(client.positions) == 1001
        held = client.positions
        cut_with_rst(client)
        await next_event(events, "close")
        for room in away:
            server.multicast_text(f"away {room}", room=room)
        recovered = await next_event(events, "recovered")
        assert len(recovered.streams) == 1001 and recovered.missed == len(away)
        assert all(s.recovered and (s.epoch, s.offset) == held[s.room] for s in recovered.streams)
        missed = [await next_event(events, "pub") for _ in away]
        assert [p.room for p in missed] == sorted(away, key=str.encode)
        assert [p.data for p in missed] == [f"away {p.room}" for p in missed]
        assert len(client.positions) == 1001 and client.room_resets == 0
        await client.close()

    run(main())


def test_join_and_leave_events_from_a_controller(make_server):
    """``session.join`` in a handler is a join event (the room's position, before
    the reply), its pubs follow; ``session.leave`` is a leave event and the room's
    pubs stop."""
    server = recovery_server(make_server)
    joins: list[Join] = []
    leaves: list[Leave] = []

    async def main() -> None:
        client, events, _ = await connected(server, on_join=joins.append, on_leave=leaves.append)
        client.send("/ws/join", "red")
        join = await next_event(events, "join")
        assert join.room == "red" and client.positions["red"] == (join.epoch, join.offset)
        assert (await next_event(events, "msg")).data == "joined red"
        server.multicast_text("to red", room="red")
        assert (await next_event(events, "pub")) == Pub(
            "red", join.offset + 1, "to red", join.epoch
        )
        client.send("/ws/leave", "red")
        assert (await next_event(events, "leave")) == Leave("red")
        assert (await next_event(events, "msg")).data == "left red"
        assert "red" not in client.positions
        server.multicast_text("red again", room="red")
        server.multicast_text("everyone")
        pub = await next_event(events, "pub")
        assert (pub.room, pub.data) == (None, "everyone")
        assert joins == [join] and leaves == [Leave("red")] and client.duplicates == 0
        await client.close()

    run(main())


def test_reset_when_the_window_has_expired(make_server):
    server = recovery_server(make_server, recovery_window=0.2)

    async def main() -> None:
        client, events, welcome = await connected(server, backoff_min=1.0, jitter=False)
        client.send("/ws/join", "red")
        assert (await next_event(events, "msg")).data == "joined red"
        server.multicast_text("before")
        before = await next_event(events, "pub")
        cut_with_rst(client)
        await next_event(events, "close")
        ticker = Ticker(server, rooms=[None, "red"])
        try:
            opened = await next_event(events, "open")
            reset = await next_event(events, "reset")
            assert opened.recovered is False and reset.session != welcome.session
            assert client.session == reset.session and client.resets == 1
            after = await next_event(events, "pub")
        finally:
            ticker.stop()
        await client.close()
        assert after.offset > before.offset
        assert after.room is None  # a new session: no room

    run(main())


def test_a_slow_consumer_is_bounded_and_loses_nothing(make_server):
    """events() stops reading at max_pending; the server then drops the client
    as slow (max_write_buffer), and the reconnection recovers the rest."""
    server = recovery_server(make_server, max_write_buffer=256 << 10)
    count, size, max_pending = 10000, 1000, 16
    peak = [0]

    async def main() -> None:
        client = Client(
            url(server),
            backoff_min=0.05,
            jitter=False,
            on_pub=lambda pub: peak.__setitem__(0, max(peak[0], client.pending)),
        )
        events = client.events(max_pending=max_pending)
        welcome = await client.connect()
        endpoint = server.endpoint_for("/ws")
        for n in range(count):
            server.multicast_text(f"{n:<{size}}")
        offsets, closes = [], 0
        while len(offsets) < count:
            event = await asyncio.wait_for(events.__anext__(), TIMEOUT)
            if event.type == "pub":
                assert int(event.data) == len(offsets)
                offsets.append(event.offset)
            closes += event.type == "close"
            if len(offsets) == 1:  # stop consuming until the server
                await until(lambda: endpoint.dropped_slow_clients)  # drops this slow client
        await client.close()
        assert offsets == list(range(welcome.offset + 1, welcome.offset + count + 1))
        assert closes >= 1 and client.reconnects >= 1 and client.resets == 0

    run(main())
    # the frames of the socket read that hit the limit are still delivered: at
    # most the kernel's TCP receive buffer (its autotuning maximum)
    assert max_pending <= peak[0] <= max_pending + tcp_receive_buffer_max() // size


def tcp_receive_buffer_max() -> int:
    try:
        with open("/proc/sys/net/ipv4/tcp_rmem") as f:
            return int(f.read().split()[2])
    except OSError:
        return 6 << 20  # Linux's default


def test_retries_while_the_server_is_down_then_resets_on_a_new_stream(make_server):
    """A restarted server without Redis has a new stream (epoch): the client,
    after failed attempts (connection refused), gets a reset."""
    first = recovery_server(make_server)
    port = first.port

    async def main() -> None:
        client, events, welcome = await connected(first, backoff_min=0.05, backoff_max=0.2)
        await asyncio.get_running_loop().run_in_executor(None, first.stop)
        closed = await next_event(events, "close")
        assert (closed.code, closed.reconnecting) == (1001, True)
        await asyncio.sleep(0.5)  # a few refused attempts
        second = SimpleWServer("127.0.0.1", port, recovery=True)
        second.add_websocket_content(LiveController, "/ws")
        second.start()
        try:
            reset = await next_event(events, "reset")
            assert reset.epoch != welcome.epoch and reset.session != welcome.session
            assert client.connected and client.resets == 1
            second.multicast_text("on the new stream")
            assert (await next_event(events, "pub")).data == "on the new stream"
            await client.close()
        finally:
            second.stop()

    run(main())


def test_an_expiring_token_is_refreshed_by_the_token_function(make_server):
    """The server asks for a new token at exp; the client calls its (async) token
    function and answers: the connection stays open and keeps its pubs."""
    server = recovery_server(make_server, token_grace=1.0)
    calls = []

    async def fresh_token() -> str:
        calls.append(time.monotonic())
        return pyjwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 2}, SECRET, algorithm="HS256"
        )

    async def main() -> None:
        client, events, _ = await connected(server, token=fresh_token)
        deadline = time.monotonic() + 10
        while server.credentials.refreshed < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert server.credentials.refreshed >= 2 and len(calls) >= 3
        server.multicast_text("after two refreshes")
        assert (await next_event(events, "pub")).data == "after two refreshes"
        assert client.connected and server.credentials.expired == 0
        await client.close()

    run(main())


def test_a_fixed_token_is_not_refreshed_and_the_server_closes_4001(make_server):
    server = recovery_server(make_server, token_grace=0.5)
    expiring = pyjwt.encode(
        {"sub": "alice", "exp": int(time.time()) + 1}, SECRET, algorithm="HS256"
    )

    async def main() -> None:
        client, events, _ = await connected(server, token=expiring, backoff_min=5)
        closed = await next_event(events, "close")
        assert closed.code == 4001 and closed.reconnecting
        await client.close()

    run(main())


def test_token_is_sent_on_every_upgrade(make_server):
    server = recovery_server(make_server)
    # two tokens of one user (a session is resumed only by its user: tokens.py)
    tokens = iter(
        [
            pyjwt.encode({"sub": "alice", "n": 1}, SECRET, algorithm="HS256"),
            pyjwt.encode({"sub": "alice", "n": 2}, SECRET, algorithm="HS256"),
        ]
    )

    async def main() -> None:
        client, events, _ = await connected(
            server, token=lambda: next(tokens), backoff_min=0.05, jitter=False
        )
        client.send("/ws/token")
        assert (await next_event(events, "msg")).data == "alice 1"
        await cut_and_recover(client, events)
        client.send("/ws/token")  # the function gave a fresh token
        assert (await next_event(events, "msg")).data == "alice 2"
        await client.close()

        anonymous, events, _ = await connected(server)
        anonymous.send("/ws/me")
        assert json.loads((await next_event(events, "msg")).data)["error"] == "unauthorized"
        await anonymous.close()

    run(main())


def test_backoff_is_full_jitter_doubling_to_the_cap():
    for attempt, cap in enumerate([0.5, 1, 2, 4, 8, 16, 20, 20]):
        delays = [backoff_delay(attempt, 0.5, 20.0) for _ in range(2000)]
        assert all(0 <= d <= cap for d in delays)
        assert 0.4 * cap < sum(delays) / len(delays) < 0.6 * cap  # uniform: mean cap / 2
        assert backoff_delay(attempt, 0.5, 20.0, jitter=False) == cap
    assert backoff_delay(10_000, 0.5, 20.0, jitter=False) == 20.0


def test_connect_refuses_a_server_without_recovery(make_server):
    server = recovery_server(make_server, recovery=False)  # plain WebSocket frames

    async def main() -> None:
        client = Client(url(server))
        with pytest.raises(ProtocolError, match="recovery=True"):
            await client.connect()
        assert not client.connected

    run(main())


def test_simplew_js_is_served_by_servers_with_a_websocket_endpoint(make_server):
    server = recovery_server(make_server)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/simplew.js", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/javascript")
        body = r.read()
    assert body == resources.files("simplew").joinpath("js/simplew.js").read_bytes()
    assert b"export class SimplewClient" in body

    plain = make_server()  # no WebSocket endpoint
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"http://127.0.0.1:{plain.port}/simplew.js", timeout=5)
    assert error.value.code == 404
    error.value.close()


# -- a hostile server (tests/hostile.py): every field of simplew.v2 is checked ----------


def run_checked(coro: Any) -> Any:
    """run(coro), failing if anything reached the loop's exception handler (a task's
    exception, "Future exception was never retrieved")."""
    errors: list[dict[str, Any]] = []

    async def main() -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda _, c: errors.append(c))
        try:
            return await coro
        finally:
            gc.collect()  # a future never retrieved reports when it is collected
            await asyncio.sleep(0.05)

    result = run(main())
    assert errors == []
    return result


LONG_ROOM = "é" * 128  # 256 bytes of UTF-8
BAD_FIRST_MESSAGES = {
    "nested JSON": nested(),
    "nested JSON in an unknown field": welcome()[:-1] + ',"deep":' + nested() + "}",
    "not JSON": "{",
    "not an object": "[1]",
    "no type": json.dumps({"session": SESSION}),
    "a pub first": pub(),
    "a join first": join(),
    "a msg first": json.dumps({"type": "msg", "text": "hi"}),
    "an unknown type first": json.dumps({"type": "hello"}),
    "a binary frame": b"\x00",
    "a simplew.v1 welcome": welcome(streams=OMIT, epoch=EPOCH, offset=5),
    "session of 300 KB": welcome(session="s" * 300_000),
    "session of 15 characters": welcome(session="s" * 15),
    "session of 65 characters": welcome(session="s" * 65),
    "session with a dot": welcome(session="s" * 20 + "."),
    "session null": welcome(session=None),
    "no session": welcome(session=OMIT),
    "recovered a string": welcome(recovered="yes"),
    "recovered 1": welcome(recovered=1),
    "no recovered": welcome(recovered=OMIT),
    "missed true": welcome(missed=True),
    "missed -1": welcome(missed=-1),
    "missed 10**18": welcome(missed=10**18),
    "missed 1.0": welcome(missed=1.0),
    "no missed": welcome(missed=OMIT),
    "missed without recovery": welcome(missed=3),
    "recovered without asking": recovered(),
    "recovered entry without asking": welcome(
        recovered=True, streams=[entry(recovered=True, missed=0)]
    ),
    "left in a fresh session": welcome(left=["red"]),
    "no streams": welcome(streams=OMIT),
    "streams null": welcome(streams=None),
    "streams an object": welcome(streams={"null": entry()}),
    "streams empty": welcome(streams=[]),
    "first stream a room": welcome(streams=[entry("red")]),
    "first stream a room, then null": welcome(streams=[entry("red"), entry()]),
    "broadcast stream twice": welcome(streams=[entry(), entry()]),
    "a room twice": welcome(streams=[entry(), entry("red"), entry("red")]),
    "entry an object": welcome(streams=[{"room": None, "epoch": EPOCH, "offset": 5}]),
    "entry of 4 fields": welcome(streams=[entry()[:4]]),
    "entry of 6 fields": welcome(streams=[[*entry(), 0]]),
    "entry room 5": welcome(streams=[entry(), entry(5)]),
    "entry room empty": welcome(streams=[entry(), entry("")]),
    "entry room of 256 bytes": welcome(streams=[entry(), entry(LONG_ROOM)]),
    "entry room with a lone surrogate": welcome(streams=[entry(), entry("\ud800")]),
    "entry epoch empty": welcome(streams=[entry(epoch="")]),
    "entry epoch of 65 characters": welcome(streams=[entry(epoch="e" * 65)]),
    "entry epoch with a space": welcome(streams=[entry(epoch="e e")]),
    "entry epoch null": welcome(streams=[entry(epoch=None)]),
    "entry offset true": welcome(streams=[entry(offset=True)]),
    "entry offset 10**4000": welcome(streams=[entry(offset=10**4000)]),
    "entry offset 10**18": welcome(streams=[entry(offset=10**18)]),
    "entry offset -1": welcome(streams=[entry(offset=-1)]),
    "entry offset 1.5": welcome(streams=[entry(offset=1.5)]),
    "entry offset a string": welcome(streams=[entry(offset="5")]),
    "entry recovered 0": welcome(streams=[entry(recovered=0)]),
    "entry recovered null": welcome(streams=[entry(recovered=None)]),
    "entry missed true": welcome(streams=[entry(missed=True)]),
    "entry missed -1": welcome(streams=[entry(missed=-1)]),
    "entry missed 10**18": welcome(missed=10**18, streams=[entry(missed=10**18)]),
    "entry missed without recovery": welcome(missed=2, streams=[entry(missed=2)]),
}


@pytest.mark.parametrize("message", BAD_FIRST_MESSAGES.values(), ids=BAD_FIRST_MESSAGES.keys())
def test_connect_raises_protocol_error_on_a_bad_first_message(message):
    """Before the welcome, a violation is connect()'s ProtocolError and a CLOSE 1002."""
    with HostileServer(lambda index, path: ([message], None)) as server:

        async def main() -> None:
            client = Client(server.url, open_timeout=5)
            with pytest.raises(ProtocolError):
                await client.connect()
            assert not client.connected
            assert (client.session, client.epoch, client.offset) == (None, None, None)
            assert client.positions == {}

        run_checked(main())
        (connection,) = server.wait_connections(1)
    assert connection.code == 1002
    assert connection.path == "/" and connection.resume is None


BAD_MESSAGES = {
    "nested JSON": nested(),
    "not JSON": '{"type":"pub"',
    "not an object": '"pub"',
    "no type": json.dumps({"offset": 8}),
    "type a number": json.dumps({"type": 1}),
    "a binary frame": b"\x00\x01",
    "a second welcome": welcome(),
    "pub offset true": pub(offset=True),
    "pub offset 10**4000": pub(offset=10**4000),
    "pub offset 10**18": pub(offset=10**18),
    "pub offset 0": pub(offset=0),
    "pub offset 7.0": pub(offset=7.0),
    "pub without offset": pub(offset=OMIT),
    "pub without epoch": pub(epoch=OMIT),
    "pub epoch null": pub(epoch=None),
    "pub epoch empty": pub(epoch=""),
    "pub epoch of 65 characters": pub(epoch="e" * 65),
    "pub epoch with a slash": pub(epoch="a/b"),
    "pub room 5": pub(room=5),
    "pub room empty": pub(room=""),
    "pub room of 256 bytes": pub(room=LONG_ROOM),
    "pub room with a lone surrogate": pub(room="\udfff"),
    "pub room a list": pub(room=["red"]),
    "pub without room": pub(room=OMIT),
    "pub text 5": pub(text=5),
    "pub neither text nor binary": pub(text=OMIT),
    "pub text and binary": pub(binary="AAE="),
    "pub binary unpadded": pub(text=OMIT, binary="AAE"),
    "pub binary not base64": pub(text=OMIT, binary="AA*="),
    "pub binary url-safe": pub(text=OMIT, binary="-_8="),
    "pub binary not ASCII": pub(text=OMIT, binary="éééé"),
    "pub text with a lone surrogate": pub(text="\ud800"),
    "join room null": join(room=None),
    "join without room": join(room=OMIT),
    "join room empty": join(room=""),
    "join room of 256 bytes": join(room=LONG_ROOM),
    "join room 5": join(room=5),
    "join without epoch": join(epoch=OMIT),
    "join epoch with a space": join(epoch="a b"),
    "join offset -1": join(offset=-1),
    "join offset true": join(offset=True),
    "join offset 10**18": join(offset=10**18),
    "join without offset": join(offset=OMIT),
    "leave room null": leave(room=None),
    "leave without room": leave(room=OMIT),
    "leave room empty": leave(room=""),
    "leave room 5": leave(room=5),
    "reset room 5": reset(room=5),
    "reset room empty": reset(room=""),
    "reset without room": reset(room=OMIT),
    "reset without epoch": reset(epoch=OMIT),
    "reset epoch empty": reset(epoch=""),
    "reset offset -1": reset(offset=-1),
    "reset offset false": reset(offset=False),
    "reset without offset": reset(offset=OMIT),
    "msg text 5": json.dumps({"type": "msg", "text": 5}),
    "msg without data": json.dumps({"type": "msg"}),
    "msg binary of one character": json.dumps({"type": "msg", "binary": "A"}),
}


@pytest.mark.parametrize("message", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_a_violation_after_the_welcome_closes_1002_and_reconnects(message):
    """After the welcome, a violation closes the connection with 1002 (the Closed
    event says why), changes nothing of the client's state, and the client
    reconnects and resumes from the last valid pub: ``resume=1`` in the URL, the
    session and positions in its first message."""

    def script(index: int, path: str) -> tuple[list[str | bytes], float | None]:
        if index == 0:
            return [welcome(), pub(offset=6, text="ok"), message], None
        return [recovered()], None

    with HostileServer(script) as server:

        async def main() -> list[Event]:
            client = Client(server.url, backoff_min=0.01, jitter=False)
            events = client.events()
            await client.connect()
            await until(lambda: client.resets + client.reconnects > 0 and client.connected)
            assert (client.session, client.epoch, client.offset) == (SESSION, EPOCH, 6)
            assert client.positions == {None: (EPOCH, 6)}
            assert client.duplicates == 0
            await client.close()
            return [event async for event in events]

        events = run_checked(main())
        first, second = server.wait_connections(2)
    assert [event.type for event in events] == [
        "open",
        "pub",
        "close",
        "open",
        "recovered",
        "close",
    ]
    assert events[1] == Pub(None, 6, "ok", EPOCH)
    closed = events[2]
    assert (closed.code, closed.reconnecting) == (1002, True)
    assert closed.reason.startswith("protocol error: ")
    assert first.code == 1002
    assert second.path == "/?resume=1"  # the session id is never in the URL
    assert second.resume == {"type": "resume", "session": SESSION, "streams": [[None, EPOCH, 6]]}
    assert second.code == 1000


def test_the_client_holds_the_server_to_its_own_limits():
    """The session and epoch forms the client accepts are the ones the server
    accepts back in the resume message; offsets have at most 18 digits there."""
    assert client_module.SESSION_ID.pattern == recovery._SESSION_ID.pattern
    assert client_module.EPOCH.pattern == recovery._EPOCH.pattern
    assert client_module.OFFSET_LIMIT == 10**18
    assert client_module.MAX_ROOM_BYTES == 255


def test_a_recovered_welcome_must_resume_what_was_asked():
    """A welcome that says recovered for another session, or a recovered stream at
    another position than the one the client sent (or one it did not send), a
    ``missed`` that is not the streams' sum, or a malformed ``left``, is a
    violation: the client closes and tries again, sending the same positions."""
    red = entry("red", offset=3, recovered=True)
    wrong = [
        recovered(session="another_session_123"),
        recovered(entry(offset=6, recovered=True, epoch="another"), red),
        recovered(entry(offset=7, recovered=True), red),
        recovered(entry(offset=6, recovered=True), entry("red", offset=2, recovered=True)),
        recovered(entry(offset=6, recovered=True), red, entry("blue", offset=1, recovered=True)),
        recovered(entry(offset=6, recovered=True, missed=1), red, missed=2),
        recovered(entry(offset=6, recovered=True, missed=1), red, missed=0),
        recovered(entry(offset=6, recovered=True), entry("red", offset=9, missed=1)),
        recovered(entry(offset=6, recovered=True), red, left="blue"),
        recovered(entry(offset=6, recovered=True), red, left=[None]),
        recovered(entry(offset=6, recovered=True), red, left=[""]),
    ]
    sent = [[None, EPOCH, 6], ["red", EPOCH, 3]]

    def script(index: int, path: str) -> tuple[list[str | bytes], float | None]:
        if index == 0:  # then closed by the server
            return [
                welcome(streams=[entry(), entry("red", offset=2)]),
                pub(offset=6),
                pub(room="red", offset=3),
            ], 0.0
        if index <= len(wrong):
            return [wrong[index - 1]], None
        return [recovered(entry(offset=6, recovered=True, missed=1), red), pub()], None

    with HostileServer(script) as server:

        async def main() -> None:
            client = Client(server.url, backoff_min=0.01, backoff_max=0.05, jitter=False)
            await client.connect()
            await until(lambda: client.reconnects == 1 and client.connected and client.offset == 7)
            assert client.session == SESSION
            assert client.positions == {None: (EPOCH, 7), "red": (EPOCH, 3)}
            await client.close()

        run_checked(main())
        connections = server.wait_connections(len(wrong) + 2)
    codes = [c.code for c in connections]
    assert codes == [1000] + [1002] * len(wrong) + [1000]  # 1000: the echo
    for connection in connections[1:]:
        assert connection.resume == {"type": "resume", "session": SESSION, "streams": sent}


def test_streams_joins_leaves_resets_and_pubs_that_are_dropped():
    """The client holds a position per stream: joins add one, leaves drop one,
    resets move one to a new epoch, and pubs move them on. A pub of a room not
    held, of another epoch or not above the position is dropped (a duplicate, not
    an error). The resume message sends the positions held; a recovered welcome
    gives a room_reset for each stream not recovered, and ``left``."""

    def script(index: int, path: str) -> tuple[list[str | bytes], float | None]:
        if index == 0:
            return [
                welcome(streams=[entry(), entry("blue", offset=10)]),
                join("red", offset=3),
                join("pink", offset=0),
                pub(room="red", offset=4, text="r4"),
                pub(room="red", offset=4, text="again"),  # duplicate
                pub(room="red", epoch="other", offset=5),  # another epoch
                pub(room="green", offset=1),  # a room not held
                pub(offset=5),  # not above the welcome's
                pub(offset=6, text="b6", extra={"unknown": "field"}),
                json.dumps({"type": "future", "room": 5}),  # an unknown type
                pub(room="blue", offset=11, text=OMIT, binary="AAE="),
                leave("blue"),
                pub(room="blue", offset=12),  # no longer held
                reset("red"),
                reset("green"),  # a stream not held: ignored
                pub(room="red", offset=5),  # the old epoch
                pub(room="red", epoch="newEpoch", offset=1, text="r1"),
            ], 0.2  # then closed by the server
        return [
            recovered(
                entry(offset=6, recovered=True, missed=1),
                entry("red", epoch="newEpoch", offset=1, recovered=True),
                entry("yellow", epoch="yEpoch", offset=4),
                left=["pink"],
            ),
            pub(offset=7, text="b7"),
        ], None

    callbacks: list[Any] = []
    with HostileServer(script) as server:

        async def main() -> list[Event]:
            client = Client(
                server.url,
                backoff_min=0.01,
                jitter=False,
                on_join=callbacks.append,
                on_leave=callbacks.append,
                on_room_reset=callbacks.append,
            )
            events = client.events()
            opened = await client.connect()
            assert opened.streams == (
                StreamPosition(None, EPOCH, 5, False, 0),
                StreamPosition("blue", EPOCH, 10, False, 0),
            )
            await until(lambda: client.reconnects == 1 and client.offset == 7)
            assert client.positions == {
                None: (EPOCH, 7),
                "red": ("newEpoch", 1),
                "yellow": ("yEpoch", 4),
            }
            positions = client.positions
            positions.clear()  # a copy
            assert client.positions
            assert client.duplicates == 6 and client.room_resets == 2 and client.resets == 0
            await client.close()
            return [event async for event in events]

        events = run_checked(main())
        first, second = server.wait_connections(2)
    assert [e for e in events if e.type not in ("open", "recovered", "close")] == [
        Join("red", EPOCH, 3),
        Join("pink", EPOCH, 0),
        Pub("red", 4, "r4", EPOCH),
        Pub(None, 6, "b6", EPOCH),
        Pub("blue", 11, b"\x00\x01", EPOCH),
        Leave("blue"),
        RoomReset("red", "newEpoch", 0),
        Pub("red", 1, "r1", "newEpoch"),
        RoomReset("yellow", "yEpoch", 4),
        Pub(None, 7, "b7", EPOCH),
    ]
    assert [e.type for e in events if e.type in ("open", "recovered", "close")] == [
        "open",
        "close",
        "open",
        "recovered",
        "close",
    ]
    assert callbacks == [e for e in events if e.type in ("join", "leave", "room_reset")]
    welcome_ = next(e for e in events if e.type == "recovered")
    assert (welcome_.epoch, welcome_.offset, welcome_.missed, welcome_.left) == (
        EPOCH,
        6,
        1,
        ("pink",),
    )
    assert [s.room for s in welcome_.streams] == [None, "red", "yellow"]
    assert second.resume == {
        "type": "resume",
        "session": SESSION,
        "streams": [[None, EPOCH, 6], ["pink", EPOCH, 0], ["red", "newEpoch", 1]],
    }


def test_a_resume_of_thousands_of_rooms_goes_in_the_message_not_the_url():
    """1,500 rooms (names up to 255 bytes): the URL only gains resume=1 (its other
    parameters are kept, a resume parameter of the caller's is replaced), the
    resume message holds every position, the broadcast stream first and the rooms
    sorted by their UTF-8 bytes."""
    rooms = [f"{'é' * 120}{i:05d}" if i % 2 else f"room {i}" for i in range(1500)]
    streams = [entry()] + [entry(room, offset=i) for i, room in enumerate(rooms)]

    def script(index: int, path: str) -> tuple[list[str | bytes], float | None]:
        if index == 0:
            return [welcome(streams=streams)], 0.0
        return [recovered(*[[*e[:3], True, 0] for e in streams])], None

    with HostileServer(script) as server:

        async def main() -> None:
            client = Client(server.url + "?app=1&resume=7", backoff_min=0.01, jitter=False)
            await client.connect()
            assert len(client.positions) == 1501
            await until(lambda: client.reconnects == 1 and client.connected)
            assert len(client.positions) == 1501
            await client.close()

        run_checked(main())
        first, second = server.wait_connections(2)
    assert first.path == "/?app=1"
    assert second.path == "/?app=1&resume=1"
    sent = second.resume["streams"]
    assert sent[0] == [None, EPOCH, 5]
    assert sent[1:] == sorted(
        ([r, EPOCH, i] for i, r in enumerate(rooms)), key=lambda s: s[0].encode()
    )


def test_backoff_grows_until_a_connection_lasts_a_second_past_its_welcome():
    """A server that welcomes and closes at once: the wait before each reconnection
    doubles (the welcome does not reset it); after a connection that stayed up
    for more than a second, the next one comes back at once."""
    held = 5  # the index of the connection the server keeps for 1.2 s

    def script(index: int, path: str) -> tuple[list[str | bytes], float | None]:
        message = welcome() if index == 0 else recovered(entry(recovered=True))
        return [message], 1.2 if index == held else 0.0

    with HostileServer(script) as server:

        async def main() -> None:
            client = Client(server.url, backoff_min=0.05, backoff_max=1.0, jitter=False)
            await client.connect()
            await until(lambda: client.reconnects >= held + 1)
            await client.close()

        run_checked(main())
        connections = server.wait_connections(held + 2)
    waits = [b.opened - a.ended for a, b in zip(connections, connections[1:])]
    for attempt, wait in enumerate(waits[:held]):
        assert wait >= min(1.0, 0.05 * 2**attempt) * 0.9, waits
    assert waits[held] < 0.5, waits  # attempt 0 again: 0.05 s, not 1 s
