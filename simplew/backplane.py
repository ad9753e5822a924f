"""Cross-process multicast over Redis pub/sub (``SimpleWServer(redis_url=...)``).

Every server process (``simplew serve --workers N``, or servers on several
hosts) that shares a Redis URL subscribes to one channel. A multicast, to
every client or to a room, is delivered to the local clients at once, as
without Redis, and published on the channel; each other process delivers it to
its own clients with the hub's usual one-frame fan-out, so a message is framed
once per process. A process knows its own messages by an origin id in the
header and ignores their echo.

The multicasts a process makes while its previous PUBLISH is in flight go out
together in the next one: one channel message carries one or more multicasts,
so a burst costs one PUBLISH, one echo and one read per receiving process, not
one per multicast. Channel message (integers big-endian)::

    header:  version (1 byte, 1) | origin (8 bytes)
    then, per multicast:
             opcode (1 byte; 1 TEXT, 2 BINARY)
             | room length (2 bytes; 0xFFFF: no room, every client)
             | message length (4 bytes) | room name (UTF-8) | message bytes

Losing Redis never stops the local server: local multicast goes on, the
backplane reconnects in the background with a capped exponential backoff
(0.1 s doubling to 5 s), and the multicasts published meanwhile are not sent to
the other processes. They are counted in ``gaps``; the outage is logged with
one WARNING when it starts and one INFO with the gap's size when it ends.

Counters, plain attributes for metrics, all in multicasts except where said:
``published`` (sent to Redis), ``received`` (from other processes, delivered
here), ``gaps`` (not sent to the other processes), ``batches`` (PUBLISH
commands sent), ``echoes`` (own channel messages seen back), ``malformed``
(channel messages dropped), ``outages``; ``connected`` tells whether the
backplane is up now.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

log = logging.getLogger("simplew.backplane")

CHANNEL = "simplew:multicast"
VERSION = 1
HEADER = struct.Struct("!B8s")  # version, origin
RECORD = struct.Struct("!BHI")  # opcode, room length, message length
NO_ROOM = 0xFFFF
BACKOFF_MIN = 0.1  # seconds before the first reconnection attempt
BACKOFF_MAX = 5.0  # the backoff doubles up to this
PING_INTERVAL = 1.0  # an idle backplane checks Redis this often
MAX_PENDING = 100_000  # multicasts waiting for Redis; past this: gaps
MAX_BATCH = 1024  # multicasts per channel message, at most
MAX_BATCH_BYTES = 1 << 20  # and bytes (a bigger single multicast goes alone)
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0


def encode_record(opcode: int, room: str | None, payload: bytes) -> bytes:
    """One multicast, as it goes in a channel message after the header."""
    if room is None:
        return RECORD.pack(opcode, NO_ROOM, len(payload)) + payload
    name = room.encode("utf-8")
    if len(name) >= NO_ROOM:
        raise ValueError("room name too long for the backplane (65534 bytes at most)")
    return RECORD.pack(opcode, len(name), len(payload)) + name + payload


def encode(origin: bytes, records: list[bytes]) -> bytes:
    """The channel message carrying ``records`` (from :func:`encode_record`)."""
    return HEADER.pack(VERSION, origin) + b"".join(records)


def decode(data: bytes) -> tuple[bytes, list[tuple[int, str | None, bytes]]]:
    """(origin, [(opcode, room or None, payload), ...]) of a channel message;
    ValueError if any part of it is malformed."""
    if len(data) < HEADER.size:
        raise ValueError("message shorter than the header")
    version, origin = HEADER.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"unknown version {version}")
    return origin, decode_records(data, HEADER.size)


def decode_records(data: bytes, offset: int = 0) -> list[tuple[int, str | None, bytes]]:
    """The multicasts (:func:`encode_record`) that fill ``data`` from ``offset``
    on; ValueError if any part of them is malformed or there is none."""
    out = []
    end = len(data)
    record_size = RECORD.size
    unpack = RECORD.unpack_from
    while offset < end:
        if end - offset < record_size:
            raise ValueError("truncated multicast header")
        opcode, room_len, size = unpack(data, offset)
        if opcode != 1 and opcode != 2:
            raise ValueError(f"bad opcode {opcode}")
        offset += record_size
        if room_len == NO_ROOM:
            room = None
        else:
            if end - offset < room_len:
                raise ValueError("truncated room name")
            room = data[offset : offset + room_len].decode("utf-8")
            offset += room_len
        if end - offset < size:
            raise ValueError("truncated message")
        out.append((opcode, room, data[offset : offset + size]))
        offset += size
    if not out:
        raise ValueError("no multicast in the message")
    return out


SENTINEL_SCHEME = "redis+sentinel"


class SentinelURL(NamedTuple):
    """The parts of a ``redis+sentinel://`` URL (:func:`parse_sentinel_url`)."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() == SENTINEL_SCHEME


