"""``simplew serve --workers 2``: two processes accept on one port (SO_REUSEPORT);
with ``--redis`` a multicast from either reaches the clients of both."""
from __future__ import annotations

import os
import time

import pytest

from multiproc import (Clients, RedisServer, ServerProcess, ask, recv, recv_nothing,
                       redis_server_path, wait_backplane, wait_until)


@pytest.fixture
def clients():
    group = Clients()
    yield group
    group.close()


@pytest.fixture
def cleanup():
    procs: list[ServerProcess] = []
    yield procs.append
    for proc in procs:
        proc.cleanup()


def clients_per_worker(proc: ServerProcess, clients: Clients, per_worker: int = 2,
                       timeout: float = 15.0) -> dict[int, list]:
    """Connect until each of the 2 workers holds ``per_worker`` clients: {pid: [client, ...]}."""
    by_pid: dict[int, list] = {}
    deadline = time.monotonic() + timeout
    while len(by_pid) < 2 or any(len(v) < per_worker for v in by_pid.values()):
        if time.monotonic() > deadline:
            raise AssertionError(f"clients landed on {sorted(by_pid)} only:\n{proc.log()}")
        ws = clients.connect(proc.url)
        pid = int(ask(ws, "pid"))
        if len(by_pid.get(pid, ())) >= per_worker:
            ws.close()                       # that worker has enough; the other may still start
            time.sleep(0.02)
            continue
        by_pid.setdefault(pid, []).append(ws)
    return by_pid


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.skipif(redis_server_path() is None, reason="redis-server is not installed")
def test_two_workers_share_the_port_and_the_backplane(clients, cleanup):
    redis_server = RedisServer().start()
    try:
        proc = ServerProcess(redis_url=redis_server.url, workers=2)
        cleanup(proc)
        proc.wait_ready()
        by_pid = clients_per_worker(proc, clients)
        assert len(by_pid) == 2 and proc.proc.pid not in by_pid
        (pid1, (w1a, w1b)), (pid2, (w2a, w2b)) = sorted(by_pid.items())
        everyone = (w1a, w1b, w2a, w2b)
        wait_backplane(w1a)
        wait_backplane(w2a)

        w1a.send("all from worker 1")
        assert [recv(ws) for ws in everyone] == ["from worker 1"] * 4
        w2b.send(b"\x01from worker 2")
        assert [recv(ws) for ws in everyone] == [b"\x01from worker 2"] * 4

        assert ask(w1b, "join team", "joined") == "team"
        assert ask(w2a, "join team", "joined") == "team"
        w1a.send("room team go team")
        assert recv(w1b) == "go team" and recv(w2a) == "go team"
        recv_nothing(w1a)
        recv_nothing(w2b)

        assert proc.stop() == 0, proc.log()
        wait_until(lambda: gone(pid1) and gone(pid2), what="workers exited")
        log = proc.log()
        assert "worker0" in log and "worker1" in log
        assert log.count("Redis backplane connected") == 2, log
    finally:
        redis_server.stop()


def test_two_workers_without_redis_multicast_stays_in_its_worker(clients, cleanup):
    proc = ServerProcess(workers=2)
    cleanup(proc)
    proc.wait_ready()
    by_pid = clients_per_worker(proc, clients)
    (pid1, (w1a, w1b)), (pid2, (w2a, w2b)) = sorted(by_pid.items())
    w1a.send("all only worker 1")
    assert recv(w1a) == recv(w1b) == "only worker 1"
    recv_nothing(w2a)
    recv_nothing(w2b)
    assert proc.stop() == 0, proc.log()
    wait_until(lambda: gone(pid1) and gone(pid2), what="workers exited")
