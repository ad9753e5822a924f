"""The Redis backplane: multicasts (to everyone or to a room) cross server
processes through a real ``redis-server``; losing Redis keeps local multicast
working, counts the gap, logs one WARNING, and the backplane comes back by itself.

Each test starts its own ``redis-server`` on a free loopback port (no
persistence) and ``simplew serve tests.apps.relay:server`` processes.
"""

from __future__ import annotations

import logging
import re
import time

import pytest

from multiproc import (
    Clients,
    ServerProcess,
    ask,
    free_port,
    recv,
    recv_nothing,
    redis_server_path,
    stats,
    wait_backplane,
    wait_until,
)
from simplew import Session, SimpleWServer
from simplew.backplane import (
    CHANNEL,
    HEADER,
    RECORD,
    RedisBackplane,
    decode,
    encode,
    encode_record,
    redact,
)

needs_redis = pytest.mark.skipif(
    redis_server_path() is None,
    reason="redis-server is not installed (apt-get install redis-server)",
)


@pytest.fixture
def processes():
    """``start(n, redis_url)`` -> n relay server processes, ready; all stopped at the end."""
    started: list[ServerProcess] = []

    def start(count: int, redis_url: str | None, **kwargs) -> list[ServerProcess]:
        batch = [ServerProcess(redis_url=redis_url, **kwargs) for _ in range(count)]
        started.extend(batch)
        return [p.wait_ready() for p in batch]

    yield start
    for proc in started:
        proc.cleanup()


@pytest.fixture
def clients():
    group = Clients()
    yield group
    group.close()


def warnings_in(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(r"WARNING simplew\.backplane", line)]


# -- the wire format ------------------------------------------------------------------


