"""``simplew serve --workers 2``: two processes accept on one port (SO_REUSEPORT);
with ``--redis`` a multicast from either reaches the clients of both. The parent
supervises them: a worker killed with SIGKILL is replaced while the other goes on
answering, one that dies at start is restarted with a growing delay, SIGTERM to
the parent ends them all, and no zombie is left (simplew/workers.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from helpers import ROOT, free_port
from multiproc import (
    Clients,
    RedisServer,
    ServerProcess,
    ask,
    recv,
    recv_nothing,
    redis_server_path,
    wait_backplane,
    wait_until,
)


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


def clients_per_worker(
    proc: ServerProcess, clients: Clients, per_worker: int = 2, timeout: float = 15.0
) -> dict[int, list]:
    """Connect until each of the 2 workers holds ``per_worker`` clients: {pid: [client, ...]}."""
    by_pid: dict[int, list] = {}
    deadline = time.monotonic() + timeout
    while len(by_pid) < 2 or any(len(v) < per_worker for v in by_pid.values()):
        if time.monotonic() > deadline:
            raise AssertionError(f"clients landed on {sorted(by_pid)} only:\n{proc.log()}")
        ws = clients.connect(proc.url)
        pid = int(ask(ws, "pid"))
        if len(by_pid.get(pid, ())) >= per_worker:
            ws.close()  # that worker has enough; the other may still start
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


# -- supervision ------------------------------------------------------------------


def children(parent: int) -> dict[int, str]:
    """{pid: state letter} of the processes whose parent is ``parent``, from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rpartition(")")[2].split()[:2]
            if int(ppid) == parent:
                found[int(entry)] = state
    return found


def healthz(port: int) -> bytes:
    """GET /healthz on a new connection (so SO_REUSEPORT picks a worker each time)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data


def test_a_killed_worker_is_replaced_while_the_other_answers(clients, cleanup):
    proc = ServerProcess(workers=2)
    cleanup(proc)
    proc.wait_ready()
    parent = proc.proc.pid
    victim, survivor = sorted(clients_per_worker(proc, clients, per_worker=1))

    # requests one after another on new connections, the whole time. The kill happens
    # between two of them and the next goes out once the victim is reaped: a connection
    # in flight to it, or queued on its listening socket while the kernel tears it down,
    # is reset with it (unless sysctl net.ipv4.tcp_migrate_req=1 moves it to the other)
    turn = threading.Lock()
    done = threading.Event()
    answers: list[tuple[float, bytes]] = []
    errors: list[str] = []

    def send() -> None:
        while not done.is_set() and len(answers) + len(errors) < 20000:
            with turn:
                try:
                    answers.append((time.monotonic(), healthz(proc.port)))
                except OSError as exc:
                    errors.append(repr(exc))

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        wait_until(lambda: len(answers) >= 20, what="requests answered")
        with turn:
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: not os.path.exists(f"/proc/{victim}"), what="the victim reaped")
            killed_at = time.monotonic()

        def new_worker() -> int | None:
            ws = clients.connect(proc.url)
            pid = int(ask(ws, "pid"))
            ws.close()
            return pid if pid not in (victim, survivor) else None

        replacement = wait_until(new_worker, timeout=2.0, what="a new worker serving")
        serving_after = time.monotonic() - killed_at
        wait_until(
            lambda: sum(at > killed_at for at, _ in answers) >= 20,
            what="requests answered after the kill",
        )
    finally:
        done.set()
        sender.join(timeout=10)
    assert serving_after < 2.0
    assert not errors, errors[:5]
    assert all(answer.startswith(b"HTTP/1.1 200") for _, answer in answers)
    family = children(parent)
    assert victim not in family and "Z" not in family.values(), family
    assert replacement in family and survivor in family
    log = proc.log()
    assert f"(pid {victim}) died with signal SIGKILL" in log, log

    # SIGTERM to the parent alone reaches the replacement and the survivor: all exit, status 0
    os.kill(parent, signal.SIGTERM)
    assert proc.proc.wait(timeout=15) == 0, proc.log()
    # the workers were reaped before the parent exited; its resource tracker follows it
    wait_until(lambda: all(gone(pid) for pid in family), what="every child gone")
    assert proc.log().count("restarted as pid") == 1


def logged_at(log: str, *parts: str) -> datetime:
    """The time stamp of the first log line that contains all ``parts``."""
    line = next(line for line in log.splitlines() if all(part in line for part in parts))
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def checkout_env() -> dict[str, str]:
    """This checkout's simplew, from a test's tmp_path too (not an installed one)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


def test_a_worker_that_dies_at_start_is_restarted_with_backoff(tmp_path):
    (tmp_path / "dies_at_start.py").write_text(
        "import multiprocessing, os\n"
        "from simplew import SimpleWServer\n"
        "server = SimpleWServer('127.0.0.1', 2015)\n"
        "server.add_websocket_content('/ws')\n"
        "if multiprocessing.parent_process() is not None:    # in a worker, not the parent\n"
        "    os._exit(3)\n"
    )
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simplew",
                "serve",
                "dies_at_start:server",
                "--port",
                str(free_port()),
                "--workers",
                "2",
            ],
            cwd=tmp_path,
            env=checkout_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: any(
                "worker0 (pid" in line and "restarting it in 1.0 s" in line
                for line in log.read_text().splitlines()
            ),
            timeout=15,
            what="two quick deaths of worker0",
        )
        text = log.read_text()
        assert "died with exit status 3 after " in text, text
        assert "restarting it in 0.5 s" in text and "restarting it now" not in text, text
        # worker0's first restart came no sooner than announced
        waited = logged_at(text, "worker0 restarted as pid") - logged_at(
            text, "worker0 (pid", "restarting it in 0.5 s"
        )
        assert waited.total_seconds() >= 0.49, text
        family = children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 1  # the workers' last exits were not clean
        wait_until(lambda: all(gone(pid) for pid in family), what="every child gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_worker_that_can_never_boot_ends_the_server_with_status_3(tmp_path):
    """An APP that fails in every worker (here after 1.2 s, longer than a "quick death",
    and before listening): 5 failed boots in a row of one worker stop the server, exit 3,
    with the worker's error shown. The parent imported the APP fine."""
    (tmp_path / "never_boots.py").write_text(
        "import multiprocessing, time\n"
        "from simplew import SimpleWServer\n"
        "server = SimpleWServer('127.0.0.1', 2015)\n"
        "server.add_websocket_content('/ws')\n"
        "if multiprocessing.parent_process() is not None:    # in a worker, not the parent\n"
        "    time.sleep(1.2)\n"
        "    raise RuntimeError('no database in this worker')\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "simplew",
            "serve",
            "never_boots:server",
            "--port",
            str(free_port()),
            "--workers",
            "2",
        ],
        cwd=tmp_path,
        env=checkout_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stderr
    assert proc.returncode == 3, out
    assert "RuntimeError: no database in this worker" in out, out
    assert "failed to boot 5 times in a row" in out, out
    assert out.count("restarting it in") >= 4, out
    assert "restarting it now" not in out, out


def test_workers_do_not_outlive_a_killed_parent():
    """SIGKILL to the supervisor (no chance to stop its workers): they stop by
    themselves, instead of serving on as orphans."""
    import psutil

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "simplew", "serve", "--ws", "/ws", "--port", str(port)]
        + ["--host", "127.0.0.1", "--workers", "2"],
        cwd=ROOT,
        env=checkout_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 15
        while len(parent.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = parent.children()
        assert len(workers) >= 2
        proc.kill()
        proc.wait()
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"workers still running after their parent died: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
