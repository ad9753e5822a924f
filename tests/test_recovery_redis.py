"""Recovery across processes: the stream and the sessions live in a real Redis.

``simplew serve tests.apps.feed:server --recovery --redis URL`` processes; a
simplew.v1 client cut by a TCP reset, by ``kill -9`` of its worker or by a
rolling restart comes back (to any process) and gets every offset once, in order.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from multiproc import ServerProcess, redis_server_path, wait_until
from simplew.recovery import log_id
from v2client import HttpPublisher, V2Client

pytestmark = pytest.mark.skipif(
    redis_server_path() is None,
    reason="redis-server is not installed (apt-get install redis-server)",
)

APP = "tests.apps.feed:server"


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


def redis_top(redis_server) -> int:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        return int(client.hget("simplew:meta", "top") or 0)
    finally:
        client.close()


def offsets_for(redis_server, rooms: set[str], after: int) -> list[int]:
    """The offsets in the Redis stream after ``after`` meant for a client in ``rooms``."""
    import redis

    from simplew.backplane import decode_records

    client = redis.Redis.from_url(redis_server.url)
    try:
        entries = client.xrange("simplew:stream", f"{after + 1}-0", "+")
    finally:
        client.close()
    out = []
    for entry_id, fields in entries:
        _opcode, room, _payload = decode_records(fields[b"r"])[0]
        if room is None or room in rooms:
            out.append(int(entry_id.split(b"-")[0]))
    return out


def assert_every_offset_once(client: V2Client, first: int, last: int) -> None:
    assert client.offsets == list(range(first, last + 1)), (
        f"missing {sorted(set(range(first, last + 1)) - set(client.offsets))[:10]}, "
        f"{len(client.offsets) - len(set(client.offsets))} duplicates"
    )


def finish(client: V2Client, publisher: HttpPublisher, redis_server, first_welcome) -> None:
    """Stop publishing, let the client catch up with the stream's last offset, and
    check that it stayed one session and got every offset after its first welcome once."""
    publisher.stop()
    top = redis_top(redis_server)
    client.collect(until_offset=top)
    client.close()
    assert {w["session"] for w in client.welcomes} == {first_welcome["session"]}
    assert_every_offset_once(client, first_welcome["offset"] + 1, top)


def test_reset_and_resume_through_redis(redis_server, processes):
    server = processes(redis_server.url)
    client = V2Client()
    welcome = client.connect(server.url)
    assert welcome["recovered"] is False
    assert client.request("/ws/feed/join", "r1") == "joined r1"
    publisher = HttpPublisher([server.port], 500)
    publisher.start()
    client.collect(0.7)
    assert client.offsets, "nothing published"
    client.reset()
    time.sleep(1.0)
    again = client.connect(server.url)
    assert again["recovered"] is True and again["session"] == welcome["session"]
    assert client.request("/ws/feed/pid")["rooms"] == ["r1"]
    client.collect(0.5)
    finish(client, publisher, redis_server, welcome)


def test_kill_9_of_the_worker(redis_server, processes):
    """--workers 2: the worker holding the client dies; the client comes back to
    whichever worker answers and misses nothing, rooms included."""
    server = processes(redis_server.url, workers=2)
    client = V2Client()
    welcome = client.connect(server.url)
    for room in ("a", "b", "c"):
        assert client.request("/ws/feed/join", room) == "joined " + room
    pid = client.request("/ws/feed/pid")["pid"]
    time.sleep(1.2)  # the rooms reach Redis (synced every second)
    publisher = HttpPublisher([server.port], 500, rooms=[None, "a", "b", "c", "d"])
    publisher.start()
    client.collect(0.5)
    os.kill(pid, signal.SIGKILL)
    client.collect(2.0)  # returns as soon as the connection is gone
    time.sleep(1.0)
    again = client.connect_any([server.url], time.monotonic() + 10)
    assert again["recovered"] is True and again["session"] == welcome["session"]
    info = client.request("/ws/feed/pid")
    assert info["pid"] != pid and info["rooms"] == ["a", "b", "c"] and info["recovered"]
    client.collect(0.5)
    publisher.stop()
    top = redis_top(redis_server)
    expected = offsets_for(redis_server, {"a", "b", "c"}, welcome["offset"])
    assert expected[-1] <= top
    client.collect(until_offset=expected[-1])
    client.close()
    assert all(int(text) % 5 != 4 for text in client.texts), "room d leaked"
    assert client.offsets == expected


def test_rolling_restart_of_every_process(redis_server, processes):
    """Two servers behind a client that fails over between them; each is
    restarted in turn (SIGTERM: close 1001) while 300 publications a second go out."""
    a, b = processes(redis_server.url), processes(redis_server.url)
    client = V2Client()
    welcome = client.connect(a.url)
    publisher = HttpPublisher([a.port, b.port], 300)
    publisher.start()
    client.collect(0.5)
    for old, other in ((a, b), (b, a)):
        old.stop()
        processes(redis_server.url, port=old.port)
        # the client sees its server go away (1001) and fails over, to the one
        # that is restarted next
        assert not client.collect(5.0), "the client's server did not close it"
        client.connect_any([other.url, old.url], time.monotonic() + 10)
        assert client.welcomes[-1]["recovered"] is True, client.welcomes[-1]
        client.collect(0.5)
    finish(client, publisher, redis_server, welcome)


def test_flushed_redis_means_not_recovered(redis_server, processes):
    server = processes(redis_server.url)
    client = V2Client()
    welcome = client.connect(server.url)
    client.request("/ws/feed/join", "x")
    import redis

    r = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: r.hgetall("simplew:presence:x"), 5, "the session present")
    client.close()
    # the server saw the close once the session left the room's presence
    wait_until(lambda: not r.hgetall("simplew:presence:x"), 5, "the session ended")
    wait_until(lambda: r.keys("simplew:session:*"), 5, "the ended session kept in Redis")
    r.flushall()
    r.close()
    time.sleep(0.2)
    again = client.connect(server.url)
    assert again["recovered"] is False and again["session"] != welcome["session"]
    client.close()


def test_presence_across_processes(redis_server, processes):
    a, b = processes(redis_server.url), processes(redis_server.url)
    one, two = V2Client(), V2Client()
    one.connect(a.url)
    two.connect(b.url)
    one.request("/ws/feed/join", "lobby")
    two.request("/ws/feed/join", "lobby")
    # users and public ids (digests), never a session id: those are resume secrets
    entry = {one.session: {"client": log_id(one.session), "user": None}}
    entry[two.session] = {"client": log_id(two.session), "user": None}
    expected = sorted(entry.values(), key=lambda e: e["client"])
    wait_until(
        lambda: one.request("/ws/feed/presence", "lobby") == expected,
        5,
        "both sessions present",
        interval=0.2,
    )
    listed = json.dumps(one.request("/ws/feed/presence", "lobby"))
    assert one.session not in listed and two.session not in listed
    two.close()
    wait_until(
        lambda: one.request("/ws/feed/presence", "lobby") == [entry[one.session]],
        5,
        "the closed session gone",
        interval=0.2,
    )
    one.close()


def test_rolling_restart_of_the_workers(redis_server, processes):
    """--workers 2: each worker in turn gets SIGTERM (close 1001 to its clients)
    and the parent starts a new one; the client follows, misses nothing."""
    import psutil

    server = processes(redis_server.url, workers=2)
    parent = psutil.Process(server.proc.pid)

    def workers() -> list[int]:
        found = []
        for child in parent.children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(
                    child.cmdline()
                ):
                    found.append(child.pid)
            except psutil.NoSuchProcess:  # a worker that exited since children() listed it
                pass
        return sorted(found)

    wait_until(lambda: len(workers()) == 2, 10, "two workers")
    client = V2Client()
    welcome = client.connect(server.url)
    publisher = HttpPublisher([server.port], 300)
    publisher.start()
    client.collect(0.5)
    for old in workers():
        os.kill(old, signal.SIGTERM)
        wait_until(
            lambda old=old: old not in workers() and len(workers()) == 2, 15, "the worker replaced"
        )
        if not client.collect(1.0):  # its connection was on the stopped worker
            client.connect_any([server.url], time.monotonic() + 10)
            assert client.welcomes[-1]["recovered"] is True, client.welcomes[-1]
        client.collect(0.3)
    finish(client, publisher, redis_server, welcome)
    assert len(client.welcomes) >= 2, "the client's worker was never restarted"


def test_welcome_waits_for_redis_to_come_back(processes):
    """Redis goes away (and comes back empty): a returning client's welcome waits
    for it, then says the history is lost; publications flow again."""
    from multiproc import RedisServer

    redis = RedisServer().start()
    try:
        server = processes(redis.url)
        client = V2Client()
        welcome = client.connect(server.url)
        redis.stop()
        client.reset()
        time.sleep(0.5)
        redis = RedisServer(port=redis.port)
        import threading

        back = threading.Timer(1.0, redis.start)  # back, without its data, in a second
        back.start()
        again = client.connect(server.url, timeout=20)
        assert not back.is_alive() and redis.proc is not None, "welcomed before Redis was back"
        assert again["recovered"] is False and again["epoch"] != welcome["epoch"]
        publisher = HttpPublisher([server.port], 50)
        publisher.start()
        try:
            assert client.collect(until_offset=again["offset"] + 3)
        finally:
            publisher.stop()
        client.close()
    finally:
        redis.stop()
