"""Shared fixtures: a real SimpleWServer on a loopback port, per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import BIG_SIZE, ROOT, free_port, wait_for_port
from simplew import SimpleWServer

# httpclient.py's asserts explain their failures as they did in test_http.py
pytest.register_assert_rewrite("httpclient")

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def make_server() -> Iterator[Callable[..., SimpleWServer]]:
    """``make_server(configure)`` → a started server on 127.0.0.1:<free port>.

    ``configure(server)`` adds content before the start; every server made
    is stopped at the end of the test.
    """
    servers: list[SimpleWServer] = []

    def make(configure: Callable[[SimpleWServer], None] | None = None, **options) -> SimpleWServer:
        server = SimpleWServer("127.0.0.1", 0, **options)
        if configure is not None:
            configure(server)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A small static site (test_http.py, test_hardening.py): index.html, hello.txt,
    a.txt, b.txt and big.bin, ``BIG_SIZE`` random bytes."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "hello.txt").write_text("hello\n")
    (root / "a.txt").write_text("AAA")
    (root / "b.txt").write_text("BBBB")
    (root / "big.bin").write_bytes(os.urandom(BIG_SIZE))
    return root


@pytest.fixture
def run_example() -> Iterator[Callable[..., tuple[subprocess.Popen, int]]]:
    """``run_example("push.py", *args)`` → (process, port) of a running example program."""
    procs: list[subprocess.Popen] = []

    def run(script: str, *args: str, attempts: int = 3) -> tuple[subprocess.Popen, int]:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / script), "--port", str(port), *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        try:
            wait_for_port(port, proc=proc)
        except TimeoutError:
            proc.kill()
            output = proc.stdout.read()
            if "address already in use" in output and attempts > 1:
                return run(script, *args, attempts=attempts - 1)  # lost a race for the port
            raise RuntimeError(f"{script} did not start:\n{output}") from None
        return proc, port

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


def chromium_available() -> bool:
    return os.path.exists(CHROMIUM) or shutil.which("chromium") is not None


@pytest.fixture
def browser():
    """A headless Debian Chromium driven by Playwright.

    Skipped when Chromium is absent, unless SIMPLEW_REQUIRE_BROWSER=1 (CI sets it).
    """
    if not chromium_available():
        if os.environ.get("SIMPLEW_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required (SIMPLEW_REQUIRE_BROWSER=1) but absent")
        pytest.skip("Chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def redis_server():
    """A throwaway ``redis-server`` on a free port (tests/multiproc.py)."""
    from multiproc import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()
