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

Each shard has its own connection loop (:class:`simplew.shard.Shard`): a shard
that is down stops only the streams on it (their publications wait, up to ``max_pending`` per shard), and
the others go on. Connections that need a stopped shard to be admitted wait
outside the hub until it answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from simplew.backplane import (
    cancel_quietly,
    decode_records,
    encode_record,
)
from simplew.engines import Engine
from simplew.recovery import (
    Ended,
    Recovery,
    Resume,
    digest,
    log_id,
    new_epoch,
    pub_message,
    resumable_by_id,
)
from simplew.shard import ENSURE_EPOCH, LOAD_CONCURRENCY, WAIT_TIMEOUT_MS, Shard, gather_bounded

log = logging.getLogger("simplew.stream")

MAX_PENDING = 100_000  # publications waiting for one shard; past it they are refused
SYNC_INTERVAL = 1.0  # seconds between two writes of session and presence changes
PRESENCE_TTL = 10.0  # a presence entry not refreshed for this long is gone
FETCH_CHUNK = 1000  # Stream entries per XRANGE
LINGER = 5.0  # seconds a room stays followed after its last local session left
RETRY_AFTER = 1  # seconds, the Retry-After of an Unavailable


class Unavailable(Exception):
    """A publication cannot be stored now (its Redis shard is unreachable, or too
    many wait for it): an HTTP answer is 503 with ``Retry-After``."""

    retry_after = RETRY_AFTER


_META = (
    ENSURE_EPOCH
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


class PendingAdmission:
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
        self._admissions: list[PendingAdmission] = []
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
            async with client.pipeline(transaction=False) as pipe:
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
        async with client.pipeline(transaction=False) as pipe:
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
        admission = PendingAdmission(conn, resume, asked, admit)
        self._admissions.append(admission)
        if resume is not None:
            shard = self.shards[self.engine.session_shard(digest(resume.session).hex())]
            shard.session_reads.append(admission)
            shard.wake()
        else:
            self.admission_progress(admission)

    def admission_progress(self, admission: PendingAdmission) -> None:
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

    def forget_session(self, session: Any) -> None:
        """Drop the record of a session being closed: it will not be resumed (the
        server API's ``disconnect``); its presence goes at the first sync after it
        is gone, and no sync writes its record again meanwhile."""
        self._command(self._session_shard(session.id), "DEL", self.session_key(session.id))
        self._written[session.id] = (frozenset(session.rooms), time.monotonic())

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
        if session.v2 and self.recovery.window > 0 and resumable_by_id(session):
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
