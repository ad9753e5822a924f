"""The processes of a deployment: who is serving, and what each one sees.

A :class:`Registry` belongs to each server. Its :meth:`Registry.snapshot` is this
process's state (connections, message and publication totals, rooms, slow clients,
Redis health), made from the values ``/metrics`` reports (:func:`simplew.metrics.collect`).
With ``redis_url`` it writes that snapshot to Redis every second (``registry_ttl`` / 4
when that is shorter), and :func:`read_processes` reads the latest snapshot of every
process whose entry has not expired: a process that stops writing (killed, cut off
from Redis) disappears ``registry_ttl`` seconds after its last write; one that stops
cleanly removes itself.

In Redis, on the shard of the broadcast stream (the hash tag ``{api}`` places both
keys on one Cluster slot):

- ``simplew:{api}:processes``: a hash, process id -> snapshot (JSON);
- ``simplew:{api}:processes:expiry``: a sorted set, process id -> the Redis time
  (ms) its entry expires. Times are Redis's own (``TIME``), so hosts whose clocks
  differ agree on what has expired.

Both keys expire ``registry_ttl`` after the last write of any process. The writes,
reads and removals are Lua scripts (one round trip, atomic).

Loop thread only, like the rest of the Redis code.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable
from operator import itemgetter
from typing import Any

from simplew import metrics

log = logging.getLogger("simplew.registry")

PROCESSES_KEY = "simplew:{api}:processes"
EXPIRY_KEY = "simplew:{api}:processes:expiry"
DEFAULT_TTL = 10.0
WRITE_INTERVAL = 1.0  # seconds between writes (at most ttl / 4)
TOP_ROOMS = 10
READ_TIMEOUT = 5.0  # seconds a read of the registry may take

# the fields of a snapshot that add up over processes and hosts
SUMMED = (
    "connections",
    "http_connections",
    "open_connections",
    "messages_in",
    "messages_out",
    "publications",
    "multicasts",
    "rooms",
    "dropped_slow_clients",
    "dropped_messages",
)

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: processes, expiry; ARGV: id, snapshot, ttl (ms). Drops the expired entries.
_WRITE = (
    _NOW_MS
    + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(gone) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return #gone
"""
)

# KEYS: processes, expiry. The snapshots of the entries not expired.
_READ = (
    _NOW_MS
    + """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')) do
  local snapshot = redis.call('HGET', KEYS[1], id)
  if snapshot then
    out[#out + 1] = snapshot
  end
end
return out
"""
)

# KEYS: processes, expiry; ARGV: id.
_REMOVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
return redis.call('ZREM', KEYS[2], ARGV[1])
"""


def _client(engine: Any) -> Any:
    """The client of the shard the registry lives on: the broadcast stream's."""
    return engine.client(engine.shard_of(None))


async def write_process(engine: Any, snapshot: dict[str, Any], ttl: float) -> None:
    """Store ``snapshot`` (its ``id`` names the entry) for ``ttl`` seconds."""
    data = json.dumps(snapshot, separators=(",", ":"))
    ttl_ms = max(1, int(ttl * 1000))
    await _client(engine).eval(_WRITE, 2, PROCESSES_KEY, EXPIRY_KEY, snapshot["id"], data, ttl_ms)


async def remove_process(engine: Any, process_id: str) -> None:
    """Remove the entry of ``process_id`` (a process that stops)."""
    await _client(engine).eval(_REMOVE, 2, PROCESSES_KEY, EXPIRY_KEY, process_id)


async def read_processes(engine: Any) -> list[dict[str, Any]]:
    """The latest snapshot of every live process of the deployment of ``engine``
    (a :class:`simplew.engines.Engine`), sorted by host, then pid. Each is a dict
    with the keys of :meth:`Registry.snapshot`. Raises redis-py's errors (or
    :class:`TimeoutError` after ``READ_TIMEOUT`` seconds) when Redis cannot answer.
    Call it in the loop of the engine."""
    raw = await asyncio.wait_for(
        _client(engine).eval(_READ, 2, PROCESSES_KEY, EXPIRY_KEY), READ_TIMEOUT
    )
    processes = []
    for item in raw:
        try:
            processes.append(json.loads(item))
        except ValueError:
            log.warning("registry: an entry is not JSON, skipped: %.80r", item)
    processes.sort(key=lambda p: (str(p.get("host")), p.get("pid", 0), str(p.get("id"))))
    return processes


def redis_health(link: Any) -> dict[str, Any] | None:
    """The Redis link of a server (``server.backplane``: a
    :class:`simplew.stream.RedisStream` or a :class:`simplew.backplane.RedisBackplane`)
    shard by shard: connected, outages so far, publications waiting; None without
    Redis."""
    if link is None:
        return None
    shards = getattr(link, "shards", None)
    if shards is not None:  # the streams of recovery: one Shard each
        rows = [
            {
                "index": s.index,
                "connected": s.connected,
                "outages": s.outages,
                "pending": len(s.pending),
            }
            for s in shards
        ]
        mode = "streams"
    else:  # pub/sub: one channel on the broadcast stream's shard
        rows = [
            {
                "index": 0,
                "connected": link.connected,
                "outages": link.outages,
                "pending": link.pending,
            }
        ]
        mode = "pubsub"
    return {"mode": mode, "connected": all(r["connected"] for r in rows), "shards": rows}


def top_rooms(rooms: dict[str, int], count: int = TOP_ROOMS) -> list[list[Any]]:
    """The ``count`` rooms with most members, as ``[room, members]``, largest first."""
    return [
        [room, members] for room, members in heapq.nlargest(count, rooms.items(), itemgetter(1))
    ]


