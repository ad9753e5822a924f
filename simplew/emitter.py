"""Publishing into a deployment from a backend that runs no server.

``AsyncEmitter(redis_url)`` (asyncio) and ``Emitter(redis_url)`` (blocking)
store publications in the Redis streams that the servers of a deployment
(``recovery=True``, the same ``redis_url``) share, with the servers' own script
(:func:`simplew.shard.publish_now`): every server that follows a stream
delivers its publications to its WebSocket and SSE clients, at the positions
the emitter returns. ``history_size`` and ``history_ttl`` must be the
servers' (they bound each stream in Redis).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from simplew._fast.connection import check_room
from simplew.backplane import encode_record
from simplew.engines import Engine
from simplew.options import ServerOptions
from simplew.recovery import Position
from simplew.shard import LOAD_CONCURRENCY, publish_now
from simplew.stream import Unavailable

MAX_KEY = 256  # characters of an idempotency key
T = TypeVar("T")


def publication(data: str | bytes, room: str | None, key: str | None = None) -> tuple[int, bytes]:
    """``(opcode, payload)`` of ``data`` (str: TEXT, bytes: BINARY) for ``room``;
    TypeError or ValueError for a room name or an idempotency key that cannot be."""
    if room is not None:
        if not isinstance(room, str):
            raise TypeError(f"room must be a str, not {type(room).__name__}")
        check_room(room)
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY):
        raise ValueError(f"an idempotency key is a str of 1 to {MAX_KEY} characters")
    if isinstance(data, str):
        return 1, data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return 2, bytes(data)
    raise TypeError(f"data must be str or bytes, not {type(data).__name__}")


async def store(
    engine: Engine,
    room: str | None,
    data: str | bytes,
    *,
    maxlen: int,
    ttl: int,
    key: str | None = None,
    replicas: int = 0,
) -> tuple[str, int, bool]:
    """:func:`simplew.shard.publish_now` of ``data``: ``(epoch, offset, duplicate)``;
    :class:`~simplew.stream.Unavailable` when Redis cannot store it now."""
    opcode, payload = publication(data, room, key)
    try:
        return await publish_now(
            engine,
            room,
            encode_record(opcode, room, payload),
            maxlen=maxlen,
            ttl=ttl,
            key=key,
            replicas=replicas,
        )
    except Exception as exc:
        if redis_failed(exc):
            raise Unavailable(f"Redis cannot store it now: {exc}") from exc
        raise


def redis_failed(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis could not be reached or answer (redis-py's errors,
    a socket's, a timeout)."""
    return isinstance(exc, (OSError, asyncio.TimeoutError)) or type(exc).__module__.startswith(
        "redis."
    )


class AsyncEmitter:
    """Publishes into a deployment's streams in Redis (asyncio; one event loop).

    ``async with AsyncEmitter(url) as emitter: await emitter.publish("hi", room="a")``.
    """

    def __init__(
        self,
        redis_url: str | Sequence[str],
        *,
        history_size: int = 10_000,
        history_ttl: float = 300.0,
    ) -> None:
        ServerOptions(history_size=history_size, history_ttl=history_ttl)  # ValueError
        self.engine = Engine.from_urls(redis_url)
        self.maxlen = history_size or 1
        self.ttl = max(1, int(history_ttl + 0.999))

    async def publish(
        self, data: str | bytes, room: str | None = None, key: str | None = None
    ) -> Position:
        """Store ``data`` as the next publication of ``room``'s stream (None: the
        stream of everyone) and return its position. ``key``: an idempotency key;
        a publication of the same room with a key used within ``history_ttl`` is
        not stored again, and the first one's position is returned. Raises
        :class:`~simplew.stream.Unavailable` when its shard cannot store it now."""
        epoch, offset, _ = await store(
            self.engine, room, data, maxlen=self.maxlen, ttl=self.ttl, key=key
        )
        return Position(room, epoch, offset)

    async def broadcast(
        self, data: str | bytes, rooms: Sequence[str], key: str | None = None
    ) -> list[Position]:
        """:meth:`publish` ``data`` in each of ``rooms`` (at most
        ``LOAD_CONCURRENCY`` at once); their positions, in the order of ``rooms``."""
        for room in rooms:
            publication(data, room, key)  # every room checked before any is stored
        gate = asyncio.Semaphore(LOAD_CONCURRENCY)

        async def one(room: str) -> Position:
            async with gate:
                return await self.publish(data, room, key)

        return list(await asyncio.gather(*(one(room) for room in rooms)))

    async def aclose(self) -> None:
        await self.engine.aclose()

    async def __aenter__(self) -> AsyncEmitter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Emitter:
    """:class:`AsyncEmitter` for code without an event loop: each call blocks
    (any thread; the Redis connections live in a thread of the emitter's own)."""

    def __init__(
        self,
        redis_url: str | Sequence[str],
        *,
        history_size: int = 10_000,
        history_ttl: float = 300.0,
        timeout: float = 10.0,
    ) -> None:
        self._emitter = AsyncEmitter(redis_url, history_size=history_size, history_ttl=history_ttl)
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="simplew-emitter", daemon=True
        )
        self._thread.start()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("the emitter is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout)

    def publish(
        self, data: str | bytes, room: str | None = None, key: str | None = None
    ) -> Position:
        """:meth:`AsyncEmitter.publish`, blocking."""
        publication(data, room, key)  # a bad argument raises here, in the caller's thread
        return self._call(self._emitter.publish(data, room, key))

    def broadcast(
        self, data: str | bytes, rooms: Sequence[str], key: str | None = None
    ) -> list[Position]:
        """:meth:`AsyncEmitter.broadcast`, blocking."""
        return self._call(self._emitter.broadcast(data, rooms, key))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self._emitter.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
