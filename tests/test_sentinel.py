"""Redis Sentinel: ``--redis redis+sentinel://host:port[,...]/service[/db]``.

A master, a replica and three Sentinels on loopback ports; ``kill -9`` of the
master: the Sentinels promote the replica, and the backplane (recovery off) or
the streams (recovery on) reconnect to it. With recovery on (simplew.v2), a stream
that lost publications this process delivered moves to a new epoch, and its
clients get a ``reset`` of it (their connections and the other streams go on): a
(room, epoch, offset) never names two publications.
"""

from __future__ import annotations

import time

import pytest

from multiproc import (
    Clients,
    Recorder,
    ServerProcess,
    assert_texts_match,
    catch_up,
    redis_server_path,
    replay,
    stream_meta,
    wait_backplane,
    wait_until,
)
from simplew import SimpleWServer
from simplew.backplane import parse_sentinel_url, redact
from simplew.engines import Engine
from topology import SentinelSetup
from v2client import HttpPublisher

WAIT = 20.0  # seconds, for anything that needs other processes (2 shared cores)

needs_redis = pytest.mark.skipif(
    redis_server_path() is None,
    reason="redis-server is not installed (apt-get install redis-server)",
)


@pytest.fixture
def sentinels(tmp_path):
    setup = SentinelSetup(tmp_path)
    try:
        yield setup.start()
    finally:
        setup.stop()


@pytest.fixture
def processes():
    started: list[ServerProcess] = []

    def start(*args: str, **kwargs) -> ServerProcess:
        proc = ServerProcess(*args, **kwargs)
        started.append(proc)
        return proc.wait_ready()

    yield start
    for proc in started:
        proc.cleanup()


# -- the URL ---------------------------------------------------------------------------


def test_url_forms():
    parts = parse_sentinel_url("redis+sentinel://u:p%40ss@h1:26379,[::1]:26380/main/2")
    assert parts.sentinels == [("h1", 26379), ("::1", 26380)]
    assert (parts.service, parts.db, parts.username, parts.password) == ("main", 2, "u", "p@ss")
    assert parse_sentinel_url("redis+sentinel://h:1/m").db == 0
    for bad in (
        "redis+sentinel://h/m",
        "redis+sentinel://h:1",
        "redis+sentinel://h:1/",
        "redis+sentinel://h:1/m/x",
        "redis+sentinel://h:1/m/0/1",
        "redis+sentinel://h:70000/m",
        "redis+sentinel://:secret@/m",
    ):
        with pytest.raises(ValueError) as info:
            parse_sentinel_url(bad)
        assert "secret" not in str(info.value)
        with pytest.raises(ValueError):
            SimpleWServer("127.0.0.1", 0, redis_url=bad)
    assert redact("redis+sentinel://:pw@h1:1,h2:2/m") == "redis+sentinel://:***@h1:1,h2:2/m"


def test_cli_rejects_a_bad_sentinel_url(capsys):
    from simplew.cli import main

    assert main(["serve", "tests.apps.relay:server", "--redis", "redis+sentinel://:pw@h/m"]) == 2
    err = capsys.readouterr().err
    assert "each Sentinel must be host:port" in err and "pw" not in err


# -- failover --------------------------------------------------------------------------


def drain(ws) -> list:
    out = []
    while True:
        try:
            out.append(ws.recv(timeout=0.01))
        except TimeoutError:
            return out


def crosses(sender, receiver, text: str, timeout: float = 0.5) -> bool:
    """A multicast from ``sender``'s process reaches ``receiver`` on the other one."""
    drain(receiver)
    sender.send("all " + text)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                if receiver.recv(timeout=max(0.01, deadline - time.monotonic())) == text:
                    return True
            except TimeoutError:
                return False
        return False
    finally:
        drain(sender)


@needs_redis
def test_backplane_follows_a_failover(sentinels, processes):
    a = processes(redis_url=sentinels.url)
    b = processes(redis_url=sentinels.url)
    group = Clients()
    try:
        ca, cb = group.connect(a.url), group.connect(b.url)
        wait_backplane(ca)
        wait_backplane(cb)
        assert crosses(ca, cb, "before-1", 5) and crosses(cb, ca, "before-2", 5)
        sentinels.kill_master()
        wait_until(
            lambda: sentinels.master_address() == sentinels.replica_port, 15, "the replica promoted"
        )
        counter = iter(range(10**6))
        wait_until(
            lambda: crosses(ca, cb, f"after-a-{next(counter)}"), 15, "a -> b again", interval=0.1
        )
        wait_until(
            lambda: crosses(cb, ca, f"after-b-{next(counter)}"), 15, "b -> a again", interval=0.1
        )
        assert "redis+sentinel://" in a.log()
    finally:
        group.close()