def summarize(processes: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per host and over all ``processes``: the sums of the :data:`SUMMED` fields,
    the number of processes, Redis shards disconnected; and the rooms with most
    members over the processes' own top rooms (a room's members added up)."""
    hosts: dict[str, dict[str, Any]] = {}
    totals: dict[str, Any] = dict.fromkeys(SUMMED, 0)
    totals.update(processes=0, hosts=0, redis_down=0)
    members: dict[str, int] = {}
    for process in processes:
        host = hosts.get(process["host"])
        if host is None:
            host = hosts[process["host"]] = {"host": process["host"], "processes": 0}
            host.update(dict.fromkeys(SUMMED, 0))
        for row in (host, totals):
            row["processes"] += 1
            for name in SUMMED:
                row[name] += process.get(name, 0)
        redis = process.get("redis")
        if redis is not None:
            totals["redis_down"] += sum(not s["connected"] for s in redis["shards"])
        for room, count in process.get("top_rooms", ()):
            members[room] = members.get(room, 0) + count
    totals["hosts"] = len(hosts)
    return {
        "hosts": sorted(hosts.values(), key=itemgetter("host")),
        "totals": totals,
        "top_rooms": top_rooms(members),
    }


class Registry:
    """This process in the registry: its id, its snapshot, the writes to Redis."""

    def __init__(self, server: Any, ttl: float = DEFAULT_TTL) -> None:
        self.server = server
        self.ttl = ttl
        self.process_id = secrets.token_hex(8)
        """Names this process in the registry (random, fixed for the server's life)."""
        self.host = socket.gethostname()
        self.started = time.time()
        self.engine: Any = None  # an Engine of its own while Redis is configured
        self.writes = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        """Seconds between two writes."""
        return min(WRITE_INTERVAL, self.ttl / 4)

    def snapshot(self) -> dict[str, Any]:
        """This process now: ``id``, ``host``, ``pid``, ``started`` and ``time``
        (Unix seconds), ``uptime`` (s), ``connections`` (sessions: WebSocket, event streams),
        ``http_connections``, ``open_connections`` (all client connections),
        ``messages_in``/``messages_out``, ``publications`` (multicasts this process
        published; with Redis, to every process), ``multicasts`` (fanned out here),
        ``rooms`` (with members here), ``followed`` (with recovery and Redis: the
        streams this process follows, :mod:`simplew.stream`), ``top_rooms`` (``[room, members]``, the 10
        largest here), ``dropped_slow_clients``, ``dropped_messages``, ``redis``
        (:func:`redis_health`)."""
        server = self.server
        values = metrics.collect(server)
        link = server.backplane
        rooms = server.hub.rooms()
        now = time.time()
        multicasts = values["simplew_multicasts_total"]
        return {
            "id": self.process_id,
            "host": self.host,
            "pid": os.getpid(),
            "started": self.started,
            "time": now,
            "uptime": round(now - self.started, 3),
            "connections": values["simplew_connections"],
            "http_connections": values["simplew_http_connections"],
            "open_connections": values["simplew_open_connections"],
            "messages_in": values["simplew_messages_in_total"],
            "messages_out": values["simplew_messages_out_total"],
            "publications": multicasts if link is None else link.published,
            "multicasts": multicasts,
            "rooms": len(rooms),
            "followed": values["simplew_streams_followed"],
            "top_rooms": top_rooms(rooms),
            "dropped_slow_clients": values["simplew_dropped_slow_clients_total"],
            "dropped_messages": values["simplew_dropped_messages_total"],
            "redis": redis_health(link),
        }

    async def processes(self) -> list[dict[str, Any]]:
        """Every live process's snapshot: this one's taken now, first, then the
        others' from Redis (:func:`read_processes`); without Redis this one only.
        Raises what :func:`read_processes` raises. Call it in the server's loop."""
        mine = self.snapshot()
        if self.engine is None:
            return [mine]
        others = await read_processes(self.engine)
        return [mine, *(p for p in others if p.get("id") != self.process_id)]

    # -- lifecycle (the server calls these on its loop) -------------------------------

    def start(self, redis_url: Any, ttl: float = DEFAULT_TTL) -> None:
        """Count uptime from now; with ``redis_url``, begin writing this process's
        snapshot every :attr:`interval` seconds, each kept ``ttl`` seconds."""
        self.started = time.time()
        self.ttl = ttl
        if not redis_url:
            return
        from simplew.engines import Engine

        self.engine = Engine.from_urls(redis_url)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="simplew-registry")

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(
                    write_process(self.engine, self.snapshot(), self.ttl), self.ttl
                )
                self.writes += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis is down: the stream or backplane says so
                self.failures += 1
                log.debug("registry: cannot write this process's snapshot: %r", exc)
            await asyncio.sleep(self.interval)

    async def close(self, timeout: float = 1.0) -> None:
        """Stop writing and remove this process's entry (within ``timeout`` s)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        engine, self.engine = self.engine, None
        if engine is None:
            return
        try:
            await asyncio.wait_for(remove_process(engine, self.process_id), timeout)
        except Exception as exc:  # its entry expires anyway
            log.debug("registry: cannot remove this process's entry: %r", exc)
        await engine.aclose()


__all__ = [
    "Registry",
    "read_processes",
    "write_process",
    "remove_process",
    "redis_health",
    "summarize",
    "top_rooms",
    "PROCESSES_KEY",
    "EXPIRY_KEY",
]
