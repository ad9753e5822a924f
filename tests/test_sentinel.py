"""Redis Sentinel: ``--redis redis+sentinel://host:port[,...]/service[/db]``.

A master, a replica and three Sentinels on loopback ports; ``kill -9`` of the
master: the Sentinels promote the replica, and the backplane (recovery off) or
the stream (recovery on) reconnects to it. With recovery on, a stream that lost
publications this process delivered moves to a new epoch: an (epoch, offset)
never names two publications.
"""

from __future__ import annotations

import time

import pytest

from multiproc import (
    Clients,
    ServerProcess,
    redis_server_path,
    wait_backplane,
    wait_until,
)
from simplew import SimpleWServer
from simplew.backplane import parse_sentinel_url, redact
from topology import SentinelSetup
from v2client import HttpPublisher, V2Client

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


def assert_one_publication_per_offset(client: V2Client) -> None:
    """Each (epoch, offset) the client saw names one publication; in each epoch,
    offsets only grow within a connection."""
    seen: dict[tuple[str | None, int], str] = {}
    for _room, epoch, offset, text in client.pubs:
        assert seen.setdefault((epoch, offset), text) == text, (epoch, offset, text)
    assert [w["epoch"] for w in client.welcomes if not w["recovered"]], client.welcomes


@needs_redis
def test_stream_follows_a_failover(sentinels, processes):
    server = processes("--recovery", app="tests.apps.feed:server", redis_url=sentinels.url)
    client = V2Client()
    client.connect(server.url)
    publisher = HttpPublisher([server.port], 100)
    publisher.start()
    try:
        assert client.collect(until_offset=20)
        sentinels.kill_master()
        killed_at = len(client.pubs)
        deadline = time.monotonic() + 25
        while len(client.pubs) < killed_at + 30:
            assert time.monotonic() < deadline, (
                f"no publications after the failover:\n{server.log()}"
            )
            if not client.collect(1.0):  # closed (1012 after a new epoch): come back
                client.connect_any([server.url], deadline)
    finally:
        publisher.stop()
        client.close()
    assert sentinels.master_address() == sentinels.replica_port
    assert_one_publication_per_offset(client)


@needs_redis
def test_lost_publications_move_the_stream_to_a_new_epoch(redis_server, processes):
    """Redis's stream ends below what the processes delivered (as after a failover
    to a replica that missed the last writes): they move it to one new epoch, the
    clients start fresh sessions, and no (epoch, offset) names two publications."""
    import redis

    a = processes("--recovery", app="tests.apps.feed:server", redis_url=redis_server.url)
    b = processes("--recovery", app="tests.apps.feed:server", redis_url=redis_server.url)
    one, two = V2Client(), V2Client()
    first = one.connect(a.url)
    two.connect(b.url)
    publisher = HttpPublisher([a.port], 200)
    publisher.start()
    assert one.collect(until_offset=30) and two.collect(until_offset=30)
    publisher.stop()
    r = redis.Redis.from_url(redis_server.url)
    try:
        top = int(r.hget("simplew:meta", "top"))
        assert one.collect(until_offset=top) and two.collect(until_offset=top)
        # the last 10 publications are lost
        for entry_id, _fields in r.xrange("simplew:stream", f"{top - 9}-0", "+"):
            r.xdel("simplew:stream", entry_id)
        r.hset("simplew:meta", "top", top - 10)
        r.client_kill_filter(_type="pubsub")
        r.client_kill_filter(_type="normal")
        for client, server in ((one, a), (two, b)):
            assert not client.collect(10.0), "the client was not closed"
            client.connect_any([server.url], time.monotonic() + 10)
        epoch = r.hget("simplew:meta", "epoch").decode()
    finally:
        r.close()
    assert epoch != first["epoch"]
    for client in (one, two):
        assert client.welcomes[-1]["epoch"] == epoch and not client.welcomes[-1]["recovered"]
    publisher = HttpPublisher([b.port], 200)
    publisher.start()
    try:
        assert one.collect(until_offset=5) and two.collect(until_offset=5)
    finally:
        publisher.stop()
    for client in (one, two):
        client.close()
        assert_one_publication_per_offset(client)
        assert [o for _r, e, o, _t in client.pubs if e == epoch][0] == 1
    logs = a.log() + b.log()
    assert logs.count("moving to a new epoch") >= 1, logs
