"""Helpers for the tests that run servers in other processes: a throwaway
``redis-server``, ``simplew serve`` processes of the relay app
(``tests/apps/relay.py``) and blocking WebSocket clients with timeouts.

Used by test_redis.py, test_workers.py and bench/backplane.py.
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
    """``python -m simplew serve tests.apps.relay:server ...`` in its own process group;
    its output goes to a file (``log()``)."""

    def __init__(
        self,
        *args: str,
        port: int | None = None,
        app: str = "tests.apps.relay:server",
        redis_url: str | None = None,
        workers: int = 1,
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
        env = dict(os.environ, PYTHONUNBUFFERED="1")
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