def split_url(url: str, scheme: str) -> tuple[str, str, str | None, str | None]:
    """``scheme://[[user]:password@]hosts[/path]`` as (hosts, path, username,
    password); ValueError (without the password) for another scheme, a query or a
    fragment."""
    given, sep, rest = url.partition("://")
    if not sep or given.lower() != scheme:
        raise ValueError(f"not a {scheme}:// URL: {redact(url)!r}")
    if "?" in rest or "#" in rest:
        raise ValueError(f"a {scheme}:// URL takes no query or fragment: {redact(url)!r}")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    return hosts, path, username, password


def parse_sentinel_url(url: str) -> SentinelURL:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``
    as its parts; ValueError (without the password) if it is not of that form."""
    hosts, path, username, password = split_url(url, SENTINEL_SCHEME)
    sentinels = []
    for item in hosts.split(","):
        host, colon, port_text = item.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(
                f"{redact(url)!r}: each Sentinel must be host:port, got {item.strip()!r}"
            )
        sentinels.append((host, int(port_text)))
    parts = path.split("/") if path else []
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()  # a trailing slash
    if not parts or not parts[0] or len(parts) > 2:
        raise ValueError(
            f"{redact(url)!r}: expected {SENTINEL_SCHEME}://host:port[,host:port...]"
            "/service_name[/db]"
        )
    service = unquote(parts[0])
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"{redact(url)!r}: the database must be a number, got {parts[1]!r}")
        db = int(parts[1])
    return SentinelURL(sentinels, service, db, username, password)


def redis_client(url: str) -> Any:
    """An asyncio Redis client for ``url`` that fails fast: no retries, short
    connect and command timeouts.

    ``url`` is redis://, rediss:// or unix://, or
    ``redis+sentinel://host:port[,host:port...]/service_name[/db]``: a client
    on the master the Sentinels name for ``service_name`` (the URL's user and
    password are the master's). Each connection it opens asks the Sentinels
    first, so a caller that makes a new client after an error (the backplane
    and the stream do, when they reconnect) follows a failover.
    """
    try:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:
        raise ImportError(
            "a Redis URL needs the Redis client: pip install 'simplew[redis]'"
        ) from None
    options: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": COMMAND_TIMEOUT,
    }
    if not url.startswith("unix:"):
        options["socket_keepalive"] = True  # TCP only: a Unix socket has no keepalive
    if not is_sentinel_url(url):
        return Redis.from_url(url, **options)
    from redis.asyncio.sentinel import Sentinel

    parts = parse_sentinel_url(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        parts.sentinels,
        sentinel_kwargs={**options, "retry": Retry(NoBackoff(), 0)},
        **options,
    )
    client = sentinel.master_for(
        parts.service, db=parts.db, username=parts.username, password=parts.password
    )
    close_client = client.aclose

    async def aclose(*args: Any, **kwargs: Any) -> None:
        """Close the connections to the Sentinels too."""
        try:
            await close_client(*args, **kwargs)
        finally:
            await sentinel.aclose()

    client.aclose = aclose
    return client


def redact(url: str) -> str:
    """``url`` without its password, for the log."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "<redis url>"


class RedisBackplane:
    """Publishes this process's multicasts on a Redis channel and delivers the
    other processes' ones with ``deliver(opcode, payload, room)``.

    Lives on the server's event loop: :meth:`start`, :meth:`publish` and
    :meth:`close` are called on the loop thread (the server does that).
    """

    def __init__(
        self,
        url: str,
        deliver: Callable[[int, bytes, str | None], Any],
        *,
        channel: str = CHANNEL,
        origin: bytes | None = None,
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = BACKOFF_MAX,
        ping_interval: float = PING_INTERVAL,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.url = url
        self.channel = channel
        self.origin = origin if origin is not None else os.urandom(8)
        if len(self.origin) != 8:
            raise ValueError("origin must be 8 bytes")
        self._deliver = deliver
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.ping_interval = ping_interval
        self.max_pending = max_pending
        # counters
        self.published = 0
        self.batches = 0
        self.received = 0
        self.gaps = 0
        self.echoes = 0
        self.malformed = 0
        self.outages = 0
        self.connected = False
        self.closed = False
        self._ever_connected = False
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()  # a fresh one at each start
        self._task: asyncio.Task[None] | None = None
        self._down_since: float | None = None  # loop time the current outage began
        self._outage_gaps = 0
        self._overflowing = False

    @property
    def pending(self) -> int:
        """Multicasts waiting to be sent to Redis."""
        return len(self._pending)

    def stats(self) -> dict[str, Any]:
        """The counters, and whether the backplane is connected, as a dict."""
        return {
            "connected": self.connected,
            "published": self.published,
            "batches": self.batches,
            "received": self.received,
            "gaps": self.gaps,
            "echoes": self.echoes,
            "malformed": self.malformed,
            "outages": self.outages,
            "pending": len(self._pending),
        }

    # -- the loop-thread API ----------------------------------------------------

    def start(self) -> None:
        """Begin connecting (in the background; returns at once)."""
        if self._task is not None:
            raise RuntimeError("backplane already started")
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._down_since = loop.time()
        self._task = loop.create_task(self._run(), name="simplew-backplane")

    def publish(self, opcode: int, payload: bytes, room: str | None = None) -> None:
        """Queue one multicast for the other processes (never blocks)."""
        if self.closed:
            return
        if not self.connected:
            self._gap(1)
            return
        if len(self._pending) >= self.max_pending:
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "Redis backplane: %d multicasts wait for Redis; dropping new ones "
                    "(counted in gaps) until it catches up",
                    len(self._pending),
                )
            self._gap(1)
            return
        if room is None:
            record = RECORD.pack(opcode, NO_ROOM, len(payload)) + payload
        else:
            record = encode_record(opcode, room, payload)
        self._pending.append(record)
        self._pending_bytes += len(record)
        self._wakeup.set()

    async def close(self, flush_timeout: float = 1.0) -> None:
        """Send what is queued (for up to ``flush_timeout`` s), then disconnect."""
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + flush_timeout
        while self._pending and self.connected and loop.time() < deadline:
            await asyncio.sleep(0.005)
        self.closed = True
        task, self._task = self._task, None
        await cancel_quietly(task)
        if self._pending:
            self._gap(len(self._pending))
            self._pending.clear()
            self._pending_bytes = 0
        self.connected = False

    # -- internals ------------------------------------------------------------------

    def _gap(self, count: int) -> None:
        self.gaps += count
        self._outage_gaps += count

    def _up(self) -> None:
        loop = asyncio.get_running_loop()
        if self.outages == 0 and self._outage_gaps == 0:
            log.info("Redis backplane connected to %s (channel %s)", redact(self.url), self.channel)
        else:
            since = self._down_since or loop.time()
            log.info(
                "Redis backplane %s %s after %.1f s; gap: %d multicasts were not sent "
                "to the other processes",
                "reconnected to" if self._ever_connected else "connected to",
                redact(self.url),
                loop.time() - since,
                self._outage_gaps,
            )
        self.connected = True
        self._ever_connected = True
        self._down_since = None
        self._outage_gaps = 0
        self._overflowing = False

    def _down(self, exc: BaseException) -> None:
        """The connection failed (or could not be made): one WARNING per outage."""
        first = self.connected or self.outages == 0
        self.connected = False
        if self._pending:
            self._gap(len(self._pending))
            self._pending.clear()
            self._pending_bytes = 0
        if first:
            self.outages += 1
            self._down_since = asyncio.get_running_loop().time()
            log.warning(
                "Redis backplane %s %s: %s; multicasts reach this process's clients "
                "only (counted in gaps) until it is back; reconnecting",
                "lost" if self._ever_connected else "cannot reach",
                redact(self.url),
                _describe(exc),
            )
        else:
            log.debug("Redis backplane: still down: %s", _describe(exc))

    async def _run(self) -> None:
        backoff = self.backoff_min
        while not self.closed:
            engine = None
            try:
                engine, client, subscriber = await self._connect()
                self._up()
                backoff = self.backoff_min
                await self._serve(engine, client, subscriber)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.closed:
                    self._down(exc)
            finally:
                await _close_quietly(engine)
            if self.closed:
                break
            # Up to 25% jitter, so processes that lost Redis together spread out.
            await asyncio.sleep(backoff * (1 + random.random() / 4))
            backoff = min(backoff * 2, self.backoff_max)

    async def _connect(self) -> tuple[Any, Any, Any]:
        """A fresh :class:`simplew.engines.Engine` (the channel lives on the shard of
        the broadcast stream; sharded pub/sub on a Cluster), subscribed."""
        from simplew.engines import Engine

        engine = Engine.from_urls(self.url)
        try:
            shard = engine.shard_of(None)
            client = engine.client(shard)
            subscriber = engine.subscriber(shard)
            await subscriber.subscribe(self.channel)
            # Up only once Redis confirmed the subscription: nothing sent after is missed.
            message = await subscriber.get_message(timeout=COMMAND_TIMEOUT, confirmations=True)
            if message is None or message["type"] != "subscribe":
                raise TimeoutError("no answer to SUBSCRIBE")
            await client.ping()
        except BaseException:
            await _close_quietly(engine)
            raise
        return engine, client, subscriber

    async def _serve(self, engine: Any, client: Any, subscriber: Any) -> None:
        await until_either_fails(
            self._read(subscriber), self._write(client, engine.publish_command)
        )

    async def _read(self, subscriber: Any) -> None:
        on_message = self._on_message
        get_message = subscriber.get_message
        while True:
            message = await get_message(timeout=1.0)
            if message is not None and message["type"] == "message":
                on_message(message["data"])

    def _on_message(self, data: bytes) -> None:
        if data[1:9] == self.origin:
            self.echoes += 1
            return
        try:
            _origin, records = decode(data)
        except (ValueError, UnicodeDecodeError) as exc:
            self.malformed += 1
            log.debug("Redis backplane: malformed message dropped: %s", exc)
            return
        self.received += len(records)
        deliver = self._deliver
        for opcode, room, payload in records:
            try:
                deliver(opcode, payload, room)
            except Exception:
                log.exception("Redis backplane: delivering a multicast failed")

    async def _write(self, client: Any, command: str = "PUBLISH") -> None:
        pending = self._pending
        wakeup = self._wakeup
        assert wakeup is not None
        channel = self.channel
        header = HEADER.pack(VERSION, self.origin)
        while True:
            if not pending:
                wakeup.clear()
                try:
                    await asyncio.wait_for(wakeup.wait(), self.ping_interval)
                except asyncio.TimeoutError:
                    await client.ping()
                continue
            # What queued up while the last PUBLISH was in flight goes in one message.
            if len(pending) <= MAX_BATCH and self._pending_bytes <= MAX_BATCH_BYTES:
                count = len(pending)
                message = header + b"".join(pending)
                pending.clear()
                self._pending_bytes = 0
            else:
                batch = [pending.popleft()]
                size = len(batch[0])
                while (
                    pending and len(batch) < MAX_BATCH and size + len(pending[0]) <= MAX_BATCH_BYTES
                ):
                    batch.append(pending.popleft())
                    size += len(batch[-1])
                self._pending_bytes -= size
                count = len(batch)
                message = header + b"".join(batch)
            try:
                await client.execute_command(command, channel, message)
            except BaseException:
                self._gap(count)
                raise
            self.published += count
            self.batches += 1
            if self._overflowing and not pending:
                self._overflowing = False


async def cancel_quietly(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait for it to end, whatever it raises."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass


async def until_either_fails(reading: Any, writing: Any) -> None:
    """Run the reading and writing coroutines of one Redis connection until either
    ends; cancel the other and raise the failure (ConnectionError if none)."""
    reader = asyncio.ensure_future(reading)
    writer = asyncio.ensure_future(writing)
    try:
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, writer):
            task.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
    for task in done:
        exc = task.exception()
        if exc is not None:
            raise exc
    raise ConnectionError("Redis connection ended")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _close_quietly(*objects: Any) -> None:
    for obj in objects:
        if obj is None:
            continue
        try:
            await asyncio.wait_for(obj.aclose(), 1.0)
        except BaseException as exc:  # noqa: BLE001 - tearing down a broken connection
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.debug("Redis backplane: closing %r: %r", obj, exc)
