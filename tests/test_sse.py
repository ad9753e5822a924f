"""Server-Sent Events (simplew.sse, simplew._fast.sse; docs/protocol.md section 6).

Real servers on a loopback port, read by a raw-socket event-stream reader
(tests/sseclient.py) that parses the stream as a browser does.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import jwt as pyjwt
import pytest

from helpers import wait_until
from simplew import SimpleWServer
from sseclient import EventReader, positions

SECRET = "sse-test-secret-key-of-32-bytes!"
GOOD_ORIGIN = "http://good.example"


def rooms_hook(request: Any, claims: dict[str, Any] | None) -> list[str]:
    """Every room asked for; "secret" only for alice."""
    asked = [part[5:] for part in request.query_string.split("&") if part.startswith("room=")]
    alice = claims is not None and claims.get("sub") == "alice"
    return [room for room in asked if room != "secret" or alice]


async def async_hook(request: Any, claims: dict[str, Any] | None) -> list[str]:
    await asyncio.sleep(0)
    return ["b"]


@pytest.fixture(scope="module")
def server() -> Iterator[SimpleWServer]:
    """Recovery in memory, 5 publications of history per stream, 3 rooms per request."""
    server = SimpleWServer(
        "127.0.0.1",
        0,
        recovery=True,
        history_size=5,
        max_sse_rooms=3,
        sse_heartbeat=0.2,
        metrics=True,
        allowed_origins=[GOOD_ORIGIN],
    )
    server.set_token(SECRET, algorithms=["HS256"])
    server.add_sse_content("/events", rooms=rooms_hook)
    server.add_sse_content("/events-async", rooms=async_hook)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small() -> Iterator[SimpleWServer]:
    """No recovery, 2 connections per address, 64 KiB of output a client may lag."""
    server = SimpleWServer(
        "127.0.0.1", 0, max_connections_per_ip=2, max_write_buffer=65536, metrics=True
    )
    server.add_sse_content("/live")
    server.start()
    yield server
    server.stop()


def metric(server: SimpleWServer, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def opened(server: SimpleWServer, target: str, **headers: str) -> EventReader:
    """A stream past its ``retry`` block and its first id (admitted, in its rooms)."""
    reader = EventReader(server.port, target, headers)
    assert reader.status == 200, reader.body()
    first = reader.read(2)
    assert first[0]["retry"] == "2000"
    assert first[1]["id"] is not None
    return reader


def test_event_format_heartbeat_and_metrics(server: SimpleWServer) -> None:
    before = metric(server, "simplew_messages_out_total")
    reader = EventReader(server.port, "/events?room=lobby")
    assert reader.status == 200
    assert reader.headers["content-type"] == "text/event-stream"
    assert reader.headers["cache-control"] == "no-cache"
    assert "content-length" not in reader.headers
    retry, start = reader.read(2)
    assert retry == {"event": None, "data": None, "id": None, "comments": [], "retry": "2000"}
    assert set(positions(start["id"])) == {None, "lobby"}
    wait_until(lambda: len(server.room_sessions("lobby")) == 1, what="joined")
    assert metric(server, "simplew_connections") >= 1

    server.multicast_text("hello")
    server.multicast_text("line one\nline two\n", room="lobby")
    server.multicast_binary(b"\x00\xff binary", room="lobby")
    server.multicast_text("cr\rand crlf\r\nkept é", room="lobby")
    hello, lines, binary, raw = reader.events(4)
    assert (hello["event"], hello["data"]) == ("text", "hello")
    assert (lines["event"], lines["data"]) == ("text", "line one\nline two\n")
    assert (binary["event"], binary["data"]) == ("binary", "AP8gYmluYXJ5")
    assert raw["event"] == "text-json"
    assert json.loads(raw["data"]) == "cr\rand crlf\r\nkept é"
    # each id holds every stream's position: the broadcast one moved once, the room's 3 times
    (none_epoch, none_offset), (room_epoch, room_offset) = (
        positions(hello["id"])[None],
        positions(hello["id"])["lobby"],
    )
    assert positions(raw["id"]) == {
        None: (none_epoch, none_offset),
        "lobby": (room_epoch, room_offset + 3),
    }
    assert any("ping" in block["comments"] for block in reader.read(2, timeout=2))
    assert metric(server, "simplew_messages_out_total") >= before + 4
    reader.close()
    wait_until(lambda: not server.room_sessions("lobby"), what="left")


def test_rooms_hook_cap_and_token(server: SimpleWServer) -> None:
    asked = "/events?room=a&room=secret&room=b&room=c&room=d"
    reader = EventReader(server.port, asked)
    reader.read(1)  # retry
    (left,) = reader.events(1)
    assert left["event"] == "left"
    assert left["data"] == '["secret","d"]'  # refused by the hook; over max_sse_rooms (3)
    assert set(positions(left["id"])) == {None, "a", "b", "c"}
    token = pyjwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    alice = opened(server, f"/events?room=secret&token={token}")
    bearer = opened(server, "/events?room=secret", Authorization=f"Bearer {token}")
    later = opened(server, "/events-async?room=a&room=b")  # async hook: only "b"
    server.multicast_text("for secret", room="secret")
    server.multicast_text("for a", room="a")
    server.multicast_text("for b", room="b")
    assert [e["data"] for e in reader.events(2)] == ["for a", "for b"]
    assert [e["data"] for e in alice.events(1)] == ["for secret"]
    assert [e["data"] for e in bearer.events(1)] == ["for secret"]
    assert [e["data"] for e in later.events(1)] == ["for b"]
    for each in (reader, alice, bearer, later):
        each.close()
    # a stream ends when its token expires
    brief = pyjwt.encode({"sub": "alice", "exp": int(time.time()) + 1}, SECRET, "HS256")
    ending = opened(server, f"/events?room=secret&token={brief}")
    deadline = time.monotonic() + 5
    while not ending.ended:  # pings until the end
        assert time.monotonic() < deadline, "the stream outlived its token"
        ending.read(1)
    ending.close()


def test_resume_from_last_event_id(server: SimpleWServer) -> None:
    reader = opened(server, "/events?room=r1&room=r2")
    server.multicast_text("r1-1", room="r1")
    server.multicast_text("all-1")
    assert [e["data"] for e in reader.events(2)] == ["r1-1", "all-1"]
    last = reader.last_id
    reader.close()
    wait_until(lambda: not server.room_sessions("r1"), what="gone")
    for text, room in (("r1-2", "r1"), ("r2-1", "r2"), ("r1-3", "r1"), ("all-2", None)):
        server.multicast_text(text, room=room)
    # the header: the broadcast stream, then each room, each in order, once
    back = EventReader(server.port, "/events?room=r1&room=r2", {"Last-Event-ID": last})
    got = [e["data"] for e in back.events(4)]
    assert got == ["all-2", "r1-2", "r1-3", "r2-1"]
    server.multicast_text("r2-2", room="r2")
    assert [e["data"] for e in back.events(1)] == ["r2-2"]
    last = back.last_id
    back.close()
    wait_until(lambda: not server.room_sessions("r1"), what="gone")
    server.multicast_text("r1-4", room="r1")
    # the query parameter (a first load), then a malformed id: a fresh start
    query = EventReader(server.port, f"/events?room=r1&room=r2&lastEventId={last}")
    assert [e["data"] for e in query.events(1)] == ["r1-4"]
    fresh = opened(server, "/events?room=r1", **{"Last-Event-ID": "not-an-id!"})
    server.multicast_text("r1-5", room="r1")
    assert [e["data"] for e in fresh.events(1)] == ["r1-5"]
    assert [e["data"] for e in query.events(1)] == ["r1-5"]
    query.close()
    fresh.close()


def test_reset_when_history_is_gone(server: SimpleWServer) -> None:
    reader = opened(server, "/events?room=gone")
    server.multicast_text("first", room="gone")
    reader.events(1)
    last = reader.last_id
    reader.close()
    wait_until(lambda: not server.room_sessions("gone"), what="gone")
    for i in range(8):  # history_size is 5
        server.multicast_text(f"lost {i}", room="gone")
    back = EventReader(server.port, "/events?room=gone", {"Last-Event-ID": last})
    (reset,) = back.events(1)
    assert reset["event"] == "reset"
    epoch, offset = positions(last)["gone"]
    assert json.loads(reset["data"]) == {
        "room": "gone",
        "epoch": epoch,
        "offset": offset + 8,
    }
    assert positions(reset["id"])["gone"] == (epoch, offset + 8)
    server.multicast_text("after", room="gone")
    assert [e["data"] for e in back.events(1)] == ["after"]
    back.close()


def test_refusals(server: SimpleWServer) -> None:
    long_name = "x" * 256
    for target, status in (
        ("/events?room=", 400),
        (f"/events?room={long_name}", 400),
    ):
        reader = EventReader(server.port, target)
        assert reader.status == status
        assert b"room" in reader.body()
        reader.close()
    refused = EventReader(server.port, "/events", {"Origin": "http://evil.example"})
    assert refused.status == 403
    refused.close()
    allowed = opened(server, "/events", Origin=GOOD_ORIGIN)
    allowed.close()
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/events", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=5)
    assert error.value.code == 405


def test_live_slow_client_and_per_ip_cap(small: SimpleWServer) -> None:
    slow = EventReader(small.port, "/live?room=feed", rcvbuf=4096)
    reader = opened(small, "/live?room=feed")
    wait_until(lambda: len(small.room_sessions("feed")) == 2, what="both in the room")
    third = EventReader(small.port, "/live?room=feed")  # a third connection from 127.0.0.1
    assert third.status == 503
    third.close()
    chunk = "x" * 30000  # 9 MB in all: more than loopback socket buffers hold
    got: list[dict[str, Any]] = []
    reading = threading.Thread(target=lambda: got.extend(reader.events(300, timeout=20)))
    reading.start()
    for i in range(300):
        small.multicast_text(f"{i} {chunk}", room="feed")
        if i % 10 == 9:  # the reader keeps up; the slow one does not read at all
            wait_until(lambda i=i: reader.received >= i - 10, what="the reader keeps up")
    reading.join()
    assert [int(e["data"].split()[0]) for e in got] == list(range(300))
    # without recovery the ids count the stream's events, in an epoch nothing resumes
    assert positions(got[-1]["id"])["feed"] == ("-", 300)
    (endpoint,) = small.sse_endpoints  # /metrics is refused: both slots are taken
    wait_until(lambda: endpoint.dropped_slow_clients == 1, what="the slow client dropped")
    wait_until(lambda: len(small.room_sessions("feed")) == 1, what="the slow client gone")
    slow.close()
    reader.close()
    wait_until(lambda: metric(small, "simplew_dropped_slow_clients_total") == 1, what="metric")
