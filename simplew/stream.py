"""The publication stream and the sessions of a deployment, in Redis.

``SimpleWServer(recovery=True, redis_url=...)``: every process (workers,
hosts) sharing the URL shares one stream. Redis keeps, under ``prefix``:

- ``{prefix}:meta``: a hash with the stream's ``epoch`` and ``top`` offset;
- ``{prefix}:stream``: a Redis Stream of the last ``history_size``
  publications, entry id ``<offset>-1``, field ``r`` = the publication
  (:func:`simplew.backplane.encode_record`);
- ``{prefix}:session:<sha256 of id>``: a session's rooms and user (JSON), with
  the recovery window as TTL, refreshed while it is connected;
- ``{prefix}:presence:<room>``: a hash of the sessions in the room on every
  process: public id (:func:`simplew.recovery.log_id` of the session id, never
  the id itself) -> ``[expiry (Unix time), user]`` as JSON.

One Lua script takes a batch of publications: it reads the epoch (creating
it, and dropping any stale stream, when the meta hash is gone), advances
``top``, appends each publication under its offset and PUBLISHes the batch on
``{prefix}:pubs`` as ``epoch \\n first-offset \\n records``. Offsets, history
and live delivery can therefore never disagree. The multicasts a process makes
while its previous batch is in flight go out in the next one.

Every process delivers publications from the channel only, its own
included, so every client sees them in offset order. Each process mirrors the
stream in its :class:`~simplew._fast.history.History`: filled from the Redis
Stream at start (after subscribing), extended by the channel; a hole in the
offsets (a lost channel message, a reconnection) is filled from the Redis
Stream before anything later is delivered. A changed epoch (Redis lost its
data) closes the simplew.v1 clients with 1012: they come back, and start
fresh sessions. When, after a reconnection, the stream's ``top`` in Redis
(same epoch) is below what this process mirrored, Redis lost publications
already delivered (a failover to a replica that had not received them): the
process moves the stream to a fresh epoch (one Lua script: only if the epoch
is still the one it saw and ``top`` still below, so processes racing do it
once) and resets as for a changed epoch, so that an (epoch, offset) never
names two different publications.

While Redis is unreachable, multicasts wait (up to ``max_pending``, then they
are dropped and counted) and connections that need Redis to be admitted
wait outside the hub.
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
    redact,
    redis_client,
    until_either_fails,
)
from simplew.recovery import Ended, Recovery, Resume, digest, log_id, new_epoch, pub_message

log = logging.getLogger("simplew.stream")

PREFIX = "simplew"
MAX_PENDING = 100_000
SYNC_INTERVAL = 1.0  # seconds between two writes of session and presence changes
PRESENCE_TTL = 10.0  # a presence entry not refreshed for this long is gone
FETCH_CHUNK = 1000  # Stream entries per XRANGE

# The epoch of the stream; a fresh one (and no stale entries) when the meta hash is gone.
_EPOCH = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
"""

_PUBLISH = (
    _EPOCH
    + """
local n = #ARGV - 3
local top = redis.call('HINCRBY', KEYS[1], 'top', n)
local first = top - n + 1
for i = 1, n do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], string.format('%d-1', first + i - 1),
             'r', ARGV[i + 3])
end
redis.call('PUBLISH', ARGV[3], epoch .. '\\n' .. string.format('%d', first) .. '\\n'
           .. table.concat(ARGV, '', 4))
return {epoch, first}
"""
)

_META = (
    _EPOCH
    + """
return {epoch, redis.call('HGET', KEYS[1], 'top')}
"""
)

# The stream lost publications this process had mirrored (a failover to a replica
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


