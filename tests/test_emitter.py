"""simplew.emitter: a backend without a server publishes into a running
deployment through Redis; a simplew.v2 client of the server receives every
publication once, in order, at the position the emitter returned."""

from __future__ import annotations

import asyncio

import pytest
import redis as redis_py

from apiclient import Client, call, make_server
from helpers import free_port, wait_until
from multiproc import RedisServer, redis_server_path
from simplew import SimpleWServer
from simplew.emitter import AsyncEmitter, Emitter
from simplew.recovery import log_id
from simplew.stream import Unavailable
from sseclient import EventReader, positions
from topology import Cluster, PlainShards
from v2client import V2Client

pytestmark = pytest.mark.skipif(redis_server_path() is None, reason="redis-server is not installed")


@pytest.fixture(scope="module")
def deployment():
    redis = RedisServer().start()
    server = SimpleWServer("127.0.0.1", 0, recovery=True, redis_url=redis.url, access_log=False)
    server.add_websocket_content("/ws", on_message=lambda session, data: None)
    server.on_connect(lambda session: session.join("news"))
    server.add_sse_content("/events")
    server.start()
    wait_until(lambda: server.backplane.ready, 10, "the server follows the streams")
    yield redis, server
    server.stop()
    redis.stop()


def test_sync_and_async_emitters_publish_to_the_clients_of_a_server(deployment):
    redis, server = deployment
    client = V2Client()
    client.connect(f"ws://127.0.0.1:{server.port}/ws")
    wait_until(lambda: server.room_sessions("news"), what="the client in the room")
    reader = EventReader(server.port, "/events?room=news")
    while not reader.last_id or "news" not in positions(reader.last_id):
        reader.read(1)  # the id-only block once the stream is in the room
    with Emitter(redis.url) as emitter:
        published = [emitter.publish(f"sync {n}", room="news") for n in range(3)]
        retried = emitter.publish("sync 2", room="news", key="k")
        assert emitter.publish("sync 2", room="news", key="k") == retried  # once
        everyone = emitter.publish(b"\x00binary")
        with pytest.raises(ValueError):
            emitter.publish("x", room="")  # refused before anything is stored

    async def from_asyncio() -> list:
        async with AsyncEmitter(redis.url) as emitter:
            mine = [await emitter.publish(f"async {n}", room="news") for n in range(2)]
            return mine + await emitter.broadcast("to both", ["news", "other"])

    async_positions = asyncio.run(from_asyncio())
    published += [retried, *async_positions[:3]]
    assert async_positions[3].room == "other" and async_positions[3].offset == 1
    epoch = published[0].epoch
    assert [p.offset for p in published] == list(range(1, 8))
    assert {p.epoch for p in published} == {epoch}
    client.collect(until_offset=7, room="news")
    client.collect(until_offset=everyone.offset, room=None)
    texts = ["sync 0", "sync 1", "sync 2", "sync 2", "async 0", "async 1", "to both"]
    assert client.room_pubs("news") == [(epoch, p.offset, t) for p, t in zip(published, texts)]
    assert [(e, o) for r, e, o, _t in client.pubs if r is None] == [
        (everyone.epoch, everyone.offset)
    ]
    # the WebSocket session has its record in Redis (to resume by id), the event stream
    # none: it resumes from its event ids
    store = server.recovery.store
    sessions = {type(s).__name__: s for s in server.room_sessions("news")}
    with redis_py.Redis.from_url(redis.url) as direct:
        ws_key = store.session_key(sessions["WebSocketConnection"].id)
        wait_until(lambda: direct.exists(ws_key), what="the WebSocket session's record")
        stream = sessions["SseConnection"]
        wait_until(  # written by the same sync as a record would be
            lambda: direct.hexists(store._presence_key("news"), log_id(stream.id)),
            what="the event stream's presence",
        )
        assert not direct.exists(store.session_key(stream.id))
    events = reader.events(8)  # the same publications, at the same positions, over SSE
    news = [(positions(e["id"])["news"], e["data"]) for e in events if e["event"] == "text"]
    assert news == [((epoch, p.offset), t) for p, t in zip(published, texts)]
    [binary] = [e for e in events if e["event"] == "binary"]
    assert positions(binary["id"])[None] == (everyone.epoch, everyone.offset)
    reader.close()
    client.close()
    with Emitter(f"redis://127.0.0.1:{free_port()}") as emitter, pytest.raises(Unavailable):
        emitter.publish("lost", room="news")  # no Redis there: refused, nothing stored


@pytest.mark.parametrize("topology", ["shards", "cluster"])
def test_emitter_and_api_on_shards_and_on_a_cluster(tmp_path, topology):
    """Two client-side shards, then a Cluster: the emitter's and the API's keyed
    publications go through the script on each room's shard (node); the API's
    command channel is on the broadcast stream's shard (sharded pub/sub on a
    Cluster)."""
    made = PlainShards(tmp_path, 2) if topology == "shards" else Cluster(tmp_path, 3, 0)
    with made as deployment:
        url = deployment.urls if topology == "shards" else deployment.url
        server = make_server(redis_url=url)
        try:
            wait_until(lambda: server._api.commands.connected, 10, "command channel")
            client = Client(server.port, "dave")
            rooms = ["c", "d", "e", "f"]  # on both shards
            for room in rooms:
                call(server.port, "join", {"room": room, "user": "dave"})
                client.joined(room)
            with Emitter(url) as emitter:
                for room in rooms:
                    keyed = {"room": room, "text": "api", "key": "once"}
                    first = call(server.port, "publish", keyed)[1]
                    assert call(server.port, "publish", keyed)[1] == {**first, "duplicate": True}
                    second = emitter.publish("emitted", room=room)
                    assert (second.epoch, second.offset) == (first["epoch"], first["offset"] + 1)
                    client.collect(until_offset=second.offset, room=room)
                    assert [t for _e, _o, t in client.room_pubs(room)] == ["api", "emitted"]
        finally:
            server.stop()
