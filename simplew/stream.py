"""The streams and the sessions of a deployment, in Redis.

``SimpleWServer(recovery=True, redis_url=...)``: every process (workers,
hosts) given the same Redis deployment (:class:`simplew.engines.Engine`: one
instance, client-side shards, a Cluster or a Sentinel master) shares every
stream. A stream is a room's (or the broadcast stream's, room None); all its
keys carry the room's hash tag, so they live on one shard and in one slot:

- ``simplew:{R}:meta``: a hash with the stream's ``epoch`` and ``top`` offset;
- ``simplew:{R}:stream``: a Redis Stream of the last ``history_size``
  publications, entry id ``<offset>-1``, field ``r`` = the publication
  (:func:`simplew.backplane.encode_record`);
- ``simplew:{R}:pubs``: the channel of its publications, ``epoch \\n first
  offset \\n records`` (``SPUBLISH`` on a Cluster);
- ``simplew:{R}:presence``: a hash of the sessions in the room on every
  process: public id (:func:`simplew.recovery.log_id` of the session id) ->
  ``[expiry (Unix time), user]`` as JSON.

Every key of a stream expires ``history_ttl`` seconds after its last
publication. A session's record (its rooms and user, JSON) lives on the shard
of its id's digest (:meth:`simplew.engines.Engine.session_key`), with the
recovery window as TTL, refreshed while it is connected.

One Lua script per room and batch reads the epoch (creating it, and dropping
any stale stream, when the meta hash is gone), advances ``top``, appends each
publication under its offset and publishes the batch on the room's channel.
Offsets, history and live delivery can therefore never disagree.

*Interest*: a process follows (subscribes to, and mirrors in its
:class:`~simplew._fast.streams.Streams`) the broadcast stream, and a room's
stream only while one of its sessions is in the room, or joining it, or being
admitted into it; it stops ``linger`` seconds after the last one left (a
rejoin meanwhile keeps it). So a process receives nothing of rooms it has no
client in. Following a room: SUBSCRIBE, then load the stream's tail (what
arrives meanwhile waits), then :meth:`simplew.recovery.Recovery.room_ready`.

Every process delivers publications from the channel only, its own included,
so every client sees a stream in offset order. A hole in the offsets (a lost
channel message) is filled from the Redis Stream before anything later is
delivered. When a stream in Redis is not the one mirrored (another epoch:
its keys were lost; or a ``top`` below the one mirrored: a failover to a
replica that lacked publications already delivered), the process moves that
stream to its new position, making a new epoch in the second case (one Lua
script, once however many processes race), and sends its clients in that
room a ``reset``: an ``(epoch, offset)`` never names two publications.

Each shard has its own connection loop: a shard that is down stops only the
streams on it (their publications wait, up to ``max_pending`` per shard), and
the others go on. Connections that need a stopped shard to be admitted wait
outside the hub until it answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from simplew.backplane import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    COMMAND_TIMEOUT,
    MAX_BATCH,
    MAX_BATCH_BYTES,
    _close_quietly,
    _describe,
    cancel_quietly,
    decode_records,
    encode_record,
    until_either_fails,
)
from simplew.engines import Engine
from simplew.recovery import Ended, Recovery, Resume, digest, log_id, new_epoch, pub_message

log = logging.getLogger("simplew.stream")

MAX_PENDING = 100_000  # publications waiting for one shard; past it they are refused
SYNC_INTERVAL = 1.0  # seconds between two writes of session and presence changes
PRESENCE_TTL = 10.0  # a presence entry not refreshed for this long is gone
FETCH_CHUNK = 1000  # Stream entries per XRANGE
LOAD_CONCURRENCY = 16  # streams whose tails are read at once (a resume in many rooms)
LINGER = 5.0  # seconds a room stays followed after its last local session left
SUBSCRIBE_CHUNK = 500  # channels per SUBSCRIBE command
RETRY_AFTER = 1  # seconds, the Retry-After of an Unavailable
WAIT_TIMEOUT_MS = 1000  # one WAIT for replicas (wait_replicas), then another


async def gather_bounded(calls: list[Any], limit: int = LOAD_CONCURRENCY) -> list[Any]:
    """The results of ``calls`` (coroutines), at most ``limit`` running at once (a
    connection each: a Cluster node's pool is bounded); the first failure is raised
    once all ended."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Any) -> Any:
        async with gate:
            return await call

    outcomes = await asyncio.gather(*(one(call) for call in calls), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            for call in calls:
                call.close()  # those never started
            raise outcome
    return outcomes


class Unavailable(Exception):
    """A publication cannot be stored now (its Redis shard is unreachable, or too
    many wait for it): an HTTP answer is 503 with ``Retry-After``."""

    retry_after = RETRY_AFTER


# The epoch of the stream; a fresh one (and no stale entries) when the meta hash is gone.
_EPOCH = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
"""

# ARGV: fresh epoch, maxlen, ttl (s), publish command ('' : the caller publishes once
# replicas have it), channel, records...
# Each entry keeps its record (r) and the Redis time it was stored (t, seconds), so that
# a process loading a stream's tail skips what is older than history_ttl.
_PUBLISH = (
    _EPOCH
    + """
local n = #ARGV - 5
local top = redis.call('HINCRBY', KEYS[1], 'top', n)
local first = top - n + 1
local now = redis.call('TIME')[1]
for i = 1, n do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], string.format('%d-1', first + i - 1),
             'r', ARGV[i + 5], 't', now)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then
  redis.call(ARGV[4], ARGV[5], epoch .. '\\n' .. string.format('%d', first) .. '\\n'
             .. table.concat(ARGV, '', 6))
