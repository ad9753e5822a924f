"""Helpers shared by the tests: the repository root, running a client coroutine,
waiting for a condition, free ports.

Test modules import these from here, never from one another nor from conftest.py
(which holds the fixtures). multiproc.py (processes, Redis), rawclient.py, httpclient.py,
staticclient.py, v2client.py, apiclient.py and hostile.py are the other shared modules.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 5.0
BIG_SIZE = 512 * 1024  # big.bin in the ``site`` fixture (conftest.py)


def run(coro: Any, timeout: float = 30.0) -> Any:
    """Run a client coroutine to completion (the server runs in its own thread),
    failing if it takes longer than ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = TIMEOUT,
    what: str = "condition",
    interval: float = 0.005,
) -> Any:
    """Call ``predicate`` every ``interval`` seconds until it returns something true,
    and return that; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))  # free on every address: examples bind 0.0.0.0
        return s.getsockname()[1]


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts: a throwaway CA (trustme) and its certificate
    for 127.0.0.1; the test is skipped without trustme."""
    import pytest  # only here: bench/ imports this module too

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def free_ports(count: int) -> list[int]:
    """``count`` different free ports: each socket stays bound until all are drawn (one
    at a time, the kernel may hand out a closed one's port again)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("0.0.0.0", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        if port_open(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")
