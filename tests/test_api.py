"""The server API (simplew.api): every method against real servers, over HTTP.

One server without Redis (the methods, the token, the errors, idempotency in
memory, history from the process's streams); two ``simplew serve --api``
processes sharing a real redis-server (presence, join, disconnect of a user on
both, idempotency and history in Redis, info of both processes, 503 once Redis is
gone). Clients are simplew.v2 WebSocket clients whose user comes from a JWT.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from apiclient import BODY_LIMIT, TOKEN, Client, call, make_server
from helpers import wait_until
from multiproc import RedisServer, ServerProcess, redis_server_path
from simplew import SimpleWServer

APP = "tests.apps.api_app:server"


@pytest.fixture(scope="module")
def local():
    server = make_server()
    yield server
    server.stop()


def test_refused_without_the_token_and_bad_requests_get_clear_errors(local):
    port = local.port
    for token in (None, "wrong", ""):
        status, answer, headers = call(port, "info", token=token)
        assert status == 401 and answer["error"] == "unauthorized"
        assert headers["WWW-Authenticate"].startswith('Bearer realm="simplew"')
    assert call(port, "no_such_method", token="wrong")[0] == 401  # nothing told before the token
    assert call(port, "info")[0] == 200
    cases = {
        "no_such_method": ({}, 404, "unknown_method"),
        "publish": (b"{not json", 400, "bad_json"),
        "presence": (b"[1, 2]", 400, "bad_json"),
    }
    for method, (body, status, error) in cases.items():
        got = call(port, method, body)
        assert (got[0], got[1]["error"]) == (status, error), got
    for method, body, words in [
        ("publish", {"room": "a"}, "give one of 'text'"),
        ("publish", {"text": "x", "binary": "eA=="}, "give one of 'text'"),
        ("publish", {"binary": "not base64!"}, "not valid base64"),
        ("publish", {"text": "x", "room": ""}, "room"),
        ("publish", {"text": "x", "rooom": "a"}, "unknown field 'rooom'"),
        ("publish", {"text": "x", "key": ""}, "idempotency key"),
        ("broadcast", {"rooms": ["a", "a"], "text": "x"}, "names a room twice"),
        ("history", {"room": "a", "limit": 0}, "'limit' must be an integer from 1 to 1000"),
        ("history", {"room": "a", "since": {"epoch": "e"}}, "'since' must be"),
        ("disconnect", {"session": "s:1", "user": "u"}, "give one of 'session'"),
        ("disconnect", {"user": "u", "code": 1000}, "'code' must be an integer from 4000"),
    ]:
        status, answer, _ = call(port, method, body)
        assert status == 400 and words in answer["message"], (method, body, answer)
    status, _, _ = call(port, "publish", {"text": "x" * BODY_LIMIT})
    assert status == 413  # over max_body_size: the HTTP front refuses it, nothing published
    assert call(port, "history", {})[1]["offset"] == 0  # none of the above was published


def test_publish_once_join_history_presence_leave_disconnect(local):
    port = local.port
    alice = Client(port, "alice")
    assert call(port, "join", {"room": "lobby", "session": alice.public})[1] == {
        "count": 1,
        "processes": 1,
    }
    alice.joined("lobby")  # its join message, with the room's position
    first = call(port, "publish", {"room": "lobby", "text": "one", "key": "order-1"})[1]
    again = call(port, "publish", {"room": "lobby", "text": "one", "key": "order-1"})[1]
    assert again == {**first, "duplicate": True} and first["duplicate"] is False
    binary = call(port, "publish", {"room": "lobby", "binary": base64.b64encode(b"\0\1").decode()})
    assert binary[1]["offset"] == first["offset"] + 1
    status, answer, _ = call(port, "broadcast", {"rooms": ["lobby", "other"], "text": "both"})
    assert status == 200 and [p["room"] for p in answer["positions"]] == ["lobby", "other"]
    top = answer["positions"][0]["offset"]
    alice.collect(until_offset=top, room="lobby")
    assert alice.room_pubs("lobby") == [
        (first["epoch"], first["offset"], "one"),
        (first["epoch"], first["offset"] + 1, ""),  # the binary one (recorded without text)
        (first["epoch"], top, "both"),
    ]  # the retried publication was delivered once
    history = call(port, "history", {"room": "lobby", "limit": 2})[1]
    assert history["epoch"] == first["epoch"] and history["offset"] == top
    assert [p["offset"] for p in history["publications"]] == [top - 1, top]
    assert history["publications"][0]["binary"] == "AAE=" and not history["reset"]
    since = {"epoch": first["epoch"], "offset": first["offset"]}
    history = call(port, "history", {"room": "lobby", "since": since, "limit": 1})[1]
    assert [p["offset"] for p in history["publications"]] == [first["offset"] + 1]
    history = call(port, "history", {"room": "lobby", "since": {"epoch": "gone", "offset": 1}})[1]
    assert history["reset"] is True and len(history["publications"]) == 3
    assert call(port, "presence", {"room": "lobby"})[1]["presence"] == [
        {"client": alice.public, "user": "alice"}
    ]
    anonymous = Client(port)
    call(port, "join", {"room": "lobby", "session": anonymous.public})
    stats = call(port, "presence_stats", {"room": "lobby"})[1]
    assert stats == {"room": "lobby", "clients": 2, "users": 1}
    info = call(port, "info")[1]["processes"]
    assert len(info) == 1 and info[0]["connections"] == 2 and info[0]["rooms"] == 1
    assert call(port, "leave", {"room": "lobby", "user": "alice"})[1]["count"] == 1
    alice.collect(0.2)
    assert [leave["room"] for leave in alice.leaves] == ["lobby"]
    assert call(port, "disconnect", {"user": "alice", "reason": "bye"})[1]["count"] == 1
    assert alice.closed_with() == 4000
    back = Client(port, "alice", resume=alice)
    assert back.welcomes[0]["recovered"] is False  # the API ended the session: not resumable
    back.close()
    assert call(port, "disconnect", {"session": anonymous.public, "code": 4100})[1]["count"] == 1
    assert anonymous.closed_with() == 4100
    wait_until(lambda: len(local.hub) == 0, what="both sessions gone")


def test_api_needs_a_token_to_start():
    with pytest.raises(ValueError, match="api_path needs api_token"):
        SimpleWServer("127.0.0.1", 0, api_path="/api")
    with pytest.raises(ValueError, match="api_path must be a path"):
        SimpleWServer("127.0.0.1", 0, api_path="api", api_token="t")


# -- two processes sharing a Redis -------------------------------------------------------


@pytest.fixture(scope="module")
def shared():
    """Two ``simplew serve --api`` processes sharing a redis-server: the token on
    the command line of one, in ``SIMPLEW_API_TOKEN`` for the other."""
    if redis_server_path() is None:
        pytest.skip("redis-server is not installed")
    redis = RedisServer().start()
    common = ("--recovery", "--api", "/api")
    servers = [
        ServerProcess(*common, "--api-token", TOKEN, app=APP, redis_url=redis.url),
        ServerProcess(*common, app=APP, redis_url=redis.url, env={"SIMPLEW_API_TOKEN": TOKEN}),
    ]
    try:
        for server in servers:
            server.wait_ready()
        nobody = {"room": "x", "user": "nobody"}
        wait_until(
            lambda: call(servers[0].port, "leave", nobody)[1].get("processes") == 2,
            15,
            "both processes on the command channel",
            interval=0.05,
        )
        yield redis, servers
    finally:
        for server in servers:
            server.cleanup()
        redis.stop()


def test_acts_on_every_process_sharing_redis(shared):
    _redis, (one, two) = shared
    bob = [Client(one.port, "bob"), Client(two.port, "bob")]
    carol = Client(two.port, "carol")
    status, answer, _ = call(one.port, "join", {"room": "team", "user": "bob"})
    assert (status, answer) == (200, {"count": 2, "processes": 2})
    call(two.port, "join", {"room": "team", "session": carol.public})
    for client in [*bob, carol]:
        client.joined("team")

    def stats() -> Any:
        answer = call(two.port, "presence_stats", {"room": "team"})[1]
        return answer if answer["clients"] == 3 else None

    assert wait_until(stats, 5, "presence synced") == {"room": "team", "clients": 3, "users": 2}
    users = [entry["user"] for entry in call(one.port, "presence", {"room": "team"})[1]["presence"]]
    assert sorted(users) == ["bob", "bob", "carol"]

    def info() -> Any:  # from the registry, written every second by each process
        processes = call(two.port, "info")[1]["processes"]
        return sorted(p["connections"] for p in processes) == [1, 2] and processes

    assert len({p["id"] for p in wait_until(info, 5, "both processes in the registry")}) == 2
    # idempotency in Redis: a retry, even through the other process, is the first publication
    first = call(one.port, "publish", {"room": "team", "text": "hello", "key": "k-1"})[1]
    again = call(two.port, "publish", {"room": "team", "text": "hello", "key": "k-1"})[1]
    assert again == {**first, "duplicate": True}
    for n in range(3):
        call(two.port, "publish", {"room": "team", "text": f"m{n}"})
    top = first["offset"] + 3
    for client in [*bob, carol]:
        client.collect(until_offset=top, room="team")
        assert [text for _e, _o, text in client.room_pubs("team")] == ["hello", "m0", "m1", "m2"]
    since = {"epoch": first["epoch"], "offset": first["offset"]}
    history = call(one.port, "history", {"room": "team", "since": since, "limit": 2})[1]
    assert [p["text"] for p in history["publications"]] == ["m0", "m1"]
    assert (history["epoch"], history["offset"], history["reset"]) == (first["epoch"], top, False)
    latest = call(two.port, "history", {"room": "team", "limit": 1})[1]["publications"]
    assert latest == [{"offset": top, "text": "m2"}]
    # disconnect every session of a user, on both processes
    assert call(two.port, "disconnect", {"user": "bob"})[1] == {"count": 2, "processes": 2}
    assert [client.closed_with() for client in bob] == [4000, 4000]
    back = Client(two.port, "bob", resume=bob[0])  # on the other process: from Redis
    assert back.welcomes[0]["recovered"] is False
    back.close()
    carol.collect(0.1)
    assert carol.ws.close_code is None  # another user: untouched


def test_publish_is_refused_with_retry_after_while_redis_is_down(shared):
    redis, (one, _two) = shared
    redis.stop()
    for body in ({"room": "team", "text": "x"}, {"room": "team", "text": "x", "key": "k-2"}):
        status, answer, headers = wait_until(
            lambda b=body: (got := call(one.port, "publish", b))[0] == 503 and got,
            10,
            "503 from the API",
        )
        assert answer["error"] == "unavailable" and headers["Retry-After"] == "1"
    for method, body in [
        ("disconnect", {"user": "bob"}),
        ("presence", {"room": "team"}),
        ("history", {"room": "team"}),
        ("broadcast", {"rooms": ["team", "x"], "text": "x"}),
    ]:
        status, answer, headers = call(one.port, method, body)
        assert (status, headers["Retry-After"]) == (503, "1"), (method, answer)
    assert [p["error"] for p in answer["positions"]] == ["unavailable", "unavailable"]