end
return {epoch, first}
"""
)

# A batch over several rooms of one instance (not a Cluster: its keys span slots), in one
# call. KEYS: meta and stream of each room. ARGV: maxlen, ttl (s), publish command ('':
# the caller publishes once replicas have it), then per room: a fresh epoch, its channel,
# its count n, its n records. Returns epoch and first offset of each room, in order.
_PUBLISH_ROOMS = """
local maxlen, ttl, command = ARGV[1], ARGV[2], ARGV[3]
local now = redis.call('TIME')[1]
local out = {}
local a = 4
for r = 1, #KEYS / 2 do
  local meta, stream = KEYS[2 * r - 1], KEYS[2 * r]
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = ARGV[a]
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'top', 0)
  end
  local n = tonumber(ARGV[a + 2])
  local top = redis.call('HINCRBY', meta, 'top', n)
  local first = top - n + 1
  for i = 1, n do
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, string.format('%d-1', first + i - 1),
               'r', ARGV[a + 2 + i], 't', now)
  end
  redis.call('EXPIRE', meta, ttl)
  redis.call('EXPIRE', stream, ttl)
  if command ~= '' then
    redis.call(command, ARGV[a + 1], epoch .. '\\n' .. string.format('%d', first) .. '\\n'
               .. table.concat(ARGV, '', a + 3, a + 2 + n))
  end
  out[#out + 1] = epoch
  out[#out + 1] = first
  a = a + 3 + n
end
return out
"""

_META = (
    _EPOCH
    + """
return {epoch, redis.call('HGET', KEYS[1], 'top')}
"""
)

# The stream lost publications a process had mirrored (a failover to a replica
# that had not received them): a fresh epoch, once, whichever process sees it first.
# ARGV: the epoch seen, the top mirrored, a fresh epoch.
_NEW_EPOCH = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local top = tonumber(redis.call('HGET', KEYS[1], 'top') or '0')
if not epoch or (epoch == ARGV[1] and top < tonumber(ARGV[2])) then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
return {epoch, redis.call('HGET', KEYS[1], 'top')}
"""


class Followed:
    """A stream this process follows (loop thread)."""

    __slots__ = (
        "room",
        "shard",
        "channel",
        "ready",
        "subscribed",
        "confirming",
        "buffer",
        "linger",
    )

    def __init__(self, room: str | None, shard: int, channel: str) -> None:
        self.room = room
        self.shard = shard
        self.channel = channel
        self.ready = False  # the mirror continues the stream in Redis
        self.subscribed = False
        self.confirming = False  # SUBSCRIBE sent, its confirmation not read yet
        self.buffer: list[bytes] | None = None  # channel messages that came while loading
        self.linger: asyncio.TimerHandle | None = None


class _Admission:
    """A connection waiting to be admitted: its ended session (read from Redis) and
    the streams it needs."""

    __slots__ = ("conn", "resume", "asked", "admit", "ended", "read", "rooms")

    def __init__(
        self, conn: Any, resume: Resume | None, asked: bool, admit: Callable[..., Any]
    ) -> None:
        self.conn = conn
        self.resume = resume
        self.asked = asked
        self.admit = admit
        self.ended: Ended | None = None
        self.read = resume is None  # the ended session was read (or none is needed)
        self.rooms: frozenset[str] = frozenset()


class Shard:
    """One Redis shard: its connection loop, its publications, its subscriptions."""

    def __init__(self, stream: RedisStream, index: int) -> None:
        self.stream = stream
        self.index = index
        self.connected = False
        self.pending: deque[tuple[str | None, bytes, asyncio.Future[Any] | None]] = deque()
        self.commands: deque[tuple[str, tuple[Any, ...]]] = deque()  # session/presence writes
        self.session_reads: list[_Admission] = []  # GETDEL of ended sessions on this shard
        self.to_subscribe: set[str | None] = set()  # rooms to (re)subscribe and load
        self.to_unsubscribe: set[str] = set()  # channels to drop
        self.to_load: set[str | None] = set()  # rooms to catch up from the Stream
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.outages = 0
        self.published = 0
        self.batches = 0

    def wake(self) -> None:
        self.wakeup.set()

    async def run(self) -> None:
        stream = self.stream
        backoff = BACKOFF_MIN
        while not stream.closed:
            subscriber = None
            try:
                client = stream.engine.client(self.index)
                subscriber = stream.engine.subscriber(self.index)
                await self._connect(client, subscriber)
                backoff = BACKOFF_MIN
                await until_either_fails(self._read(subscriber), self._write(client, subscriber))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not stream.closed:
                    if self.connected or self.outages == 0:
                        self.outages += 1
                        log.warning(
                            "Redis stream: %s shard %d of %s: %s; its streams wait until "
                            "it is back",
                            "lost" if self.connected else "cannot reach",
                            self.index,
                            stream.engine.describe(),
                            _describe(exc),
                        )
                    self._down()
            finally:
                await _close_quietly(subscriber)
            if stream.closed:
                break
            await asyncio.sleep(backoff * (1 + random.random() / 4))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _down(self) -> None:
        self.connected = False
        for followed in self.stream.followed_on(self.index):
            followed.ready = False
            followed.subscribed = False
            followed.confirming = False
            followed.buffer = None
            self.to_subscribe.add(followed.room)
        self.to_unsubscribe.clear()

    async def _connect(self, client: Any, subscriber: Any) -> None:
        """Subscribe to every followed stream of this shard, then load them."""
        await client.ping()
        rooms = [f.room for f in self.stream.followed_on(self.index)]
        self.to_subscribe.difference_update(rooms)
        followed = await self._subscribe(subscriber, rooms)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + COMMAND_TIMEOUT
        while any(item.confirming for item in followed):
            # nothing reads the subscriber yet: read the confirmations here
            message = await subscriber.get_message(
                timeout=max(0.0, deadline - loop.time()), confirmations=True
            )
            if message is None:
                raise TimeoutError("no answer to SUBSCRIBE")
            self._on_message(message)
        self.to_load.clear()
        await self.stream.load(client, [item for item in followed if item.buffer is not None])
        if not self.connected and self.outages:
            log.info("Redis stream: shard %d is back", self.index)
        self.connected = True

    async def _subscribe(self, subscriber: Any, rooms: list[str | None]) -> list[Followed]:
        """SUBSCRIBE the channels of ``rooms``; each is loaded once its confirmation
        came (what comes meanwhile waits in its buffer)."""
        stream = self.stream
        followed = [stream.rooms[r] for r in rooms if r in stream.rooms]
        for item in followed:
            item.buffer = []
            item.ready = False
            item.confirming = True
        for i in range(0, len(followed), SUBSCRIBE_CHUNK):
            chunk = followed[i : i + SUBSCRIBE_CHUNK]
            await subscriber.subscribe(*(item.channel for item in chunk))
            for item in chunk:
                item.subscribed = True
        return followed

    # -- reading

    async def _read(self, subscriber: Any) -> None:
        on_message = self._on_message
        while not self.stream.closed:  # as _write
            message = await subscriber.get_message(
                timeout=1.0 if subscriber.channels else 0.02, confirmations=True
            )
            if message is not None:
                on_message(message)

    def _on_message(self, message: dict[str, Any]) -> None:
        stream = self.stream
        channel = message["channel"]
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "surrogateescape")
        followed = stream.by_channel.get(channel)
        if followed is None:
            return  # a room given up meanwhile
        if message["type"] == "subscribe":
            if followed.confirming:
                followed.confirming = False
                self.to_load.add(followed.room)  # subscribed: now load what came before
                self.wake()
            return
        data = message["data"]
        if followed.buffer is not None:
            followed.buffer.append(data)  # it is being loaded
            return
        if not stream.apply(followed, data):
            # a hole (or another epoch): the writer loads the stream, then this
            followed.ready = False
            followed.buffer = [data]
            self.to_load.add(followed.room)
            self.wake()

    async def _change_subscriptions(self, client: Any, subscriber: Any) -> None:
        stream = self.stream
        if self.to_unsubscribe:
            channels = list(self.to_unsubscribe)
            self.to_unsubscribe.clear()
            for i in range(0, len(channels), SUBSCRIBE_CHUNK):
                await subscriber.unsubscribe(*channels[i : i + SUBSCRIBE_CHUNK])
        if self.to_subscribe:
            rooms = [r for r in self.to_subscribe if r in stream.rooms]
            self.to_subscribe.clear()
            await self._subscribe(subscriber, rooms)
        if self.to_load:
            followed = [
                stream.rooms[r]
                for r in self.to_load
                if r in stream.rooms and not stream.rooms[r].confirming
            ]
            self.to_load.clear()
            if followed:
                await stream.load(client, followed)

    # -- writing

    async def _write(self, client: Any, subscriber: Any) -> None:
        stream = self.stream
        publish = client.register_script(_PUBLISH)
        publish_rooms = client.register_script(_PUBLISH_ROOMS)
        wakeup = self.wakeup
        loop = asyncio.get_running_loop()
        next_sync = 0.0
        # until close(): it sets ``closed``, then cancels run(); on Python 3.11 a
        # cancellation can be lost (asyncio.wait_for swallows one that comes as its
        # event is set), and a loop that never ends kept the process from stopping
        while not stream.closed:
            if self.to_subscribe or self.to_unsubscribe or self.to_load:
                await self._change_subscriptions(client, subscriber)
                continue
            if self.session_reads:
                await self._read_sessions(client)
            if self.pending:
                await self._publish_batch(client, publish, publish_rooms)
                continue
            if self.index == 0 and loop.time() >= next_sync:
                stream.sync_sessions()
                next_sync = loop.time() + stream.sync_interval
            if self.commands:
                pipe = client.pipeline(transaction=False)
                count = 0
                while self.commands and count < 1000:
                    command, args = self.commands.popleft()
                    pipe.execute_command(command, *args)
                    count += 1
                await pipe.execute()
                continue
            wakeup.clear()
            timeout = max(0.01, next_sync - loop.time()) if self.index == 0 else 1.0
            try:
                await asyncio.wait_for(wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def _publish_batch(self, client: Any, publish: Any, publish_rooms: Any) -> None:
        stream = self.stream
        pending = self.pending
        batch = [pending.popleft()]
        size = len(batch[0][1])
        while pending and len(batch) < MAX_BATCH and size + len(pending[0][1]) <= MAX_BATCH_BYTES:
            batch.append(pending.popleft())
            size += len(batch[-1][1])
        groups: dict[str | None, list[tuple[bytes, asyncio.Future[Any] | None]]] = {}
        for room, record, future in batch:
            groups.setdefault(room, []).append((record, future))
        engine = stream.engine
        replicas = stream.wait_replicas
        command = "" if replicas else engine.publish_command
        ttl = stream.ttl_seconds
        maxlen = stream.recovery.streams.history_size or 1

        def args(room: str | None, items: list[tuple[bytes, Any]]) -> list[Any]:
            return [
                new_epoch(),
                maxlen,
                ttl,
                command,
                engine.key(room, "pubs"),
                *(record for record, _ in items),
            ]

        try:
            if len(groups) == 1 and not replicas:
                room, items = next(iter(groups.items()))
                keys = [engine.key(room, "meta"), engine.key(room, "stream")]
                results = [await publish(keys=keys, args=args(room, items))]
            elif engine.kind == "cluster":
                # redis-py refuses scripts in a Cluster pipeline: one call per room, at once
                # (each goes to the node of its room's slot; rooms have no order between them)
                results = await gather_bounded(
                    [
                        publish(
                            keys=[engine.key(room, "meta"), engine.key(room, "stream")],
                            args=args(room, items),
                        )
                        for room, items in groups.items()
                    ]
                )
            else:
                # one instance: the rooms of the batch in one script call
                keys = []
                argv: list[Any] = [maxlen, ttl, command]
                for room, items in groups.items():
                    keys += (engine.key(room, "meta"), engine.key(room, "stream"))
                    argv += (new_epoch(), engine.key(room, "pubs"), len(items))
                    argv.extend(record for record, _ in items)
                if replicas:
                    pipe = client.pipeline(transaction=False)
                    await publish_rooms(keys=keys, args=argv, client=pipe)
                    pipe.execute_command("WAIT", replicas, WAIT_TIMEOUT_MS)
                    flat, acknowledged = await pipe.execute()
                else:
                    flat = await publish_rooms(keys=keys, args=argv)
                results = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
                if replicas:
                    await stream.replicated(client, acknowledged)
                    pipe = client.pipeline(transaction=False)
                    for (room, items), result in zip(groups.items(), results):
                        message = b"%s\n%d\n%s" % (
                            result[0],
                            int(result[1]),
                            b"".join(record for record, _ in items),
                        )
                        pipe.execute_command(
                            engine.publish_command, engine.key(room, "pubs"), message
                        )
                    await pipe.execute()
        except BaseException:
            pending.extendleft(reversed(batch))  # sent again when the shard is back
            raise
        for (_room, items), result in zip(groups.items(), results):
            epoch = result[0].decode() if isinstance(result[0], bytes) else str(result[0])
            first = int(result[1])
            for i, (_record, future) in enumerate(items):
                if future is not None and not future.done():
                    future.set_result((epoch, first + i))
        self.published += len(batch)
        self.batches += 1

    async def _read_sessions(self, client: Any) -> None:
        """Read (and take: GETDEL) the ended sessions waiting connections ask for."""
        reads, self.session_reads = self.session_reads, []
        pipe = client.pipeline(transaction=False)
        for admission in reads:
            assert admission.resume is not None
            pipe.execute_command("GETDEL", self.stream.session_key(admission.resume.session))
        try:
            values = await pipe.execute()
        except BaseException:
            self.session_reads[:0] = reads  # they wait on, for the next connection
            raise
        for admission, value in zip(reads, values):
            admission.read = True
            if value is not None:
                assert admission.resume is not None
                try:
                    record = json.loads(value)
                    admission.ended = Ended(
                        admission.resume.session,
                        record.get("rooms") or (),
                        record.get("user"),
                        0.0,
                    )
                except (ValueError, TypeError, AttributeError):
                    admission.ended = None
            self.stream.admission_progress(admission)


class RedisStream:
    """The Redis side of :class:`~simplew.recovery.Recovery` (loop thread only)."""

    def __init__(
        self,
        urls: str | list[str],
        recovery: Recovery,
        *,
        max_pending: int = MAX_PENDING,
        sync_interval: float = SYNC_INTERVAL,
        linger: float = LINGER,
        history_ttl: float = 300.0,
        wait_replicas: int = 0,
    ) -> None:
        self.engine = Engine.from_urls(urls)
        if wait_replicas and self.engine.kind == "cluster":
            raise ValueError("wait_replicas is not supported with a Redis Cluster")
        self.wait_replicas = wait_replicas
        self.url = self.engine.describe()
        self.recovery = recovery
        self.hub = recovery.hub
        self.max_pending = max_pending
        self.sync_interval = sync_interval
        self.linger = linger
        self.history_ttl = history_ttl
        self.ttl_seconds = max(1, int(history_ttl + 0.999))
        self.closed = False
        self.shards = [Shard(self, i) for i in range(self.engine.size)]
        self.rooms: dict[str | None, Followed] = {}
        self.by_channel: dict[str, Followed] = {}
        self._admissions: list[_Admission] = []
        self._written: dict[str, tuple[frozenset[str], float]] = {}  # id -> (rooms, when)
        # counters
        self.received = 0
        self.dropped = 0  # publications refused: their shard had max_pending waiting
        self.refetched = 0  # publications fetched from a Stream to fill a hole
        self.resets = 0  # streams moved to another epoch here
        self.epoch_changes = 0  # new epochs this process made: Redis lost publications
        self.started_following = 0  # times a stream started being followed
        self.stopped_following = 0
        self.replica_waits = 0  # batches that waited past WAIT_TIMEOUT_MS for replicas

    # -- the loop-thread API ------------------------------------------------------

    @property
    def connected(self) -> bool:
        return all(shard.connected for shard in self.shards)

    @property
    def ready(self) -> bool:
        followed = self.rooms.get(None)
        return followed is not None and followed.ready

    @property
    def followed(self) -> int:
        return len(self.rooms)

    @property
    def outages(self) -> int:
        return sum(shard.outages for shard in self.shards)

    @property
    def published(self) -> int:
        return sum(shard.published for shard in self.shards)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.hub.on_room_close = self._room_closed
        self.hub.on_room_open = self._room_opened
        self._follow(None)  # the broadcast stream, always
        for shard in self.shards:
            shard.wakeup = asyncio.Event()
            shard.task = loop.create_task(shard.run(), name=f"simplew-stream-{shard.index}")

    def publish(
        self, opcode: int, payload: bytes, room: str | None, wait: bool = False
    ) -> asyncio.Future[Any] | None:
        """Queue one publication; it is delivered when Redis gave it its position.
        ``wait``: return a future of that ``(epoch, offset)``, or raise
        :class:`Unavailable` when it cannot be stored now."""
        if self.closed:
            if wait:
                raise Unavailable("the server is stopping")
            return None
        shard = self.shards[self.engine.shard_of(room)]
        if len(shard.pending) >= self.max_pending or (wait and not shard.connected):
            if wait:
                raise Unavailable(f"Redis shard {shard.index} cannot store it now")
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning(
                    "Redis stream: %d publications wait for shard %d; %d dropped so far",
                    len(shard.pending),
                    shard.index,
                    self.dropped,
                )
            return None
        future = asyncio.get_running_loop().create_future() if wait else None
        shard.pending.append((room, encode_record(opcode, room, payload), future))
        shard.wake()
        return future

    # -- interest -------------------------------------------------------------------

    def follows(self, room: str) -> bool:
        """Whether ``room``'s stream is mirrored here, up to now."""
        followed = self.rooms.get(room)
        return followed is not None and followed.ready

    def follow(self, room: str | None) -> None:
        """Follow ``room``'s stream; Recovery.room_ready(room) once it is loaded."""
        followed = self.rooms.get(room)
        if followed is not None:
            if followed.linger is not None:
                followed.linger.cancel()
                followed.linger = None
            if followed.ready and room is not None:
                self.recovery.room_ready(room)
            return
        self._follow(room)

    def _follow(self, room: str | None) -> None:
        engine = self.engine
        shard = engine.shard_of(room)
        followed = Followed(room, shard, engine.key(room, "pubs"))
        self.rooms[room] = followed
        self.by_channel[followed.channel] = followed
        self.started_following += 1
        self.shards[shard].to_subscribe.add(room)
        self.shards[shard].wake()

    def _room_opened(self, room: str) -> None:
        followed = self.rooms.get(room)
        if followed is not None and followed.linger is not None:
            followed.linger.cancel()
            followed.linger = None

    def _room_closed(self, room: str) -> None:
        """The hub's last local session left ``room``: stop following it soon."""
        self.maybe_unfollow(room)

    def maybe_unfollow(self, room: str) -> None:
        followed = self.rooms.get(room)
        if followed is None or followed.linger is not None or self._needed(room):
            return
        followed.linger = asyncio.get_running_loop().call_later(self.linger, self._unfollow, room)

    def _needed(self, room: str) -> bool:
        if self.hub.room_size(room) or self.recovery.joining(room):
            return True
        return any(room in admission.rooms for admission in self._admissions)

    def _unfollow(self, room: str) -> None:
        followed = self.rooms.get(room)
        if followed is None:
            return
        followed.linger = None
        if self._needed(room):
            return
        del self.rooms[room]
        self.by_channel.pop(followed.channel, None)
        self.stopped_following += 1
        shard = self.shards[followed.shard]
        shard.to_subscribe.discard(room)
        if followed.subscribed:
            shard.to_unsubscribe.add(followed.channel)
            shard.wake()
        self.recovery.streams.forget(room)

    def followed_on(self, index: int) -> list[Followed]:
        return [f for f in self.rooms.values() if f.shard == index]

    # -- loading and applying --------------------------------------------------------

    async def load(self, client: Any, followed: list[Followed]) -> None:
        """Make each mirror continue its stream in Redis up to its top: when it
        starts being followed, after a reconnection, or when a hole shows. What
        the channel brings meanwhile waits in the item's buffer."""
        engine = self.engine
        streams = self.recovery.streams
        for item in followed:
            item.ready = False
            if item.buffer is None:
                item.buffer = []
        if engine.kind == "cluster":  # no scripts in a Cluster pipeline (redis-py)
            metas = await gather_bounded(
                [
                    client.eval(
                        _META,
                        2,
                        engine.key(item.room, "meta"),
                        engine.key(item.room, "stream"),
                        new_epoch(),
                    )
                    for item in followed
                ]
            )
        else:
            pipe = client.pipeline(transaction=False)
            for item in followed:
                pipe.eval(
                    _META,
                    2,
                    engine.key(item.room, "meta"),
                    engine.key(item.room, "stream"),
                    new_epoch(),
                )
            metas = await pipe.execute()
        limit = asyncio.Semaphore(LOAD_CONCURRENCY)

        async def load_one(item: Followed, epoch: str, top: int) -> None:
            async with limit:
                if self.rooms.get(item.room) is not item:
                    return  # given up meanwhile
                await self._continue(client, item, epoch, top, streams)
            buffered, item.buffer = item.buffer, None
            item.ready = True
            for data in buffered or ():
                if not self.apply(item, data):
                    log.debug("Redis stream: a publication of a stale epoch dropped")
            self._ready(item)

        if len(followed) == 1:
            epoch_raw, top_raw = metas[0]
            await load_one(followed[0], epoch_raw.decode(), int(top_raw))
            return
        # many rooms (a resume, a reconnection): their tails are read a few at a time
        outcomes = await asyncio.gather(
            *(
                load_one(item, epoch_raw.decode(), int(top_raw))
                for item, (epoch_raw, top_raw) in zip(followed, metas)
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _continue(
        self, client: Any, item: Followed, epoch: str, top: int, streams: Any
    ) -> None:
        room = item.room
        known = room in streams
        mirrored_epoch, mirrored_top = streams.position(room) if known else (None, 0)
        if known and epoch == mirrored_epoch and top < mirrored_top:
            # Redis lost publications that were delivered (asynchronous
            # replication, then a failover): new ones would take their offsets.
            log.warning(
                "Redis stream: the stream of %s ends at offset %d in Redis, below the %d "
                "delivered here (epoch %s): publications were lost (a failover?); moving "
                "it to a new epoch",
                "every client" if room is None else f"room {room!r}",
                top,
                mirrored_top,
                epoch,
            )
            epoch_raw, top_raw = await client.eval(
                _NEW_EPOCH,
                2,
                self.engine.key(room, "meta"),
                self.engine.key(room, "stream"),
                epoch,
                mirrored_top,
                new_epoch(),
            )
            epoch, top = epoch_raw.decode(), int(top_raw)
            self.epoch_changes += 1
        if known and epoch == mirrored_epoch:
            if top > mirrored_top:
                entries = await self._fetch(client, room, mirrored_top + 1, top)
                await self._fence(client, room, entries)
                if entries and entries[0][0] == mirrored_top + 1:
                    self._deliver_entries(room, epoch, entries)
                    self.refetched += len(entries)
                    return
            else:
                return
        # A start, or the mirror cannot be continued: load the tail of the stream,
        # but what is older than history_ttl (it is no longer recoverable).
        start = max(1, top - streams.history_size + 1)
        entries = await self._fetch(client, room, start, top, time.time() - self.history_ttl)
        await self._fence(client, room, entries)
        base = entries[0][0] - 1 if entries else top
        if known:
            self.resets += 1
            self.recovery.reset_stream(room, epoch, base)
        else:
            streams.restart(room, epoch, base)
        if known:
            self._deliver_entries(room, epoch, entries)
            return
        for offset, (opcode, _room, payload) in entries:
            if offset != streams.position(room)[1] + 1:
                streams.restart(room, epoch, offset - 1)  # an entry that could not be read
            streams.append(room, epoch, offset, pub_message(room, epoch, offset, opcode, payload))

    async def _fence(self, client: Any, room: str | None, entries: list[Any]) -> None:
        """With ``wait_replicas``: deliver nothing read from a Stream before the
        replicas have it. A write after the read, then ``WAIT``: replication is in
        order, so what the read saw is on the replicas once the write is."""
        if not self.wait_replicas or not entries:
            return
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("INCR", self.engine.key(room, "fence"))
        pipe.execute_command("EXPIRE", self.engine.key(room, "fence"), self.ttl_seconds)
        pipe.execute_command("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS)
        results = await pipe.execute()
        await self.replicated(client, results[-1])

    async def replicated(self, client: Any, acknowledged: int) -> None:
        """Wait (``WAIT`` again) until ``wait_replicas`` replicas have this
        connection's writes: the shard's publications wait meanwhile."""
        warned = False
        while int(acknowledged) < self.wait_replicas:
            if not warned:
                warned = True
                self.replica_waits += 1
                log.warning(
                    "Redis stream: %d of %d replicas acknowledged; publications wait",
                    int(acknowledged),
                    self.wait_replicas,
                )
            acknowledged = await client.execute_command("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS)

    def _deliver_entries(
        self, room: str | None, epoch: str, entries: list[tuple[int, Any]]
    ) -> None:
        recovery = self.recovery
        for offset, (opcode, _room, payload) in entries:
            if offset != recovery.streams.position(room)[1] + 1:
                recovery.reset_stream(room, epoch, offset - 1)  # an entry that could not be read
            recovery.deliver(room, epoch, offset, opcode, payload)

    def _ready(self, item: Followed) -> None:
        if item.room is not None:
            self.recovery.room_ready(item.room)
            if not self._needed(item.room):
                self.maybe_unfollow(item.room)
        self._check_admissions()

    def apply(self, followed: Followed, data: bytes) -> bool:
        """Deliver one channel message; False when it does not follow the mirror
        (a hole, or another epoch): the caller loads first."""
        try:
            epoch_raw, first_text, rest = data.split(b"\n", 2)
            first = int(first_text)
            records = decode_records(rest)
        except ValueError as exc:
            log.warning("Redis stream: malformed channel message dropped: %s", exc)
            return True
        room = followed.room
        epoch, top = self.recovery.streams.position(room)
        if epoch_raw.decode() != epoch:
            return False
        last = first + len(records) - 1
        if last <= top:
            return True  # already had it (fetched while loading)
        if first > top + 1:
            return False
        deliver = self.recovery.deliver
        for i, (opcode, _room, payload) in enumerate(records):
            offset = first + i
            if offset > top:
                deliver(room, epoch, offset, opcode, payload)
        self.received += len(records)
        return True

    async def _fetch(
        self, client: Any, room: str | None, start: int, end: int, since: float = 0.0
    ) -> list[tuple[int, Any]]:
        """Entries ``start`` to ``end`` of ``room``'s Redis Stream; with ``since``
        (Unix time), none stored before it (nor any before a skipped one)."""
        out: list[tuple[int, Any]] = []
        key = self.engine.key(room, "stream")
        cursor = f"{start}-0"
        while start <= end:
            rows = await client.xrange(key, cursor, f"{end}-1", count=FETCH_CHUNK)
            if not rows:
                break
            for entry_id, fields in rows:
                offset = int(entry_id.split(b"-")[0])
                try:
                    record = decode_records(fields[b"r"])[0]
                    stored = float(fields.get(b"t", b"0"))
                except (KeyError, ValueError, UnicodeDecodeError):
                    continue
                if since and stored < since:
                    out.clear()  # too old to recover: only what follows counts
                    continue
                out.append((offset, record))
            start = out[-1][0] + 1 if out else end + 1
            cursor = f"{start}-0"
            if len(rows) < FETCH_CHUNK:
                break
        return out

    # -- admissions ------------------------------------------------------------------

    def admit_later(
        self,
        conn: Any,
        resume: Resume | None,
        asked: bool,
        admit: Callable[[Any, Resume | None, Ended | None, bool], None],
    ) -> None:
        """Admit ``conn`` once its ended session (if it asks for one) was read from
        Redis and every stream it needs is followed here and loaded."""
        admission = _Admission(conn, resume, asked, admit)
        self._admissions.append(admission)
        if resume is not None:
            shard = self.shards[self.engine.session_shard(digest(resume.session).hex())]
            shard.session_reads.append(admission)
            shard.wake()
        else:
            self.admission_progress(admission)

    def admission_progress(self, admission: _Admission) -> None:
        """The ended session was read: follow its rooms, admit when all are ready."""
        rooms: set[str] = set()
        if admission.ended is not None:
            rooms.update(admission.ended.rooms)
        elif admission.resume is not None:
            live = self.hub.find(admission.resume.session)
            if live is not None:
                rooms.update(live.rooms)
        admission.rooms = frozenset(rooms)
        for room in rooms:
            self.follow(room)
        self._check_admissions()

    def _check_admissions(self) -> None:
        if not self._admissions:
            return
        waiting = []
        done = []
        for admission in self._admissions:
            if admission.read and self.ready and all(self.follows(r) for r in admission.rooms):
                done.append(admission)
            else:
                waiting.append(admission)
        self._admissions = waiting
        for admission in done:
            admission.admit(admission.conn, admission.resume, admission.ended, admission.asked)
            for room in admission.rooms:
                if not self._needed(room):
                    self.maybe_unfollow(room)

    # -- sessions and presence ----------------------------------------------------------

    def session_key(self, session_id: str) -> str:
        return self.engine.session_key(digest(session_id).hex())

    def _session_shard(self, session_id: str) -> Shard:
        return self.shards[self.engine.session_shard(digest(session_id).hex())]

    def _room_shard(self, room: str) -> Shard:
        return self.shards[self.engine.shard_of(room)]

    def _presence_key(self, room: str) -> str:
        return self.engine.key(room, "presence")

    def session_admitted(self, session: Any) -> None:
        """Record a session (and its rooms) in Redis at once, so that a crash of this
        process right after it connected does not lose it."""
        self._write_live(
            session,
            frozenset(session.rooms),
            frozenset(),
            str(time.time() + PRESENCE_TTL),
            time.monotonic(),
        )

    def session_ended(self, session_id: str, rooms: Any, user: Any) -> None:
        """Keep a session's rooms for the recovery window, for any process."""
        self._written.pop(session_id, None)
        self._session_record(session_id, frozenset(rooms), user)
        public = log_id(session_id)
        for room in rooms:
            self._command(self._room_shard(room), "HDEL", self._presence_key(room), public)

    def _command(self, shard: Shard, *command: Any) -> None:
        shard.commands.append((command[0], command[1:]))
        shard.wake()

    def _session_record(self, session_id: str, rooms: frozenset[str], user: Any) -> None:
        ttl = max(1, int(self.recovery.window + 0.999))
        value = json.dumps({"rooms": sorted(rooms), "user": user})
        self._command(
            self._session_shard(session_id), "SET", self.session_key(session_id), value, "EX", ttl
        )

    async def presence(self, room: str) -> list[dict[str, Any]]:
        """The sessions in ``room`` on every process (as last synced): their public
        ids and users, sorted by public id."""
        shard = self._room_shard(room)
        if not shard.connected:
            raise ConnectionError("Redis is not connected")
        client = self.engine.client(shard.index)
        entries = await client.hgetall(self._presence_key(room))
        now = time.time()
        found = []
        for key, value in entries.items():
            try:
                expiry, user = json.loads(value)
                if float(expiry) <= now:
                    continue
            except (ValueError, TypeError):
                continue
            found.append({"client": key.decode(), "user": user if isinstance(user, str) else None})
        return sorted(found, key=lambda entry: entry["client"])

    def sync_sessions(self) -> None:
        """Queue the writes that bring Redis up to date with this process's
        sessions: presence of each session in its rooms, and the rooms of each
        simplew.v2 session (refreshed well within their TTLs)."""
        now_wall = time.time()
        now = time.monotonic()
        expiry = str(now_wall + PRESENCE_TTL)
        refresh_every = min(PRESENCE_TTL, max(self.recovery.window, 1.0)) / 3
        current: dict[str, Any] = {}
        for session in self.hub.sessions():
            current[session.id] = session
        for session_id in [sid for sid in self._written if sid not in current]:
            rooms, _when = self._written.pop(session_id)
            public = log_id(session_id)
            for room in rooms:
                self._command(self._room_shard(room), "HDEL", self._presence_key(room), public)
        for session_id, session in current.items():
            rooms = frozenset(session.rooms)
            previous = self._written.get(session_id)
            if previous is not None and previous[0] == rooms and now - previous[1] < refresh_every:
                continue
            self._write_live(
                session, rooms, frozenset() if previous is None else previous[0], expiry, now
            )

    def _write_live(
        self, session: Any, rooms: frozenset[str], before: frozenset[str], expiry: str, now: float
    ) -> None:
        """Queue the writes for a connected session: its presence in ``rooms`` (out
        of the rooms of ``before`` it left) and, for simplew.v2, its record."""
        public = log_id(session.id)
        entry = json.dumps([expiry, session.user])
        for room in before - rooms:
            self._command(self._room_shard(room), "HDEL", self._presence_key(room), public)
        for room in rooms:
            shard = self._room_shard(room)
            self._command(shard, "HSET", self._presence_key(room), public, entry)
            self._command(shard, "EXPIRE", self._presence_key(room), int(PRESENCE_TTL * 3))
        if session.v2 and self.recovery.window > 0:
            self._session_record(session.id, rooms, session.user)
        self._written[session.id] = (rooms, now)

    # -- closing -------------------------------------------------------------------------

    async def close(self, flush_timeout: float = 1.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + flush_timeout
        while (
            any((s.pending or s.commands) and s.connected for s in self.shards)
            and loop.time() < deadline
        ):
            await asyncio.sleep(0.005)
        self.closed = True
        for shard in self.shards:
            await cancel_quietly(shard.task)
            shard.task = None
            shard.connected = False
            for _room, _record, future in shard.pending:
                if future is not None and not future.done():
                    future.set_exception(Unavailable("the server stopped"))
        for followed in self.rooms.values():
            if followed.linger is not None:
                followed.linger.cancel()
        await self.engine.aclose()

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "ready": self.ready,
            "published": self.published,
            "batches": sum(shard.batches for shard in self.shards),
            "received": self.received,
            "dropped": self.dropped,
            "refetched": self.refetched,
            "resets": self.resets,
            "epoch_changes": self.epoch_changes,
            "outages": self.outages,
            "pending": sum(len(shard.pending) for shard in self.shards),
            "followed": self.followed,
            "started_following": self.started_following,
            "stopped_following": self.stopped_following,
            "shards": [
                {"index": s.index, "connected": s.connected, "pending": len(s.pending)}
                for s in self.shards
            ],
        }