def master_url(sentinels) -> str:
    return f"redis://127.0.0.1:{sentinels.master_address()}"


@needs_redis
def test_stream_follows_a_failover(sentinels, processes):
    """kill -9 of the master while 3 streams are published: the connection stays;
    a stream that lost publications it delivered moves to a new epoch with a
    ``reset``; no (room, epoch, offset) names two texts; publications go on."""
    server = processes("--recovery", app="tests.apps.feed:server", redis_url=sentinels.url)
    client = Recorder()
    client.connect(server.url)
    for room in ("a", "b"):
        assert client.request("/ws/feed/join", room) == "joined " + room
    publisher = HttpPublisher([server.port], 150, rooms=[None, "a", "b"])
    publisher.start()
    try:
        assert client.collect(until_offset=20)
        sentinels.kill_master()
        killed_at = replay(client).pubs
        wait_until(
            lambda: client.collect(0.5) and sentinels.master_address() == sentinels.replica_port,
            WAIT,
            "the replica promoted",
            interval=0,
        )

        def published_after() -> bool:
            assert client.collect(0.5), "the connection was closed"
            now = replay(client).pubs
            return all(now.get(room, 0) >= killed_at.get(room, 0) + 20 for room in (None, "a", "b"))

        try:
            wait_until(published_after, WAIT, "publications after the failover", interval=0)
        except AssertionError:
            raise AssertionError(f"{replay(client).pubs} {killed_at}\n{server.log()}") from None
    finally:
        publisher.stop()
    catch_up(client, master_url(sentinels))
    client.close()
    assert client.closed_by_server == 0 and len(client.welcomes) == 1
    result = replay(client)
    result.check(losses=True)  # every pub continues its stream, or follows a reset
    # a stream moved to another epoch only with a reset of it, the last one to the
    # epoch it has in Redis now
    now = master_url(sentinels)
    for room in (None, "a", "b"):
        epochs = {e for r, e, _o, _t in client.pubs if r == room}
        resets = [e for r, e in result.resets if r == room]
        assert len(epochs) <= 1 + len(resets), (room, epochs, resets)
        if resets:
            assert resets[-1] == stream_meta(now, room)[0], (room, resets)
    assert_texts_match([client], now)
    assert server.log().count("moving it to a new epoch") <= len(result.resets)


@needs_redis
def test_failover_to_a_replica_that_lacks_publications(sentinels, processes):
    """The replica is cut off (its link dropped, the process stopped so that it
    cannot reconnect) while publications go on, then the master is killed: the
    promoted replica lacks publications the server delivered. Those streams move to
    a new epoch with a ``reset`` to the client, whose connection stays; a room
    published only before is not reset; publications go on."""
    import os
    import signal

    from topology import ask

    server = processes("--recovery", app="tests.apps.feed:server", redis_url=sentinels.url)
    client = Recorder()
    client.connect(server.url)
    for room in ("a", "b", "quiet"):
        assert client.request("/ws/feed/join", room) == "joined " + room
    quiet = HttpPublisher([server.port], 100, rooms=["quiet"])
    quiet.start()
    assert client.collect(until_offset=5, room="quiet")
    quiet.stop()
    publisher = HttpPublisher([server.port], 150, rooms=[None, "a", "b"])
    publisher.start()
    replica = sentinels.procs[1]  # SentinelSetup starts the master, then the replica
    try:
        assert client.collect(until_offset=10, room="b")
        wait_until(
            lambda: (
                client.collect(0.1)
                and ask(sentinels.replica_port, "INFO", "replication")["master_link_status"] == "up"
            ),
            WAIT,
            "the replica in sync",
            interval=0,
        )
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            ask(sentinels.master_port, "CLIENT", "KILL", "TYPE", "replica")
            held = dict(client.streams)
            wait_until(  # delivered, and only on the master
                lambda: (
                    client.collect(0.1)
                    and all(
                        client.streams[room][1] >= held[room][1] + 10 for room in (None, "a", "b")
                    )
                ),
                WAIT,
                "publications the replica lacks",
                interval=0,
            )
            sentinels.kill_master()
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        wait_until(
            lambda: client.collect(0.2) and len(client.resets) >= 3,
            WAIT * 2,
            "the resets of the streams that lost publications",
            interval=0,
        )
        assert sentinels.master_address() == sentinels.replica_port
        now = {room: client.streams[room] for room in (None, "a", "b")}
        assert client.collect(1.0)
        wait_until(
            lambda: (
                client.collect(0.2)
                and all(client.streams[room][1] >= now[room][1] + 10 for room in now)
            ),
            WAIT,
            "publications after the failover",
            interval=0,
        )
    finally:
        publisher.stop()
    catch_up(client, master_url(sentinels))
    client.close()
    assert client.closed_by_server == 0 and len(client.welcomes) == 1
    result = replay(client)
    result.check(losses=True)
    assert sorted(result.resets, key=str) == sorted(
        ((room, stream_meta(master_url(sentinels), room)[0]) for room in (None, "a", "b")), key=str
    )
    assert {e for r, e, _o, _t in client.pubs if r == "quiet"} == {client.streams["quiet"][0]}
    for room in (None, "a", "b"):
        epochs = [e for r, e, _o, _t in client.pubs if r == room]
        assert len(set(epochs)) == 2, (room, set(epochs))
        # the new epoch starts again at 1, under offsets the old one had used
        assert [o for r, e, o, _t in client.pubs if r == room and e == epochs[-1]][0] == 1
    assert_texts_match([client], master_url(sentinels))
    assert server.log().count("moving it to a new epoch") == 3, server.log()


