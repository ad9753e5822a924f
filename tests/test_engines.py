"""simplew.engines: the room -> shard hash, the URLs, the keys, and an Engine on each
real topology (two plain shards, a Cluster of 3 masters + 3 replicas, a Sentinel
master): EVAL on a room's shard, pub/sub spread over shards and slots, and on the
Cluster the failover of a master."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
import redis.exceptions

from multiproc import redis_server_path
from simplew.engines import (
    Engine,
    fnv1a_64,
    jump_hash,
    parse_redis_urls,
    room_tag,
    shard_index,
)
from topology import Cluster, PlainShards, SentinelSetup, redis_cli_path

needs_redis = pytest.mark.skipif(
    redis_server_path() is None,
    reason="redis-server is not installed (apt-get install redis-server)",
)
needs_cli = pytest.mark.skipif(
    redis_cli_path() is None, reason="redis-cli is not installed (apt-get install redis-tools)"
)

# -- the hashes -------------------------------------------------------------------------


def test_fnv1a_64_reference_values():
    assert fnv1a_64(b"") == 0xCBF29CE484222325 == 14695981039346656037
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a_64(b"foobar") == 0x85944171F73967E8


def jump_reference(key: int, buckets: int) -> int:
    """The paper's definition (Lamping and Veach 2014, figure 1), written out again."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) % 2**64
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def test_jump_hash_vectors_and_definition():
    # the vectors of the Go implementation Centrifugo's sharding follows (dgryski/go-jump)
    for key, buckets, want in ((1, 1, 0), (42, 57, 43), (0xDEAD10CC, 1, 0), (0xDEAD10CC, 666, 361)):
        assert jump_hash(key, buckets) == want
    assert jump_hash(256, 1024) == 520
    rng = random.Random(7)
    for _ in range(2000):
        key, buckets = rng.getrandbits(64), rng.randint(1, 5000)
        assert jump_hash(key, buckets) == jump_reference(key, buckets)
    with pytest.raises(ValueError):
        jump_hash(1, 0)


def test_jump_hash_moves_keys_only_to_the_new_bucket():
    rng = random.Random(11)
    keys = [rng.getrandbits(64) for _ in range(3000)]
    for buckets in range(1, 40):
        for key in keys:
            before, after = jump_hash(key, buckets), jump_hash(key, buckets + 1)
            assert 0 <= before < buckets
            assert after in (before, buckets)


def test_jump_hash_balance():
    rng = random.Random(3)
    for buckets in (2, 3, 10):
        counts = [0] * buckets
        for _ in range(100_000):
            counts[jump_hash(rng.getrandbits(64), buckets)] += 1
        mean = 100_000 / buckets
        assert max(abs(c - mean) for c in counts) < 0.05 * mean, counts


def test_shard_index_is_jump_of_fnv():
    for room in ("chat", "news:1", "ü-room", "", "x" * 300):
        for count in (1, 2, 3, 16):
            assert shard_index(room, count) == jump_hash(fnv1a_64(room.encode()), count)
    rooms = [f"room-{i}" for i in range(2000)]
    assert {shard_index(r, 4) for r in rooms} == {0, 1, 2, 3}


# -- URLs and keys ----------------------------------------------------------------------


