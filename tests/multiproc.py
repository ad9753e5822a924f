"""Helpers for the tests that run servers in other processes: a throwaway
``redis-server``, ``simplew serve`` processes of the relay app
(``tests/apps/relay.py``) and blocking WebSocket clients with timeouts.

Also a recording simplew.v2 client (:class:`Recorder`) and the checks of the
recovery tests: :func:`replay` (each stream once, in order), :func:`catch_up` and
:func:`assert_texts_match` (against the streams in Redis).

Used by test_redis.py, test_workers.py, the recovery tests and bench/backplane.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

import helpers
from helpers import ROOT, TIMEOUT, free_port, port_open
from v2client import V2Client

REDIS_SERVER = "/usr/bin/redis-server"

# helpers.wait_until polling every 20 ms: these predicates ask other processes
wait_until = partial(helpers.wait_until, interval=0.02)


def redis_server_path() -> str | None:
    if os.path.exists(REDIS_SERVER):
        return REDIS_SERVER
    return shutil.which("redis-server")


def _stop_group(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM the process group this helper started ``proc`` in; SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftover children, if any
        except (ProcessLookupError, PermissionError):
            pass
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=5)


class RedisServer:
    """A ``redis-server`` on a loopback port, no persistence; stoppable and restartable."""

    def __init__(self, port: int | None = None) -> None:
        path = redis_server_path()
        if path is None:
            raise FileNotFoundError("redis-server is not installed")
        self.path = path
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                self.path,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
                "--dir",
                tempfile.gettempdir(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_until(
                lambda: port_open(self.port) or self.proc.poll() is not None,
                10,
                "redis-server listening",
            )
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None
        wait_until(lambda: not port_open(self.port), 5, "redis-server stopped")


class ServerProcess:
    """``python -m simplew serve tests.apps.relay:server ...`` in its own process group
    (``env``: variables added to this one's); its output goes to a file (``log()``)."""

    def __init__(
        self,
        *args: str,
        port: int | None = None,
        app: str = "tests.apps.relay:server",
        redis_url: str | None = None,
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self._log = tempfile.NamedTemporaryFile(prefix="simplew-", suffix=".log", delete=False)
        argv = [
            sys.executable,
            "-m",
            "simplew",
            "serve",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "info",
            "--shutdown-grace",
            "1",
        ]
        if redis_url:
            argv += ["--redis", redis_url]
        if workers != 1:
            argv += ["--workers", str(workers)]
        argv += list(args)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 15.0) -> ServerProcess:
        try:
            wait_until(
                lambda: port_open(self.port) or self.proc.poll() is not None,
                timeout,
                f"server on port {self.port}",
                interval=0.05,
            )
        except AssertionError:
            raise AssertionError(f"server did not start:\n{self.log()}") from None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def stop(self) -> int | None:
        _stop_group(self.proc)
        self._log.close()
        return self.proc.returncode

    def cleanup(self) -> None:
        self.stop()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass


class Clients:
    """Blocking WebSocket clients, all closed by ``close()``."""

    def __init__(self) -> None:
        self._stack = ExitStack()

    def connect(self, url: str) -> ClientConnection:
        return self._stack.enter_context(
            connect(
                url,
                proxy=None,
                compression=None,
                open_timeout=TIMEOUT,
                close_timeout=1,
                max_size=None,
            )
        )

    def close(self) -> None:
        self._stack.close()


def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> Any:
    return ws.recv(timeout=timeout)


def recv_nothing(ws: ClientConnection, timeout: float = 0.2) -> None:
    """Assert that nothing arrives on ``ws`` for ``timeout`` seconds."""
    try:
        message = ws.recv(timeout=timeout)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message {message!r}")


def ask(ws: ClientConnection, command: str, prefix: str | None = None) -> str:
    """Send a relay command and return its answer (skipping multicasts in between)."""
    ws.send(command)
    want = (prefix or command.split(" ", 1)[0]) + " "
    deadline = time.monotonic() + TIMEOUT
    while True:
        message = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(message, str) and message.startswith(want):
            return message[len(want) :]


def stats(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(ask(ws, "stats"))


def wait_backplane(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until the backplane of ``ws``'s server process is connected."""

    def connected() -> dict[str, Any] | None:
        current = stats(ws)
        return current if current["backplane"]["connected"] else None

    return wait_until(connected, timeout, "backplane connected", interval=0.05)


# -- simplew.v2 recovery checks ------------------------------------------------------


class Recorder(V2Client):
    """A :class:`~v2client.V2Client` that also keeps every welcome, pub, join, leave
    and reset in arrival order (``events``), with the positions it resumed from, so
    that :func:`replay` can check each stream."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.closed_by_server = 0  # collect() calls that ended with the connection

    def connect(self, url: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        held = dict(self.streams) if self.session is not None else None
        welcome = super().connect(url, timeout)
        self.events.append(("welcome", {"welcome": welcome, "held": held}))
        return welcome

    def _record(self, message: dict[str, Any]) -> None:
        super()._record(message)
        if message["type"] in ("pub", "join", "leave", "reset"):
            self.events.append((message["type"], message))

    def collect(self, *args: Any, **kwargs: Any) -> bool:
        alive = super().collect(*args, **kwargs)
        if not alive:
            self.closed_by_server += 1
        return alive

    def pid(self) -> int:
        return self.request("/ws/feed/pid")["pid"]


class Replay:
    """What :func:`replay` found: ``errors`` (a publication out of order, twice, of a
    stream not held or of another epoch than the one held), and the streams that
    were not continued: ``resets`` (room, epoch) and ``lost`` (room, welcome index) for
    a welcome entry not recovered of a stream the client held."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.resets: list[tuple[str | None, str]] = []
        self.lost: list[tuple[str | None, int]] = []
        self.pubs: dict[str | None, int] = {}  # pubs per stream

    def check(self, *, losses: bool = False) -> None:
        assert not self.errors, self.errors[:10]
        if not losses:
            assert not self.resets and not self.lost, (self.resets, self.lost)


def replay(client: Recorder) -> Replay:
    """Walk the client's messages in order, keeping the position of each stream as a
    client must (5.2): every pub must continue the stream it belongs to by one; only
    a welcome, a join or a reset moves a position otherwise."""
    out = Replay()
    held: dict[str | None, tuple[str, int]] = {}
    for index, (kind, event) in enumerate(client.events):
        if kind == "welcome":
            welcome, before = event["welcome"], event["held"]
            if before is not None and not welcome["recovered"]:
                out.lost.extend((room, index) for room in before)
            streams = welcome["streams"]
            if welcome["recovered"]:
                assert before is not None
                for room, epoch, offset, recovered, _missed in streams:
                    if recovered and before.get(room) != (epoch, offset):
                        out.errors.append(f"#{index}: {room!r} recovered from {before.get(room)}")
                    elif not recovered and room in before:
                        out.lost.append((room, index))
                gone = set(before) - {s[0] for s in streams} - set(welcome.get("left", ()))
                if gone:
                    out.errors.append(f"#{index}: streams {gone} neither continued nor left")
            held = {room: (epoch, offset) for room, epoch, offset, *_ in streams}
        elif kind == "pub":
            room, epoch, offset = event["room"], event["epoch"], event["offset"]
            position = held.get(room)
            if position != (epoch, offset - 1):
                out.errors.append(f"#{index}: pub {room!r} {epoch} {offset} after {position}")
            held[room] = (epoch, offset)
            out.pubs[room] = out.pubs.get(room, 0) + 1
        elif kind == "join":
            held[event["room"]] = (event["epoch"], event["offset"])
        elif kind == "leave":
            held.pop(event["room"], None)
        elif kind == "reset":
            out.resets.append((event["room"], event["epoch"]))
            held[event["room"]] = (event["epoch"], event["offset"])
    return out


def stream_meta(redis_url: str, room: str | None) -> tuple[str, int] | None:
    """The (epoch, top) of ``room``'s stream in the Redis at ``redis_url``."""
    import redis

    from simplew.engines import Engine

    client = redis.Redis.from_url(redis_url)
    try:
        epoch, top = client.hmget(Engine.key(room, "meta"), "epoch", "top")
    finally:
        client.close()
    return None if epoch is None else (epoch.decode(), int(top))


def stream_texts(redis_url: str, room: str | None) -> tuple[str, dict[int, str]]:
    """The epoch of ``room``'s stream and the texts of its history, by offset."""
    import redis

    from simplew.backplane import decode_records
    from simplew.engines import Engine

    client = redis.Redis.from_url(redis_url)
    try:
        epoch = client.hget(Engine.key(room, "meta"), "epoch")
        entries = client.xrange(Engine.key(room, "stream"))
    finally:
        client.close()
    texts = {}
    for entry_id, fields in entries:
        _opcode, _room, payload = decode_records(fields[b"r"])[0]
        texts[int(entry_id.split(b"-")[0])] = payload.decode()
    return (epoch or b"").decode(), texts


def catch_up(client: Recorder, redis_url: str, timeout: float = 20.0) -> None:
    """Collect until the client holds, of every stream it is in, the position the
    stream has in Redis (the publishers stopped)."""

    def done() -> bool:
        behind = [
            room
            for room, position in client.streams.items()
            if stream_meta(redis_url, room) not in (None, position)
        ]
        if not behind:
            return True
        assert client.collect(0.2), "the connection ended"
        return False

    wait_until(done, timeout, "the client caught up with Redis", interval=0)


def assert_texts_match(clients: list[Recorder], redis_url: str) -> None:
    """Every (room, epoch, offset) names one text, for every client, and the one
    Redis holds under it when its history still does."""
    seen: dict[tuple[str | None, str, int], str] = {}
    for client in clients:
        for room, epoch, offset, text in client.pubs:
            assert seen.setdefault((room, epoch, offset), text) == text, (room, epoch, offset)
    for room in {room for room, _e, _o in seen}:
        epoch, texts = stream_texts(redis_url, room)
        for (r, e, offset), text in seen.items():
            if r == room and e == epoch and offset in texts:
                assert texts[offset] == text, (room, epoch, offset, text, texts[offset])