def test_message_format_round_trips():
    origin = b"12345678"
    multicasts = [
        (opcode, room, payload)
        for room in (None, "", "red", "salle-été", "x" * 1000)
        for opcode, payload in ((1, "héllo".encode()), (2, b"\x00\xff" * 10), (1, b""))
    ]
    for batch in ([multicasts[0]], multicasts[:5], multicasts):
        data = encode(origin, [encode_record(*m) for m in batch])
        assert decode(data) == (origin, batch)
        assert len(data) == HEADER.size + sum(
            RECORD.size + len((room or "").encode()) + len(payload) for _, room, payload in batch
        )
    one = encode(origin, [encode_record(1, None, b"x")])
    assert one == b"\x01" + origin + b"\x01\xff\xff\x00\x00\x00\x01x"
    for bad in (
        b"",
        b"\x01short",
        b"\x02" + one[1:],
        one[:9],
        one[:9] + b"\x09" + one[10:],
        one[:-1],
        one + b"\x01",
        encode(origin, [encode_record(1, "room", b"")])[:-2],
        one[:13] + b"\x00\x00\x00\x01\xff",
    ):
        with pytest.raises(ValueError):
            decode(bad)
    with pytest.raises(ValueError):
        encode_record(1, "r" * 70000, b"")
    assert redact("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("redis://host:6379") == "redis://host:6379"


# -- across processes -------------------------------------------------------------------


@needs_redis
def test_multicast_reaches_the_clients_of_both_processes(redis_server, processes, clients):
    a, b = processes(2, redis_server.url)
    a1, a2 = clients.connect(a.url), clients.connect(a.url)
    b1, b2 = clients.connect(b.url), clients.connect(b.url)
    wait_backplane(a1)
    wait_backplane(b1)
    everyone = (a1, a2, b1, b2)

    a1.send("all from a")
    assert [recv(ws) for ws in everyone] == ["from a"] * 4
    b2.send(b"\x00from b")
    assert [recv(ws) for ws in everyone] == [b"\x00from b"] * 4
    b1.send("burst 300 40")  # pipelined PUBLISHes, in order
    for ws in everyone:
        got = [recv(ws) for _ in range(300)]
        assert [m.split(":")[0] for m in got] == [str(i) for i in range(300)]
        assert all(len(m) == 40 for m in got)
    for ws in everyone:
        recv_nothing(ws, 0.1)  # each message exactly once

    sa, sb = stats(a1)["backplane"], stats(b1)["backplane"]
    assert (sa["published"], sa["batches"], sa["received"], sa["echoes"]) == (1, 1, 301, 1)
    assert (sb["published"], sb["received"]) == (301, 1)
    assert 2 <= sb["batches"] <= 10  # the burst went in a few PUBLISHes
    wait_until(lambda: stats(b1)["backplane"]["echoes"] == sb["batches"], what="echoes counted")
    assert sa["gaps"] == sb["gaps"] == 0


@needs_redis
def test_rooms_across_processes(redis_server, processes, clients):
    a, b = processes(2, redis_server.url)
    a1, a2 = clients.connect(a.url), clients.connect(a.url)
    b1, b2 = clients.connect(b.url), clients.connect(b.url)
    wait_backplane(a1)
    wait_backplane(b1)
    assert ask(a1, "join red", "joined") == "red"
    assert ask(b1, "join red", "joined") == "red"
    assert ask(b2, "join blue", "joined") == "blue"

    a2.send("room red to red")  # a2 itself is not in red
    assert recv(a1) == "to red" and recv(b1) == "to red"
    b2.send("room blue to blue")
    assert recv(b2) == "to blue"
    a1.send("room nobody lost")  # a room with no member anywhere
    a2.send("all end")
    for ws in (a1, a2, b1, b2):
        assert recv(ws) == "end"  # nothing came before it
    assert ask(b1, "leave red", "left") == "red"
    a1.send("room red again")
    assert recv(a1) == "again"
    recv_nothing(b1)
    assert stats(a1)["rooms"] == {"red": 1}
    assert stats(b1)["rooms"] == {"blue": 1}


@needs_redis
def test_losing_redis_keeps_local_multicast_and_recovers(redis_server, processes, clients):
    a, b = processes(2, redis_server.url)
    a1, a2, b1 = clients.connect(a.url), clients.connect(a.url), clients.connect(b.url)
    wait_backplane(a1)
    wait_backplane(b1)
    a1.send("all before")
    assert [recv(ws) for ws in (a1, a2, b1)] == ["before"] * 3

    redis_server.stop()
    wait_until(lambda: not stats(a1)["backplane"]["connected"], what="outage noticed")
    for i in range(20):
        a1.send(f"all local {i}")
    for ws in (a1, a2):  # local clients: every message
        assert [recv(ws) for _ in range(20)] == [f"local {i}" for i in range(20)]
    recv_nothing(b1)  # the other process: none
    backplane = stats(a1)["backplane"]
    assert backplane["gaps"] == 20 and backplane["outages"] == 1
    time.sleep(0.4)  # a few failed reconnections
    assert len(warnings_in(a.log())) == 1, a.log()  # one WARNING per outage
    assert "Redis backplane lost" in warnings_in(a.log())[0]

    redis_server.start()  # same port
    wait_backplane(a1)
    wait_backplane(b1)

    def crossed() -> bool:
        a1.send("all after")
        try:
            while b1.recv(timeout=0.3) != "after":
                pass
            return True
        except TimeoutError:
            return False

    wait_until(crossed, 10, "cross-process delivery after the restart")
    assert len(warnings_in(a.log())) == 1
    assert re.search(r"reconnected .* gap: 20 multicasts", a.log()), a.log()
    assert stats(a1)["backplane"]["gaps"] == 20
    for proc in (a, b):
        assert proc.stop() == 0, proc.log()  # SIGTERM: clean exit


# -- in-process ---------------------------------------------------------------------


def relay(session: Session, data: str) -> None:
    command, _, rest = data.partition(" ")
    if command == "join":
        session.join(rest)
        session.send_text(f"joined {rest}")


@needs_redis
def test_counters_threads_and_malformed_messages(redis_server, make_server, clients):
    import redis

    servers = [
        make_server(
            lambda s: s.add_websocket_content("/ws", on_message=relay), redis_url=redis_server.url
        )
        for _ in range(2)
    ]
    ws = [clients.connect(f"ws://127.0.0.1:{s.port}/ws") for s in servers]
    for server in servers:
        wait_until(lambda server=server: server.backplane.connected, what="backplane connected")
    assert isinstance(servers[0].backplane, RedisBackplane)
    assert servers[0].backplane.origin != servers[1].backplane.origin

    servers[0].multicast_text("from a thread")  # not the loop thread
    assert [recv(w) for w in ws] == ["from a thread"] * 2
    ws[1].send("join r")
    assert recv(ws[1]) == "joined r"
    servers[0].multicast_binary(b"room", room="r")
    assert recv(ws[1]) == b"room"
    recv_nothing(ws[0])

    with redis.Redis.from_url(redis_server.url) as client:
        client.publish(CHANNEL, b"junk")
        client.publish(CHANNEL, encode(b"elsewher", [encode_record(9, None, b"bad opcode")]))
        client.publish(CHANNEL, encode(b"elsewher", [encode_record(1, None, b"from outside")]))
    assert [recv(w) for w in ws] == ["from outside"] * 2
    a, b = servers[0].backplane, servers[1].backplane
    wait_until(lambda: a.malformed == 2 and b.malformed == 2, what="malformed counted")
    assert (a.published, a.received, b.published, b.received) == (2, 1, 0, 3)
    assert a.stats()["connected"] is True

    for server in servers:
        server.stop()
    assert not a.connected and a.closed
    a.publish(1, b"after stop")  # harmless
    assert a.published == 2


def test_unreachable_redis_does_not_stop_the_server(make_server, clients, caplog):
    caplog.set_level(logging.DEBUG, logger="simplew.backplane")
    server = make_server(
        lambda s: s.add_websocket_content("/ws", on_message=relay),
        redis_url=f"redis://127.0.0.1:{free_port()}",
    )
    ws = clients.connect(f"ws://127.0.0.1:{server.port}/ws")
    for i in range(5):
        server.multicast_text(f"local {i}")
    assert [recv(ws) for _ in range(5)] == [f"local {i}" for i in range(5)]
    wait_until(lambda: server.backplane.gaps == 5)
    wait_until(
        lambda: (
            sum(r.levelno == logging.DEBUG for r in caplog.records if r.name == "simplew.backplane")
            >= 2
        ),
        what="retries",
    )
    records = [r for r in caplog.records if r.name == "simplew.backplane"]
    assert [r.levelname for r in records].count("WARNING") == 1
    assert "cannot reach" in next(r.getMessage() for r in records if r.levelno == logging.WARNING)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3


def test_redis_url_option(capsys):
    from simplew.cli import build_parser, configure, main

    assert main(["serve", "--ws", "/ws", "--redis", "http://nope", "--port", "0"]) == 2
    assert "--redis" in capsys.readouterr().err
    server = configure(
        build_parser().parse_args(["serve", "--ws", "/ws", "--redis", "redis://127.0.0.1:1/0"])
    )
    assert server.redis_url == "redis://127.0.0.1:1/0" and server.backplane is None
    assert SimpleWServer(redis_url="redis://x").redis_url == "redis://x"
