"""Chromium's own ``EventSource`` against a two-worker deployment with Redis
(issue 18, "Done when"): a page that only does ``new EventSource("/events?room=lobby")``
gets every publication once and in order per stream across a restart of the
deployment and a ``kill -9`` of the worker it reads from.

``simplew serve --workers 2 --redis ... --recovery --sse /events --publish /publish``
in its own process group, the page served by ``--static``; publications are
POSTed to ``/publish`` (each lands on either worker).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from multiproc import RedisServer, ServerProcess, redis_server_path, wait_until

pytestmark = pytest.mark.skipif(redis_server_path() is None, reason="redis-server is not installed")

PAGE = """<!doctype html><meta charset="utf-8"><title>events</title>
<script>
window.received = [];
window.resets = [];
window.opens = 0;
const source = new EventSource("/events?room=lobby");
source.onopen = () => { window.opens += 1; };
source.addEventListener("text", (event) => window.received.push(event.data));
source.addEventListener("reset", (event) => window.resets.push(event.data));
</script>
"""


def deployment(redis: RedisServer, site: Path, port: int | None = None) -> ServerProcess:
    return ServerProcess(
        "--recovery",
        "--sse",
        "/events",
        "--publish",
        "/publish",
        "--static",
        str(site),
        port=port,
        redis_url=redis.url,
        workers=2,
    ).wait_ready()


def publish(port: int, text: str, room: str | None) -> dict[str, Any]:
    """POST one publication; a 503 (a worker whose Redis link is not up yet: nothing
    was published) is tried again."""
    target = f"http://127.0.0.1:{port}/publish" + (f"?room={room}" if room else "")
    deadline = time.monotonic() + 10
    while True:
        request = urllib.request.Request(target, data=text.encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                result: dict[str, Any] = json.loads(answer.read())
            return result
        except urllib.error.HTTPError as error:
            if error.code != 503 or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def publish_batch(port: int, name: str, count: int) -> list[str]:
    """``count`` publications to the room and to everyone, alternating; their texts."""
    texts = []
    for i in range(count):
        for room in ("lobby", None):
            text = f"{room or 'all'} {name}{i}"
            publish(port, text, room)
            texts.append(text)
    return texts


def workers_serving(server: ServerProcess) -> list[int]:
    """The workers with an open client connection on the deployment's port."""
    found = []
    for child in psutil.Process(server.proc.pid).children():
        connections = child.net_connections(kind="tcp")
        if any(
            c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port for c in connections
        ):
            found.append(child.pid)
    return found


def test_event_source_loses_nothing_across_restart_and_kill(browser, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text(PAGE)
    redis = RedisServer().start()
    server = deployment(redis, tmp_path)
    page = browser.new_page()
    try:
        page.goto(f"http://127.0.0.1:{server.port}/index.html")
        page.wait_for_function("window.opens === 1", timeout=10_000)
        expected = publish_batch(server.port, "a", 5)

        # (a) the whole deployment restarts; publications go on before the page is back
        port = server.port
        server.cleanup()
        server = deployment(redis, tmp_path, port)
        expected += publish_batch(port, "b", 5)
        page.wait_for_function("window.opens >= 2", timeout=15_000)
        expected += publish_batch(port, "c", 3)
        wait_until(lambda: page.evaluate("window.received.length") >= len(expected), 15)

        # (b) kill -9 the worker the page reads from; the other one or its successor resumes
        victims = wait_until(lambda: workers_serving(server), 5, "a worker serving the page")
        processes = [psutil.Process(pid) for pid in victims]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        psutil.wait_procs(processes, timeout=5)  # its sockets are closed: no POST lands there
        expected += publish_batch(port, "d", 5)
        page.wait_for_function("window.opens >= 3", timeout=15_000)
        expected += publish_batch(port, "e", 3)
        wait_until(lambda: page.evaluate("window.received.length") >= len(expected), 15)

        received = page.evaluate("window.received")
        assert page.evaluate("window.resets") == []
        assert len(received) == len(expected), (received, expected)
        for stream in ("lobby", "all"):  # each stream once and in order
            got = [text for text in received if text.startswith(stream + " ")]
            assert got == [text for text in expected if text.startswith(stream + " ")]
    finally:
        page.close()
        server.cleanup()
        redis.stop()