@needs_redis
def test_lost_publications_move_the_stream_to_a_new_epoch(redis_server, processes):
    """Redis's stream of room ``a`` ends below what the processes delivered (as after
    a failover to a replica that missed the last writes): they move it to one new
    epoch and send a ``reset`` of it to their clients, whose connections stay; the
    broadcast stream and room ``b`` go on; no (room, epoch, offset) names two
    publications."""
    import redis

    a = processes("--recovery", app="tests.apps.feed:server", redis_url=redis_server.url)
    b = processes("--recovery", app="tests.apps.feed:server", redis_url=redis_server.url)
    one, two = Recorder(), Recorder()
    one.connect(a.url)
    two.connect(b.url)
    for client in (one, two):
        for room in ("a", "b"):
            assert client.request("/ws/feed/join", room) == "joined " + room
    rooms = [None, "a", "b"]
    publisher = HttpPublisher([a.port], 300, rooms=rooms)
    publisher.start()
    assert one.collect(until_offset=30, room="a") and two.collect(until_offset=30, room="a")
    publisher.stop()
    catch_up(one, redis_server.url)
    catch_up(two, redis_server.url)
    before = {room: stream_meta(redis_server.url, room) for room in rooms}
    r = redis.Redis.from_url(redis_server.url)
    try:
        # the last 10 publications of room a are lost
        meta, stream = Engine.key("a", "meta"), Engine.key("a", "stream")
        top = before["a"][1]
        for entry_id, _fields in r.xrange(stream, f"{top - 9}-0", "+"):
            r.xdel(stream, entry_id)
        r.hset(meta, "top", top - 10)
        r.client_kill_filter(_type="pubsub")
        r.client_kill_filter(_type="normal")
        for client in (one, two):
            wait_until(
                lambda client=client: client.collect(0.2) and client.resets,
                WAIT,
                "a reset",
                interval=0,
            )
        epoch = r.hget(meta, "epoch").decode()
    finally:
        r.close()
    assert epoch != before["a"][0]
    for client in (one, two):
        assert client.resets == [{"type": "reset", "room": "a", "epoch": epoch, "offset": 0}]
        assert client.streams["a"] == (epoch, 0)
    publisher = HttpPublisher([b.port], 300, rooms=rooms)
    publisher.start()
    try:
        for client in (one, two):
            assert client.collect(until_offset=5, room="a")
            assert client.collect(until_offset=before["b"][1] + 5, room="b")
    finally:
        publisher.stop()
    for client in (one, two):
        catch_up(client, redis_server.url)
        client.close()
        assert client.closed_by_server == 0 and len(client.welcomes) == 1
        result = replay(client)
        result.check(losses=True)
        assert result.resets == [("a", epoch)] and not result.lost
        assert [o for r_, e, o, _t in client.pubs if e == epoch][0] == 1
        for room in (None, "b"):  # the other streams went on in their epochs
            assert {e for r_, e, _o, _t in client.pubs if r_ == room} == {before[room][0]}
    assert_texts_match([one, two], redis_server.url)
    logs = a.log() + b.log()
    assert logs.count("moving it to a new epoch") >= 1, logs
