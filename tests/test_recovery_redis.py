"""Recovery across processes: the streams and the sessions live in a real Redis.

``simplew serve tests.apps.feed:server --recovery --redis URL`` processes; a
simplew.v2 client in rooms, cut by a TCP reset, by ``kill -9`` of its worker or by
a rolling restart, comes back (to any process) and gets every publication of each
of its streams (the broadcast stream and a stream per room) once, in order
(:func:`multiproc.replay`), up to the position each stream has in Redis
(:func:`multiproc.catch_up`). A stream Redis lost is a ``reset`` of that stream, the
connection and the other streams going on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import pytest

from multiproc import (
    Recorder,
    RedisServer,
    ServerProcess,
    assert_texts_match,
    catch_up,
    redis_server_path,
    replay,
    stream_meta,
    wait_until,
)
from simplew import SimpleWServer
from simplew.engines import Engine
from simplew.recovery import log_id
from simplew.stream import Unavailable
from v2client import HttpPublisher, V2Client

pytestmark = pytest.mark.skipif(
    redis_server_path() is None,
    reason="redis-server is not installed (apt-get install redis-server)",
)

APP = "tests.apps.feed:server"
WAIT = 20.0  # seconds, for anything that needs other processes (2 shared cores)


@pytest.fixture
def processes():
    started: list[ServerProcess] = []

    def start(
        redis_url: str, *args: str, port: int | None = None, workers: int = 1, ready: bool = True
    ) -> ServerProcess:
        proc = ServerProcess(
            "--recovery", *args, app=APP, redis_url=redis_url, port=port, workers=workers
        )
        started.append(proc)
        return proc.wait_ready() if ready else proc

    yield start
    for proc in started:
        proc.cleanup()


@pytest.fixture
def clients():
    made: list[Recorder] = []

    def make() -> Recorder:
        client = Recorder()
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def join(client: Recorder, *rooms: str) -> None:
    for room in rooms:
        assert client.request("/ws/feed/join", room) == "joined " + room


def finish(client: Recorder, publisher: HttpPublisher, redis_url: str) -> None:
    """Stop publishing, let the client catch up with every stream's position in
    Redis, and check that it stayed one session and got every publication of each
    of its streams once, in order, none lost."""
    publisher.stop()
    catch_up(client, redis_url)
    client.close()
    assert len({w["session"] for w in client.welcomes}) == 1, client.welcomes
    replay(client).check()
    assert_texts_match([client], redis_url)


def workers_of(server: ServerProcess) -> list[int]:
    import psutil

    found = []
    for child in psutil.Process(server.proc.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.NoSuchProcess:  # a worker that exited since children() listed it
            pass
    return sorted(found)


def on_worker(make, url: str, pid: int | None, other_than: int | None = None) -> Recorder:
    """A fresh client connected to worker ``pid`` (any with None), or to any but
    ``other_than``: SO_REUSEPORT spreads connections, try until one lands there."""
    for _ in range(100):
        client = make()
        client.connect(url)
        got = client.pid()
        if (pid is None or got == pid) and got != other_than:
            return client
        client.close()
    raise AssertionError(f"no connection reached worker {pid}")


def test_reset_and_resume_through_redis(redis_server, processes, clients):
    server = processes(redis_server.url)
    client = clients()
    welcome = client.connect(server.url)
    assert welcome["recovered"] is False
    join(client, "r1", "r2")
    publisher = HttpPublisher([server.port], 500, rooms=[None, "r1", "r2", "r3"])
    publisher.start()
    client.collect(0.7)
    assert len(client.pubs) > 10, "nothing published"
    client.reset()
    time.sleep(1.0)
    again = client.connect(server.url)
    assert again["recovered"] is True and again["session"] == welcome["session"]
    assert [s[0] for s in again["streams"]] == [None, "r1", "r2"]
    assert all(s[3] for s in again["streams"]) and again["missed"] > 0, again
    assert client.request("/ws/feed/pid")["rooms"] == ["r1", "r2"]
    client.collect(0.5)
    finish(client, publisher, redis_server.url)
    assert "r3" not in {room for room, *_ in client.pubs}


def test_kill_9_of_the_worker(redis_server, processes, clients):
    """--workers 2: the worker holding the client dies; the client comes back to
    whichever worker answers and misses nothing, rooms included."""
    server = processes(redis_server.url, workers=2)
    client = clients()
    welcome = client.connect(server.url)
    join(client, "a", "b", "c")
    pid = client.pid()
    time.sleep(1.2)  # the session's rooms reach Redis (synced every second)
    publisher = HttpPublisher([server.port], 500, rooms=[None, "a", "b", "c", "d"])
    publisher.start()
    client.collect(0.5)
    os.kill(pid, signal.SIGKILL)
    client.collect(WAIT)  # returns as soon as the connection is gone
    time.sleep(1.0)
    again = client.connect_any([server.url], time.monotonic() + WAIT)
    assert again["recovered"] is True and again["session"] == welcome["session"]
    assert all(s[3] for s in again["streams"]), again
    info = client.request("/ws/feed/pid")
    assert info["pid"] != pid and info["rooms"] == ["a", "b", "c"] and info["recovered"]
    client.collect(0.5)
    finish(client, publisher, redis_server.url)
    counts = replay(client).pubs
    assert "d" not in counts, "room d leaked"
    assert all(counts.get(room, 0) > 10 for room in (None, "a", "b", "c")), counts


def test_rolling_restart_of_every_process(redis_server, processes, clients):
    """Two servers behind a client that fails over between them; each is
    restarted in turn (SIGTERM: close 1001) while 300 publications a second go out."""
    a, b = processes(redis_server.url), processes(redis_server.url)
    client = clients()
    client.connect(a.url)
    join(client, "x", "y")
    publisher = HttpPublisher([a.port, b.port], 300, rooms=[None, "x", "y", "z"])
    publisher.start()
    client.collect(0.5)
    for old, other in ((a, b), (b, a)):
        old.stop()
        processes(redis_server.url, port=old.port)
        # the client sees its server go away (1001) and fails over, to the one
        # that is restarted next
        assert not client.collect(WAIT), "the client's server did not close it"
        client.connect_any([other.url, old.url], time.monotonic() + WAIT)
        welcome = client.welcomes[-1]
        assert welcome["recovered"] is True and all(s[3] for s in welcome["streams"]), welcome
        client.collect(0.5)
    finish(client, publisher, redis_server.url)
    assert set(replay(client).pubs) == {None, "x", "y"}


def test_flushed_redis_means_not_recovered(redis_server, processes, clients):
    import redis

    server = processes(redis_server.url)
    client = clients()
    welcome = client.connect(server.url)
    join(client, "x")
    r = redis.Redis.from_url(redis_server.url)
    presence = Engine.key("x", "presence")
    sessions = Engine.session_key("0" * 64).split("{")[0] + "{s:*"
    try:
        wait_until(lambda: r.hgetall(presence), WAIT, "the session present")
        client.close()
        # the server saw the close once the session left the room's presence
        wait_until(lambda: not r.hgetall(presence), WAIT, "the session ended")
        wait_until(lambda: r.keys(sessions), WAIT, "the ended session kept in Redis")
        r.flushall()
    finally:
        r.close()
    time.sleep(0.2)
    again = client.connect(server.url)
    assert again["recovered"] is False and again["session"] != welcome["session"]
    assert [s[0] for s in again["streams"]] == [None] and not again["streams"][0][3]
    client.close()


def test_presence_across_processes(redis_server, processes, clients):
    a, b = processes(redis_server.url), processes(redis_server.url)
    one, two = clients(), clients()
    one.connect(a.url)
    two.connect(b.url)
    join(one, "lobby")
    join(two, "lobby")
    # users and public ids (digests), never a session id: those are resume secrets
    entry = {one.session: {"client": log_id(one.session), "user": None}}
    entry[two.session] = {"client": log_id(two.session), "user": None}
    expected = sorted(entry.values(), key=lambda e: e["client"])
    wait_until(
        lambda: one.request("/ws/feed/presence", "lobby") == expected,
        WAIT,
        "both sessions present",
        interval=0.2,
    )
    listed = str(one.request("/ws/feed/presence", "lobby"))
    assert one.session not in listed and two.session not in listed
    two.close()
    wait_until(
        lambda: one.request("/ws/feed/presence", "lobby") == [entry[one.session]],
        WAIT,
        "the closed session gone",
        interval=0.2,
    )


def test_rolling_restart_of_the_workers(redis_server, processes, clients):
    """--workers 2: each worker in turn gets SIGTERM (close 1001 to its clients)
    and the parent starts a new one; the client follows, misses nothing."""
    server = processes(redis_server.url, workers=2)
    wait_until(lambda: len(workers_of(server)) == 2, WAIT, "two workers")
    client = clients()
    client.connect(server.url)
    join(client, "p", "q")
    publisher = HttpPublisher([server.port], 300, rooms=[None, "p", "q", "r"])
    publisher.start()
    client.collect(0.5)
    for old in workers_of(server):
        os.kill(old, signal.SIGTERM)
        try:
            wait_until(
                lambda old=old: old not in workers_of(server) and len(workers_of(server)) == 2,
                WAIT,
                "the worker replaced",
            )
        except AssertionError:
            raise AssertionError(
                f"{old} not replaced: {workers_of(server)}\n{server.log()}"
            ) from None
        if not client.collect(1.0):  # its connection was on the stopped worker
            client.connect_any([server.url], time.monotonic() + WAIT)
            welcome = client.welcomes[-1]
            assert welcome["recovered"] is True and all(s[3] for s in welcome["streams"])
        client.collect(0.3)
    finish(client, publisher, redis_server.url)
    assert len(client.welcomes) >= 2, "the client's worker was never restarted"


def test_welcome_waits_for_redis_to_come_back(processes, clients):
    """Redis goes away (and comes back empty): a returning client's welcome waits
    for it, then says the history is lost; publications flow again."""
    redis = RedisServer().start()
    try:
        server = processes(redis.url)
        client = clients()
        welcome = client.connect(server.url)
        join(client, "w")
        redis.stop()
        client.reset()
        time.sleep(0.5)
        redis = RedisServer(port=redis.port)
        back = threading.Timer(1.0, redis.start)  # back, without its data, in a second
        back.start()
        again = client.connect(server.url, timeout=WAIT)
        back.join()
        assert redis.proc is not None and again["missed"] == 0, "welcomed before Redis was back"
        assert not any(s[3] for s in again["streams"]), again
        assert again["streams"][0][1] != welcome["streams"][0][1]
        publisher = HttpPublisher([server.port], 50)
        publisher.start()
        try:
            assert client.collect(until_offset=3)
        finally:
            publisher.stop()
        replay(client).check(losses=True)
    finally:
        redis.stop()


def test_redis_restart_resets_the_streams_of_connected_clients(processes, clients):
    """Redis restarts empty under connected clients: each stream they are in is a
    ``reset`` to its new epoch, the connections stay, and publications go on."""
    redis = RedisServer().start()
    try:
        server = processes(redis.url)
        one, two = clients(), clients()
        one.connect(server.url)
        two.connect(server.url)
        join(one, "a", "b")
        join(two, "b")
        publisher = HttpPublisher([server.port], 200, rooms=[None, "a", "b"])
        publisher.start()
        assert one.collect(until_offset=10, room="a")
        redis.stop()
        time.sleep(0.5)
        redis = RedisServer(port=redis.port).start()
        for client in (one, two):
            wait_until(
                lambda client=client: (
                    client.collect(0.2) and len(client.resets) >= len(client.streams)
                ),
                WAIT,
                "the resets",
                interval=0,
            )
        publisher.stop()
        for client in (one, two):
            catch_up(client, redis.url)
            client.close()
            assert client.closed_by_server == 0 and len(client.welcomes) == 1
            result = replay(client)
            result.check(losses=True)
            assert sorted(result.resets, key=str) == sorted(
                ((room, stream_meta(redis.url, room)[0]) for room in client.streams), key=str
            )
        assert_texts_match([one, two], redis.url)
    finally:
        redis.stop()


# -- the streams of rooms across workers -------------------------------------------------

ROOMS = [None, "r1", "r2", "r3", "r4"]


def test_rooms_through_two_workers(redis_server, processes, clients):
    """Publications to 3 rooms (and one nobody is in) and to everyone, through 2
    workers: clients of both workers in different sets of rooms each get exactly
    the publications of their rooms and the broadcast stream, once, in order; the
    presence of a room lists the sessions of both workers."""
    server = processes(redis_server.url, workers=2)
    wait_until(lambda: len(workers_of(server)) == 2, WAIT, "two workers")
    first = on_worker(clients, server.url, None)
    pid = first.pid()
    second = on_worker(clients, server.url, None, other_than=pid)
    third = on_worker(clients, server.url, pid)
    fourth = on_worker(clients, server.url, second.pid())
    members = {first: ["r1", "r2"], second: ["r2", "r3"], third: ["r3"], fourth: []}
    for client, rooms in members.items():
        join(client, *rooms)
    publisher = HttpPublisher([server.port], 400, rooms=ROOMS)
    publisher.start()
    wait_until(
        lambda: (
            first.request("/ws/feed/presence", "r2")
            == sorted(
                ({"client": log_id(c.session), "user": None} for c in (first, second)),
                key=lambda e: e["client"],
            )
        ),
        WAIT,
        "r2's presence on both workers",
        interval=0.2,
    )
    assert [e["client"] for e in second.request("/ws/feed/presence", "r3")] == sorted(
        log_id(c.session) for c in (second, third)
    )
    for client in members:
        client.collect(0.5)
    publisher.stop()
    for client, rooms in members.items():
        catch_up(client, redis_server.url)
        client.close()
        result = replay(client)
        result.check()
        assert set(result.pubs) == {None, *rooms}, (rooms, result.pubs)
        assert all(count > 5 for count in result.pubs.values()), result.pubs
    assert_texts_match(list(members), redis_server.url)


def test_resume_on_the_other_worker_recovers_every_stream(redis_server, processes, clients):
    """A session in 3 rooms resumes on the worker that does not follow its rooms:
    that worker follows them first, and every stream is recovered."""
    server = processes(redis_server.url, workers=2)
    wait_until(lambda: len(workers_of(server)) == 2, WAIT, "two workers")
    client = on_worker(clients, server.url, None)
    pid = client.pid()
    join(client, "m1", "m2", "m3")
    time.sleep(1.2)  # the session's rooms reach Redis (synced every second)
    publisher = HttpPublisher([server.port], 300, rooms=[None, "m1", "m2", "m3", "m4"])
    publisher.start()
    client.collect(0.5)
    for _ in range(100):
        client.reset()
        time.sleep(0.3)  # away: publications go on
        welcome = client.connect_any([server.url], time.monotonic() + WAIT)
        assert welcome["recovered"] is True, welcome
        assert [s[0] for s in welcome["streams"]] == [None, "m1", "m2", "m3"], welcome
        assert all(s[3] for s in welcome["streams"]), welcome
        if client.pid() != pid:
            break
    else:
        raise AssertionError("never reached the other worker")
    assert welcome["missed"] > 0 and welcome["missed"] == sum(s[4] for s in welcome["streams"])
    assert client.request("/ws/feed/pid")["rooms"] == ["m1", "m2", "m3"]
    client.collect(0.5)
    finish(client, publisher, redis_server.url)
    assert set(replay(client).pubs) == {None, "m1", "m2", "m3"}


def test_publish_past_publish_timeout_is_unavailable_and_may_still_arrive(redis_server):
    """Redis stops answering (SIGSTOP) with a publication in flight: ``server.publish``
    raises Unavailable after ``publish_timeout`` instead of waiting for Redis; the
    publication stays queued, and once Redis answers again it is stored and delivered
    in order."""
    server = SimpleWServer(
        "127.0.0.1", 0, recovery=True, redis_url=redis_server.url, publish_timeout=0.5
    )
    server.add_websocket_content("/ws")
    server.start()
    client = V2Client()
    try:
        store = server.recovery.store
        wait_until(lambda: store.ready and store.connected, WAIT, "the stream ready")
        client.connect(f"ws://127.0.0.1:{server.port}/ws")
        loop = server._loop
        assert loop is not None

        def publish(text: str) -> Any:
            return asyncio.run_coroutine_threadsafe(server.publish(text), loop).result(WAIT)

        publish("before")
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable, match="within 0.5 s"):
                publish("during")
            assert time.monotonic() - started < 3
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        after = publish("after")
        client.collect(until_offset=after.offset, room=None)
        assert [t for _e, _o, t in client.room_pubs(None)] == ["before", "during", "after"]
    finally:
        client.close()
        server.stop()