class RedisStream:
    """The Redis side of :class:`~simplew.recovery.Recovery` (loop thread only)."""

    def __init__(
        self,
        url: str,
        recovery: Recovery,
        *,
        prefix: str = PREFIX,
        max_pending: int = MAX_PENDING,
        sync_interval: float = SYNC_INTERVAL,
    ) -> None:
        self.url = url
        self.recovery = recovery
        self.hub = recovery.hub
        self.prefix = prefix
        self.max_pending = max_pending
        self.sync_interval = sync_interval
        self.meta_key = f"{prefix}:meta"
        self.stream_key = f"{prefix}:stream"
        self.channel = f"{prefix}:pubs"
        self.ready = False  # the history mirrors the stream up to now
        self.connected = False
        self.closed = False
        self._epoch: str | None = None  # the epoch the history belongs to
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._waiters: list[tuple[Any, Resume | None, bool, Callable[..., Any]]] = []
        self._commands: deque[tuple[str, tuple[Any, ...]]] = deque()  # session/presence writes
        self._written: dict[str, tuple[frozenset[str], float]] = {}  # id -> (rooms, when)
        self._wakeup = asyncio.Event()  # a fresh one at each start
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        # counters
        self.published = 0
        self.batches = 0
        self.received = 0
        self.dropped = 0  # multicasts dropped while Redis was unreachable too long
        self.refetched = 0  # publications fetched from the Stream to fill a hole
        self.resets = 0
        self.epoch_changes = 0  # new epochs this process made: Redis lost publications
        self.outages = 0

    # -- the loop-thread API ------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._task = loop.create_task(self._run(), name="simplew-stream")

    def publish(self, opcode: int, payload: bytes, room: str | None) -> None:
        """Queue one multicast; it is delivered when Redis gave it an offset."""
        if self.closed:
            return
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning(
                    "Redis stream: %d multicasts wait for Redis; %d dropped so far",
                    len(self._pending),
                    self.dropped,
                )
            return
        record = encode_record(opcode, room, payload)
        self._pending.append(record)
        self._pending_bytes += len(record)
        self._wakeup.set()

    def admit_later(
        self,
        conn: Any,
        resume: Resume | None,
        asked: bool,
        admit: Callable[[Any, Resume | None, Ended | None, bool], None],
    ) -> None:
        """Admit ``conn`` once the history is ready and its ended session (if it
        asks for one) was read from Redis."""
        self._waiters.append((conn, resume, asked, admit))
        self._wakeup.set()

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
        self._wakeup.set()

    def session_ended(self, session_id: str, rooms: Any, user: Any) -> None:
        """Keep a session's rooms for the recovery window, for any process."""
        self._written.pop(session_id, None)
        self._session_record(session_id, frozenset(rooms), user)
        for room in rooms:
            self._commands.append(("HDEL", (self._presence_key(room), log_id(session_id))))
        self._wakeup.set()

    async def presence(self, room: str) -> list[dict[str, Any]]:
        """The sessions in ``room`` on every process (as last synced): their public
        ids and users, sorted by public id."""
        client = self._client
        if client is None:
            raise ConnectionError("Redis is not connected")
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

    async def close(self, flush_timeout: float = 1.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + flush_timeout
        while (self._pending or self._commands) and self.connected and loop.time() < deadline:
            await asyncio.sleep(0.005)
        self.closed = True
        task, self._task = self._task, None
        await cancel_quietly(task)
        self.connected = False

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "ready": self.ready,
            "published": self.published,
            "batches": self.batches,
            "received": self.received,
            "dropped": self.dropped,
            "refetched": self.refetched,
            "resets": self.resets,
            "epoch_changes": self.epoch_changes,
            "outages": self.outages,
            "pending": len(self._pending),
            "top": self.recovery.history.top,
        }

    # -- keys and records ---------------------------------------------------------------

    def _presence_key(self, room: str) -> str:
        return f"{self.prefix}:presence:{room}"

    def _session_key(self, session_id: str) -> str:
        return f"{self.prefix}:session:{digest(session_id).hex()}"

    def _session_record(self, session_id: str, rooms: frozenset[str], user: Any) -> None:
        ttl = max(1, int(self.recovery.window + 0.999))
        value = json.dumps({"rooms": sorted(rooms), "user": user})
        self._commands.append(("SET", (self._session_key(session_id), value, "EX", ttl)))

    # -- the connection ---------------------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        while not self.closed:
            client = pubsub = None
            try:
                client = redis_client(self.url)
                pubsub = client.pubsub()
                await pubsub.subscribe(self.channel)
                while True:  # nothing published after this is missed
                    message = await pubsub.get_message(timeout=COMMAND_TIMEOUT)
                    if message is None:
                        raise TimeoutError("no answer to SUBSCRIBE")
                    if message["type"] == "subscribe":
                        break
                self._client = client
                await self._catch_up(client)
                if not self.connected and self.outages:
                    log.info("Redis stream reconnected to %s", redact(self.url))
                elif not self.connected:
                    log.info("Redis stream connected to %s", redact(self.url))
                self.connected = True
                backoff = BACKOFF_MIN
                await self._serve(client, pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.closed:
                    if self.connected or self.outages == 0:
                        self.outages += 1
                        log.warning(
                            "Redis stream: %s %s: %s; publications wait until it is back",
                            "lost" if self.connected else "cannot reach",
                            redact(self.url),
                            _describe(exc),
                        )
                    self.connected = False
                    self.ready = False
            finally:
                self._client = None
                await _close_quietly(pubsub, client)
            if self.closed:
                break
            await asyncio.sleep(backoff * (1 + random.random() / 4))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _serve(self, client: Any, pubsub: Any) -> None:
        await until_either_fails(self._read(client, pubsub), self._write(client))

    # -- reading: the channel, holes and the start -------------------------------------

    async def _read(self, client: Any, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is None or message["type"] != "message":
                continue
            data = message["data"]
            if not self._apply(data):
                await self._catch_up(client)  # a hole: fill it from the Stream
                if not self._apply(data):
                    log.debug("Redis stream: a publication of a stale epoch dropped")

    def _apply(self, data: bytes) -> bool:
        """Deliver one channel message; False when it does not follow the history
        (a hole, or another epoch): the caller catches up first."""
        try:
            epoch, first_text, rest = data.split(b"\n", 2)
            first = int(first_text)
            records = decode_records(rest)
        except ValueError as exc:
            log.warning("Redis stream: malformed channel message dropped: %s", exc)
            return True
        history = self.recovery.history
        if epoch.decode() != self._epoch:
            return False
        last = first + len(records) - 1
        if last <= history.top:
            return True  # already had it (fetched while catching up)
        if first > history.top + 1:
            return False
        deliver = self.recovery.deliver
        for i, (opcode, room, payload) in enumerate(records):
            offset = first + i
            if offset > history.top:
                deliver(offset, opcode, payload, room)
        self.received += len(records)
        return True

    async def _catch_up(self, client: Any) -> None:
        """Make the history continue the stream in Redis up to its top: at the
        start, after a reconnection, or when a channel message shows a hole."""
        self.ready = False
        history = self.recovery.history
        epoch_raw, top_raw = await client.eval(
            _META, 2, self.meta_key, self.stream_key, new_epoch()
        )
        epoch, top = epoch_raw.decode(), int(top_raw)
        first_start = self._epoch is None
        if not first_start and epoch == self._epoch and top < history.top:
            # Redis lost publications this process delivered (asynchronous
            # replication, then a failover): new ones would take their offsets.
            # Move the stream to a new epoch, so that an (epoch, offset) never
            # names two publications; the clients start fresh sessions.
            log.warning(
                "Redis stream: the stream in Redis ends at offset %d, below the %d "
                "delivered here (epoch %s): publications were lost (a failover?); "
                "moving to a new epoch",
                top,
                history.top,
                epoch,
            )
            epoch_raw, top_raw = await client.eval(
                _NEW_EPOCH, 2, self.meta_key, self.stream_key, epoch, history.top, new_epoch()
            )
            epoch, top = epoch_raw.decode(), int(top_raw)
            self.epoch_changes += 1
        if not first_start and epoch == self._epoch and top > history.top:
            entries = await self._fetch(client, history.top + 1, top)
            if entries and entries[0][0] == history.top + 1:
                for offset, (opcode, room, payload) in entries:
                    self.recovery.deliver(offset, opcode, payload, room)
                self.refetched += len(entries)
                self._ready()
                return
        elif not first_start and epoch == self._epoch and top == history.top:
            self._ready()
            return
        # The start, or the history cannot be continued: load the tail of the stream.
        start = max(1, top - history.max_count + 1)
        entries = await self._fetch(client, start, top)
        history.clear(entries[0][0] - 1 if entries else top)
        for offset, (opcode, room, payload) in entries:
            history.append(offset, room, pub_message(offset, opcode, payload, room))
        self._epoch = epoch
        if first_start:
            self.recovery.epoch = epoch
        else:
            self.resets += 1
            self.recovery.reset_stream(epoch)
        self._ready()

    def _ready(self) -> None:
        self.ready = True
        self._admit_waiters()

    async def _fetch(self, client: Any, start: int, end: int) -> list[tuple[int, Any]]:
        out: list[tuple[int, Any]] = []
        cursor = f"{start}-0"
        while start <= end:
            rows = await client.xrange(self.stream_key, cursor, f"{end}-1", count=FETCH_CHUNK)
            if not rows:
                break
            for entry_id, fields in rows:
                offset = int(entry_id.split(b"-")[0])
                try:
                    record = decode_records(fields[b"r"])[0]
                except (KeyError, ValueError, UnicodeDecodeError):
                    continue
                out.append((offset, record))
            start = out[-1][0] + 1 if out else end + 1
            cursor = f"{start}-0"
            if len(rows) < FETCH_CHUNK:
                break
        return out

    def _admit_waiters(self) -> None:
        """Connections that waited for the history: those that ask for an ended
        session get it read from Redis by the writer; the others are admitted now."""
        waiters, self._waiters = self._waiters, []
        for conn, resume, asked, admit in waiters:
            if resume is None or resume.epoch != self._epoch:
                admit(conn, None, None, asked)
            else:
                self._waiters.append((conn, resume, asked, admit))
        if self._waiters:
            self._wakeup.set()

    # -- writing: publications, session reads and writes ------------------------------

    async def _write(self, client: Any) -> None:
        publish = client.register_script(_PUBLISH)
        wakeup = self._wakeup
        next_sync = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if self.ready and self._waiters:
                await self._read_sessions(client)
            if self._pending:
                await self._publish_batch(publish)
                continue
            if loop.time() >= next_sync:
                self._sync_sessions()
                next_sync = loop.time() + self.sync_interval
            if self._commands:
                pipe = client.pipeline(transaction=False)
                count = 0
                while self._commands and count < 1000:
                    command, args = self._commands.popleft()
                    pipe.execute_command(command, *args)
                    count += 1
                await pipe.execute()
                continue
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), max(0.01, next_sync - loop.time()))
            except asyncio.TimeoutError:
                pass

    async def _publish_batch(self, publish: Any) -> None:
        pending = self._pending
        batch = [pending.popleft()]
        size = len(batch[0])
        while pending and len(batch) < MAX_BATCH and size + len(pending[0]) <= MAX_BATCH_BYTES:
            batch.append(pending.popleft())
            size += len(batch[-1])
        self._pending_bytes -= size
        try:
            await publish(
                keys=[self.meta_key, self.stream_key],
                args=[new_epoch(), self.recovery.history.max_count or 1, self.channel, *batch],
            )
        except BaseException:
            pending.extendleft(reversed(batch))  # sent again when Redis is back
            self._pending_bytes += size
            raise
        self.published += len(batch)
        self.batches += 1

    async def _read_sessions(self, client: Any) -> None:
        """Read (and take: GETDEL) the ended sessions the waiting connections ask for."""
        waiters, self._waiters = self._waiters, []
        pipe = client.pipeline(transaction=False)
        for _conn, resume, _asked, _admit in waiters:
            if resume is None:
                pipe.execute_command("PING")
            else:
                pipe.execute_command("GETDEL", self._session_key(resume.session))
        try:
            values = await pipe.execute()
        except BaseException:
            self._waiters[:0] = waiters  # they wait on, for the next connection to Redis
            raise
        for (conn, resume, asked, admit), value in zip(waiters, values):
            ended = None
            if resume is None:
                admit(conn, None, None, asked)
                continue
            if value is not None:
                try:
                    record = json.loads(value)
                    ended = Ended(
                        resume.session, record.get("rooms") or (), record.get("user"), 0.0
                    )
                except (ValueError, TypeError, AttributeError):
                    ended = None
            if ended is None:
                # Not in Redis: maybe still live here (a takeover) -> let Recovery decide.
                admit(conn, resume, None, asked)
            else:
                admit(conn, resume, ended, asked)

    def _sync_sessions(self) -> None:
        """Queue the writes that bring Redis up to date with this process's
        sessions: presence of each session in its rooms, and the rooms of each
        simplew.v1 session (refreshed well within their TTLs)."""
        now_wall = time.time()
        now = time.monotonic()
        expiry = str(now_wall + PRESENCE_TTL)
        refresh_every = min(PRESENCE_TTL, max(self.recovery.window, 1.0)) / 3
        current: dict[str, Any] = {}
        for session in self.hub.sessions():
            current[session.id] = session
        commands = self._commands
        for session_id in [sid for sid in self._written if sid not in current]:
            rooms, _when = self._written.pop(session_id)
            for room in rooms:
                commands.append(("HDEL", (self._presence_key(room), log_id(session_id))))
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
        of the rooms of ``before`` it left) and, for simplew.v1, its record."""
        commands = self._commands
        public = log_id(session.id)
        entry = json.dumps([expiry, session.user])
        for room in before - rooms:
            commands.append(("HDEL", (self._presence_key(room), public)))
        for room in rooms:
            commands.append(("HSET", (self._presence_key(room), public, entry)))
        if session.v1 and self.recovery.window > 0:
            self._session_record(session.id, rooms, session.user)
        self._written[session.id] = (rooms, now)
