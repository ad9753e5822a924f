"""The admin page's answers (simplew/admin.py) and the registry of processes
(simplew/registry.py): a real server, urllib, and with Redis two processes."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from helpers import wait_until
from multiproc import Clients, RedisServer, ServerProcess, ask, recv, recv_nothing
from simplew import SimpleWServer
from simplew.options import ServerOptions

TOKEN = "admin-test-token-1"
PATH = "/ops/admin"


def call(
    port: int, path: str, token: str | None = TOKEN, body: Any = None, method: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request to the server on ``port``."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def snapshot(port: int, path: str = PATH) -> dict[str, Any]:
    status, headers, body = call(port, path + "/snapshot")
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


def start_admin_server(path: str, token: str, ws_path: str) -> SimpleWServer:
    """A started server with recovery, the admin page at ``path`` and a WebSocket
    endpoint at ``ws_path`` where ``join ROOM`` joins ROOM (answered ``joined``)."""
    server = SimpleWServer(
        "127.0.0.1", 0, admin_path=path, admin_token=token, recovery=True, access_log=False
    )

    def on_message(session: Any, data: str | bytes) -> None:
        if isinstance(data, str) and data.startswith("join "):
            session.join(data[5:])
            session.send_text("joined")

    server.add_websocket_content(ws_path, on_message=on_message)
    server.start()
    return server


@pytest.fixture(scope="module")
def server():
    server = start_admin_server(PATH, TOKEN, "/admin-test-ws")
    yield server
    server.stop()


def test_snapshot_needs_the_token_and_shows_this_process(server):
    port = server.port
    status, headers, page = call(port, PATH, token=None)  # the page holds no data
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"<canvas" in page and "default-src 'none'" in headers["Content-Security-Policy"]
    for token in (None, "wrong-token", TOKEN + "x", TOKEN[:-1]):
        status, headers, body = call(port, PATH + "/snapshot", token=token)
        assert status == 401, token
        assert headers["WWW-Authenticate"] == 'Bearer realm="simplew admin"'
        assert json.loads(body)["error"] == "unauthorized" and b"pid" not in body
    assert call(port, PATH + "/snapshot", method="POST", body=b"")[0] == 405

    clients = Clients()
    try:
        sockets = [clients.connect(f"ws://127.0.0.1:{port}/admin-test-ws") for _ in range(3)]
        for ws, room in zip(sockets, ["blue", "blue", "red"]):
            ws.send(f"join {room}")
            assert recv(ws) == "joined"
        snap = wait_until(
            lambda: (s := snapshot(port))["totals"]["connections"] == 3 and s, what="3 clients"
        )
        (mine,) = snap["processes"]
        assert snap["registry"] == "local" and mine["id"] == server.registry.process_id
        assert mine["pid"] == os.getpid() and mine["host"] == snap["hosts"][0]["host"]
        assert mine["top_rooms"] == [["blue", 2], ["red", 1]] == snap["top_rooms"]
        assert mine["rooms"] == 2 and mine["messages_in"] >= 3 and mine["redis"] is None
        assert mine["followed"] == 0  # no Redis: no stream is followed
        assert snap["hosts"][0]["processes"] == 1 and snap["totals"]["hosts"] == 1

        # publishing: refused without the token (nothing sent), then delivered
        assert call(port, PATH + "/publish", token="nope", body={"text": "x"})[0] == 401
        assert call(port, PATH + "/publish", token=None, body={"text": "x"})[0] == 401
        recv_nothing(sockets[0], 0.1)
        status, _, body = call(port, PATH + "/publish", body={"text": "to red", "room": "red"})
        assert status == 200, body
        answer = json.loads(body)
        assert answer["room"] == "red" and answer["offset"] == 1 and answer["epoch"]
        assert recv(sockets[2]) == "to red"
        recv_nothing(sockets[0], 0.1)
        status, _, body = call(port, PATH + "/publish", body={"text": "to all"})
        assert status == 200 and json.loads(body)["room"] is None
        assert all(recv(ws) == "to all" for ws in sockets)
        after = snapshot(port)["processes"][0]
        assert after["publications"] == mine["publications"] + 2
        assert after["messages_out"] >= mine["messages_out"] + 4

        for bad, message in [
            (b"not json", "must be JSON"),
            ({"room": "red"}, "{text: string"),
            ({"text": "x", "room": 5}, "room must be a string"),
            ({"text": "x", "room": "r" * 300}, "room"),
        ]:
            status, _, body = call(port, PATH + "/publish", body=bad)
            assert status == 400 and message in json.loads(body)["message"], body
        assert call(port, PATH + "/publish", method="GET")[0] == 405
        recv_nothing(sockets[1], 0.1)
    finally:
        clients.close()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"admin_path": "/admin"}, "admin_path needs admin_token"),
        ({"admin_path": "/admin", "admin_token": " "}, "admin_path needs admin_token"),
        ({"admin_path": "/admin", "admin_token": "a b"}, "printable ASCII"),
        ({"admin_path": "admin", "admin_token": "t"}, "must start with '/'"),
        ({"admin_path": "/admin/", "admin_token": "t"}, "not end with it"),
        ({"admin_path": "/a?b", "admin_token": "t"}, "plain path"),
        ({"registry_ttl": 0}, "registry_ttl must be a finite number > 0"),
    ],
)
def test_admin_settings_that_cannot_work_are_refused(settings, message):
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        ServerOptions(**settings)


def test_an_admin_path_set_after_construction_without_token_refuses_to_start():
    server = SimpleWServer("127.0.0.1", 0)
    server.admin_path = "/admin"
    with pytest.raises(ValueError, match="admin_path needs admin_token"):
        server.start()


def test_registry_lists_every_process_sharing_redis():
    """Two processes, one Redis: each sees both; a killed one leaves the list when its
    entry expires (registry_ttl); without Redis the page shows this process and says
    why; a stopped one removes its own entry."""
    redis = RedisServer().start()
    clients = Clients()
    local = SimpleWServer(
        "127.0.0.1",
        0,
        redis_url=redis.url,
        recovery=True,
        admin_path=PATH,
        admin_token=TOKEN,
        access_log=False,
    )
    other = ServerProcess(
        *("--recovery", "--admin", "/adm", "--admin-token", TOKEN, "--registry-ttl", "1.5"),
        redis_url=redis.url,
    )
    try:
        local.start()
        other.wait_ready()
        ws = clients.connect(other.url)
        ask(ws, "join green", "joined")

        def both() -> dict[str, Any] | None:
            snap = snapshot(local.port)
            pids = {p["pid"] for p in snap["processes"]}
            totals = snap["totals"]
            return snap if pids == {os.getpid(), other.proc.pid} and totals["connections"] else None

        snap = wait_until(both, 10, "both processes listed, the other with its client")
        assert snap["registry"] == "redis" and snap["totals"]["processes"] == 2
        (host,) = snap["hosts"]
        assert host["processes"] == 2 and host["connections"] == 1
        assert ["green", 1] in snap["top_rooms"]
        theirs = next(p for p in snap["processes"] if p["pid"] == other.proc.pid)
        assert theirs["redis"]["mode"] == "streams" and theirs["redis"]["connected"]
        assert theirs["followed"] >= 1  # the room of its client, followed for it
        assert theirs["redis"]["shards"] == [
            {"index": 0, "connected": True, "outages": 0, "pending": 0}
        ]
        # the other process answers the same deployment
        remote = snapshot(other.port, "/adm")
        assert {p["pid"] for p in remote["processes"]} == {os.getpid(), other.proc.pid}

        os.killpg(other.proc.pid, signal.SIGKILL)  # no goodbye: only the TTL removes it
        killed = time.monotonic()
        assert len(snapshot(local.port)["processes"]) == 2
        wait_until(
            lambda: len(snapshot(local.port)["processes"]) == 1, 5, "the killed process gone"
        )
        assert time.monotonic() - killed > 0.5  # its entry outlived it until it expired

        redis.stop()  # the page still answers: this process, its shard down, and why

        def alone() -> dict[str, Any] | None:
            snap = snapshot(local.port)
            down = snap["registry"].startswith("unavailable") and snap["totals"]["redis_down"]
            return snap if down else None

        (mine,) = wait_until(alone, 10, "Redis seen down")["processes"]
        assert mine["redis"]["shards"] == [
            {"index": 0, "connected": False, "outages": 1, "pending": 0}
        ]
        redis.start()
        wait_until(lambda: snapshot(local.port)["registry"] == "redis", 10, "Redis back")
    finally:
        clients.close()
        local.stop()
        other.cleanup()
    import redis as redis_py

    with redis_py.Redis(port=redis.port) as r:
        mine = local.registry.process_id
        assert not r.hexists("simplew:{api}:processes", mine)  # a stopped one removes itself
        assert r.zscore("simplew:{api}:processes:expiry", mine) is None
    redis.stop()
