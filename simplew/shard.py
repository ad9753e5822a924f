"""One Redis shard of a deployment's streams: its connection loop.

:class:`simplew.stream.RedisStream` has a :class:`Shard` per shard of its
:class:`~simplew.engines.Engine` (one for one instance, a Sentinel master or a
Cluster). A shard connects, subscribes to the channels of the streams followed on it
(each is loaded once its subscription is confirmed), and then runs two loops until
its connection fails: the reader delivers channel messages (a hole or another epoch
has the stream loaded again), the writer applies subscription changes, reads ended
sessions, sends the publications waiting for it (one Lua script per batch: a room's
own script, or one call for the rooms of a batch on one instance; a Cluster gets one
call per room) and the session and presence writes. On failure it reconnects with a
capped, jittered backoff; the other shards go on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import deque
from typing import TYPE_CHECKING, Any

from simplew.backplane import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    COMMAND_TIMEOUT,
    MAX_BATCH,
    MAX_BATCH_BYTES,
    _close_quietly,
    _describe,
    until_either_fails,
)
from simplew.recovery import Ended, new_epoch

if TYPE_CHECKING:
    from simplew.engines import Engine
    from simplew.stream import Followed, PendingAdmission, RedisStream

log = logging.getLogger("simplew.stream")

LOAD_CONCURRENCY = 16  # streams whose tails are read at once (a resume in many rooms)
SUBSCRIBE_CHUNK = 500  # channels per SUBSCRIBE command
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


# The epoch of the stream; a fresh one (and no stale entries) when the meta hash is gone.
ENSURE_EPOCH = """
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
# KEYS[3], when given, is an idempotency key (one record): if it is set, nothing is
# published and its position is returned with a third item, 1; else it is set to the
# new position, for ttl seconds.
_PUBLISH = (
    """
if KEYS[3] then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local space = string.find(seen, ' ', 1, true)
    return {string.sub(seen, 1, space - 1), tonumber(string.sub(seen, space + 1)), 1}
  end
end
"""
    + ENSURE_EPOCH
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
if KEYS[3] then
  redis.call('SET', KEYS[3], epoch .. ' ' .. string.format('%d', first), 'EX', ARGV[3])
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


async def publish_now(
    engine: Engine,
    room: str | None,
    record: bytes,
    *,
    maxlen: int,
    ttl: int,
    key: str | None = None,
    replicas: int = 0,
) -> tuple[str, int, bool]:
    """Store one publication (``record``, :func:`simplew.backplane.encode_record`) of
    ``room``'s stream at once, with the script of the batches but outside any shard
    loop: the server API's keyed publications and :mod:`simplew.emitter`. ``key``: an
    idempotency key, kept ``ttl`` seconds in the same script. ``replicas``: published
    on the channel once that many replicas have it. Returns ``(epoch, offset,
    duplicate)``; ``duplicate``: the key was already used, nothing was published and
    the position is the first one's. Raises redis-py's errors."""
    client = engine.client(engine.shard_of(room))
    channel = engine.key(room, "pubs")
    keys = [engine.key(room, "meta"), engine.key(room, "stream")]
    if key is not None:
        keys.append(engine.key(room, "once:" + key))
    args = [new_epoch(), maxlen, ttl, "" if replicas else engine.publish_command, channel, record]
    script = client.register_script(_PUBLISH)
    if replicas:
        async with client.pipeline(transaction=False) as pipe:
            await script(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", replicas, WAIT_TIMEOUT_MS)
            result, acknowledged = await pipe.execute()
        while int(acknowledged) < replicas:
            acknowledged = await client.execute_command("WAIT", replicas, WAIT_TIMEOUT_MS)
    else:
        result = await script(keys=keys, args=args)
    epoch = result[0].decode() if isinstance(result[0], bytes) else str(result[0])
    offset, duplicate = int(result[1]), len(result) > 2
    if replicas and not duplicate:
        await client.execute_command(
            engine.publish_command, channel, b"%s\n%d\n%s" % (epoch.encode(), offset, record)
        )
    return epoch, offset, duplicate


class Shard:
    """One Redis shard: its connection loop, its publications, its subscriptions."""

    def __init__(self, stream: RedisStream, index: int) -> None:
        self.stream = stream
        self.index = index
        self.connected = False
        self.pending: deque[tuple[str | None, bytes, asyncio.Future[Any] | None]] = deque()
        self.commands: deque[tuple[str, tuple[Any, ...]]] = deque()  # session/presence writes
        self.session_reads: list[PendingAdmission] = []  # GETDEL of ended sessions on this shard
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
                async with client.pipeline(transaction=False) as pipe:
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
                    async with client.pipeline(transaction=False) as pipe:
                        await publish_rooms(keys=keys, args=argv, client=pipe)
                        pipe.execute_command("WAIT", replicas, WAIT_TIMEOUT_MS)
                        flat, acknowledged = await pipe.execute()
                else:
                    flat = await publish_rooms(keys=keys, args=argv)
                results = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
                if replicas:
                    await stream.replicated(client, acknowledged)
                    async with client.pipeline(transaction=False) as pipe:
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
        try:
            async with client.pipeline(transaction=False) as pipe:
                for admission in reads:
                    assert admission.resume is not None
                    pipe.execute_command(
                        "GETDEL", self.stream.session_key(admission.resume.session)
                    )
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