def test_parse_redis_urls_forms():
    assert parse_redis_urls("redis://h:1") == ["redis://h:1"]
    assert parse_redis_urls("redis://h:1, rediss://h:2/3,unix:///tmp/r.sock") == [
        "redis://h:1",
        "rediss://h:2/3",
        "unix:///tmp/r.sock",
    ]
    assert parse_redis_urls(["redis://a:1,redis://b:1", "redis://c:1"]) == [
        "redis://a:1",
        "redis://b:1",
        "redis://c:1",
    ]
    assert parse_redis_urls("redis+cluster://h1:7000, h2:7001") == [
        "redis+cluster://h1:7000,h2:7001"
    ]
    assert parse_redis_urls(["redis+sentinel://:pw@h1:1,h2:2/main/1"]) == [
        "redis+sentinel://:pw@h1:1,h2:2/main/1"
    ]


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "no Redis URL"),
        ([], "no Redis URL"),
        (" , ", "no Redis URL"),
        ("redis+cluster://h:1,redis://h:2", "goes alone"),
        (["redis://h:2", "redis+cluster://h:1"], "goes alone"),
        (["redis+sentinel://h:1/m", "redis://:secret@h:2"], "goes alone"),
        ("redis://h:1,redis://H:1/0", "listed twice"),
        ("redis://:secret@h:1,redis://:secret@h:1", "listed twice"),
        ("http://h:1", "unknown scheme"),
        ("h:6379", "not a URL"),
        ("redis+cluster://h", "host:port"),
        ("redis+cluster://:secret@h:1/0", "no database"),
        ("redis+cluster://h:1?x=1", "no query"),
        ("redis+sentinel://:secret@h:1", "service_name"),
        ("redis://:secret@h:99999", "out of range"),
        ("redis://:secret@h:1/x", "database must be a number"),
        ("redis://", "no host"),
        ("unix://", "socket path"),
    ],
)
def test_parse_redis_urls_errors(value, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_redis_urls(value)
    assert "secret" not in str(info.value)


def test_keys_and_tags():
    assert Engine.key("chat", "meta") == "simplew:{chat}:meta"
    assert Engine.key(None, "stream") == "simplew:{simplew:all}:stream"
    assert Engine.key("simplew:all", "stream") == "simplew:{simplew%3Aall}:stream"
    assert Engine.key("a{b}c", "pubs") == "simplew:{a%7Bb%7Dc}:pubs"
    names = ["a{b", "a%7Bb", "a%257Bb", "{", "}", "%", "%7B", "simplew:x", "simplew%3Ax", ""]
    tags = [room_tag(n) for n in names] + [room_tag(None)]
    assert len(set(tags)) == len(tags)
    for tag in tags:
        assert "{" not in tag and "}" not in tag
    digest = "0123456789abcdef" * 4
    assert Engine.session_key(digest) == f"simplew:{{s:0123456789abcdef}}:session:{digest}"
    with pytest.raises(ValueError):
        Engine.session_key("ABC")


def test_engine_kinds():
    single = Engine.from_urls("redis://h:1")
    assert (single.kind, single.size, single.publish_command) == ("single", 1, "PUBLISH")
    shards = Engine.from_urls("redis://h:1,redis://:secret@h:2,redis://h:3")
    assert (shards.kind, shards.size) == ("shards", 3)
    assert "secret" not in shards.describe() and "h:2" in shards.describe()
    assert shards.shard_of("chat") == shard_index("chat", 3)
    assert shards.shard_of(None) == shard_index("simplew:all", 3)
    digest = "fe" * 32
    assert shards.session_shard(digest) == shard_index(digest, 3)
    with pytest.raises(IndexError):
        shards.client(3)
    cluster = Engine.from_urls("redis+cluster://:secret@h:1,h:2")
    assert (cluster.kind, cluster.size, cluster.publish_command) == ("cluster", 1, "SPUBLISH")
    assert cluster.shard_of("chat") == cluster.shard_of(None) == 0
    assert "secret" not in cluster.describe()
    sentinel = Engine.from_urls(["redis+sentinel://h:1/main"])
    assert (sentinel.kind, sentinel.size, sentinel.shard_of("x")) == ("sentinel", 1, 0)


# -- on real topologies -----------------------------------------------------------------

# a batch as the stream's script makes it: two keys of the room and its channel
SCRIPT = """
local top = redis.call('HINCRBY', KEYS[1], 'top', 1)
redis.call('XADD', KEYS[2], top .. '-1', 'r', ARGV[1])
if ARGV[2] ~= '' then redis.call(ARGV[2], KEYS[3], ARGV[1]) end
return top
"""


def room_keys(engine: Engine, room: str) -> list[str]:
    return [engine.key(room, "meta"), engine.key(room, "stream"), engine.key(room, "pubs")]


async def collect(subscribers: list[Any], want: int, timeout: float = 5.0) -> list[tuple]:
    got: list[tuple] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for subscriber in subscribers:
            message = await subscriber.get_message(0.01)
            if message is not None:
                assert message["type"] == "message", message
                got.append((message["channel"].decode(), message["data"].decode()))
    return got


async def exercise(engine: Engine, publisher: Engine) -> dict[int, int]:
    """EVAL for 200 rooms on their shards; 50 room channels subscribed, published to
    (directly and from Lua), received; unsubscribed, no more. Rooms per shard."""
    rooms = [f"room-{i}" for i in range(200)]
    per_shard: dict[int, int] = {}
    for room in rooms:
        shard = engine.shard_of(room)
        per_shard[shard] = per_shard.get(shard, 0) + 1
        client = engine.client(shard)
        assert await client.eval(SCRIPT, 3, *room_keys(engine, room), "first", "") == 1
        assert await client.hget(engine.key(room, "meta"), "top") == b"1"
        assert await client.xlen(engine.key(room, "stream")) == 1
        for other in range(engine.size):
            if other != shard:
                assert not await engine.client(other).exists(engine.key(room, "meta"))

    listened = rooms[:50]
    subscribers = [engine.subscriber(shard) for shard in range(engine.size)]
    for room in listened:
        await subscribers[engine.shard_of(room)].subscribe(engine.key(room, "pubs"))
    await asyncio.sleep(0.1)
    want = set()
    for i, room in enumerate(listened):
        client = publisher.client(publisher.shard_of(room))
        channel = engine.key(room, "pubs")
        text = f"pub-{room}"
        if i % 2:
            receivers = await client.execute_command(publisher.publish_command, channel, text)
        else:
            await client.eval(SCRIPT, 3, *room_keys(engine, room), text, publisher.publish_command)
            receivers = 1
        assert receivers == 1, (room, receivers)
        want.add((channel, text))
    got = await collect(subscribers, len(want))
    assert sorted(got) == sorted(want)

    for room in listened:
        await subscribers[engine.shard_of(room)].unsubscribe(engine.key(room, "pubs"))
    assert await collect(subscribers, 1, 0.3) == []  # reads the confirmations
    for room in listened[:10]:
        client = publisher.client(publisher.shard_of(room))
        channel = engine.key(room, "pubs")
        assert await client.execute_command(publisher.publish_command, channel, "late") == 0
    assert await collect(subscribers, 1, 0.3) == []
    for subscriber in subscribers:
        await subscriber.aclose()
    return per_shard


@needs_redis
def test_plain_shards(tmp_path):
    async def main(urls: list[str]) -> None:
        engine, publisher = Engine.from_urls(urls), Engine.from_urls(",".join(urls))
        try:
            assert (engine.kind, engine.size) == ("shards", 2)
            per_shard = await exercise(engine, publisher)
            assert sorted(per_shard) == [0, 1] and min(per_shard.values()) > 60, per_shard
        finally:
            await engine.aclose()
            await publisher.aclose()

    with PlainShards(tmp_path, 2) as shards:
        asyncio.run(main(shards.urls))
        assert shards.cpu_seconds(0) > 0


@needs_redis
def test_sentinel_master(tmp_path):
    async def main(url: str) -> None:
        engine, publisher = Engine.from_urls(url), Engine.from_urls([url])
        try:
            assert engine.kind == "sentinel"
            assert await exercise(engine, publisher) == {0: 200}
        finally:
            await engine.aclose()
            await publisher.aclose()

    with SentinelSetup(tmp_path) as setup:
        asyncio.run(main(setup.url))


@needs_redis
@needs_cli
def test_cluster_and_failover(tmp_path):
    async def main(cluster: Cluster) -> None:
        engine, publisher = Engine.from_urls(cluster.url), Engine.from_urls(cluster.url)
        try:
            assert (engine.kind, engine.size) == ("cluster", 1)
            # the 50 channels are on every master: three per-node connections
            masters = {cluster.master_for_key(engine.key(f"room-{i}", "pubs")) for i in range(50)}
            assert len(masters) == 3
            assert await exercise(engine, publisher) == {0: 200}

            room = "room-7"
            channel = engine.key(room, "pubs")
            subscriber = engine.subscriber(0)
            await subscriber.subscribe(channel)
            client = engine.client(0)
            victim = cluster.master_for_key(channel)
            await asyncio.to_thread(cluster.kill_master, victim)
            assert cluster.master_for_key(channel) != victim
            # the old subscriber's connection to the dead node fails on read
            failed = None
            deadline = time.monotonic() + 5
            while failed is None and time.monotonic() < deadline:
                try:
                    await subscriber.get_message(0.1)
                except Exception as error:
                    failed = error
            assert isinstance(failed, redis.exceptions.ConnectionError), repr(failed)
            await subscriber.aclose()

            # a new subscriber finds the promoted replica; the same clients follow too
            subscriber = engine.subscriber(0)
            await subscriber.subscribe(channel)
            deadline = time.monotonic() + 15
            received = None
            while received is None:
                assert time.monotonic() < deadline, "no delivery after the failover"
                try:
                    await publisher.client(0).execute_command("SPUBLISH", channel, "after")
                except Exception:
                    await asyncio.sleep(0.1)
                    continue
                received = await subscriber.get_message(0.5)
            assert (received["channel"], received["data"]) == (channel.encode(), b"after")
            assert engine.client(0) is client
            top = await client.eval(SCRIPT, 3, *room_keys(engine, room), "again", "SPUBLISH")
            assert top == 2  # the replica had the room's first write (seconds before)
            message = await subscriber.get_message(2.0)
            assert message is not None and message["data"] == b"again"
        finally:
            await engine.aclose()
            await publisher.aclose()

    with Cluster(tmp_path, masters=3, replicas=1, node_timeout_ms=1000) as cluster:
        asyncio.run(main(cluster))
        assert all(cluster.cpu_seconds(port) > 0 for port in cluster.alive)
