"""The Redis deployment a server talks to: one instance, client-side shards, a
Cluster or a Sentinel-managed master, behind one :class:`Engine`.

Configuration (``redis_url=``, ``--redis``, ``SIMPLEW_REDIS``) is one URL, a
comma-separated string or a list; :func:`parse_redis_urls` checks it:

- ``redis://``, ``rediss://``, ``unix://``: one plain instance; several of them are
  client-side shards (every process must be given the same list, in the same order);
- ``redis+cluster://[[user]:password@]host:port[,host:port...]``: a Redis Cluster, alone;
- ``redis+sentinel://[[user]:password@]host:port[,...]/service[/db]``: the master the
  Sentinels name, alone (:func:`simplew.backplane.parse_sentinel_url`).

Rooms to shards: ``shard_index(room, n) = jump_hash(fnv1a_64(room UTF-8), n)``, the
jump consistent hash of Lamping and Veach over the 64-bit FNV-1a of the name, as
Centrifugo maps channels to its Redis shards; the broadcast stream (no room) is placed
as the name ``simplew:all``. One instance, a Sentinel master and a Cluster are one
"shard" (0): on a Cluster the hash slot of the key's tag places it.

Keys: every key of one room shares the hash tag of the room, so that one Lua script
can touch them all on a Cluster: ``simplew:{<tag>}:<suffix>``. A Redis hash tag is the
text between the first ``{`` and the first ``}`` after it, so the tag is the room's
name with ``%``, ``{`` and ``}`` percent-escaped (``%25``, ``%7B``, ``%7D``): a name
without them is its own tag, and no two rooms share a tag. The broadcast stream's
tag is ``simplew:all``; a room whose escaped name starts with ``simplew:`` (the
prefix reserved for such tags) has that colon escaped too (``simplew%3A...``), so a
room named ``simplew:all`` is not the broadcast stream. A session's key is
``simplew:{s:<first 16 hex digits>}:session:<hex digest>``, on the shard
``shard_index(<hex digest>, n)``.

redis-py's asyncio Cluster pub/sub (read in redis 8.1's ``redis/asyncio/cluster.py``):

- ``RedisCluster.pubsub()`` without a node makes a ``ClusterPubSub`` that opens one
  ``PubSub`` per node that owns a slot of a channel given to ``ssubscribe`` (one
  ``SSUBSCRIBE`` per channel, routed by ``get_node_from_key``); their connections are
  taken from the node's own pool (the client's ``max_connections`` per node);
- messages of shard channels come from ``get_sharded_message``, not ``get_message``
  (that one reads the plain-subscribe connection only and fails when there is none).
  It asks the per-node ``PubSub``\\ s one after the other, each with the whole
  ``timeout``: with k nodes an idle call can take k times the timeout, and a message on
  one node waits while another is being waited on. :meth:`Subscriber.get_message`
  therefore polls them in short slices (``POLL_SLICE``), a latency of up to that much;
- ``sunsubscribe`` bookkeeping (dropping a node's ``PubSub`` once it has no channel
  left) is done when ``get_sharded_message`` reads the confirmation, so the reader must
  keep reading;
- after a slots-cache refresh (a MOVED, or a connection error of a cluster command:
  a failover) the ``ClusterPubSub`` re-subscribes its channels on their new owners in
  a background task; nothing refreshes the cache for an idle subscriber whose node
  died, and a ``PubSub`` of a dead node raises ``ConnectionError`` from the read. The
  stream layer treats that as a lost subscription: a new subscriber, and a resync;
- ``ssubscribe`` routes by the client's slot map, which only a failed or redirected
  command refreshes: right after a failover a new subscriber would try the dead node
  (connection refused) and leave an unconnected ``PubSub`` of it in the mapping.
  :meth:`ClusterSubscriber.subscribe` then reloads the map
  (``nodes_manager.initialize()``), drops that ``PubSub`` and subscribes again;
- deliveries are ``smessage`` (``SPUBLISH``); the subscriber here reports them as
  ``message``, and drops (un)subscribe confirmations of both kinds.

Everything here runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from simplew.backplane import (
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    is_sentinel_url,
    parse_sentinel_url,
    redact,
    redis_client,
    split_url,
)

PREFIX = "simplew"
BROADCAST_TAG = "simplew:all"
CLUSTER_SCHEME = "redis+cluster"
PLAIN_SCHEMES = ("redis", "rediss", "unix")
POLL_SLICE = 0.005  # seconds: how long a Cluster subscriber waits on one node at a time

FNV64_OFFSET = 14695981039346656037
FNV64_PRIME = 1099511628211
_MASK64 = (1 << 64) - 1


# -- room -> shard ------------------------------------------------------------------


def fnv1a_64(data: bytes) -> int:
    """The 64-bit FNV-1a hash of ``data``."""
    h = FNV64_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV64_PRIME) & _MASK64
    return h


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash: the bucket in ``range(buckets)`` of the
    64-bit ``key`` (arithmetic modulo 2**64, as the paper's C++)."""
    if buckets <= 0:
        raise ValueError("buckets must be positive")
    key &= _MASK64
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_index(room: str, count: int) -> int:
    """The shard of ``room`` among ``count`` (Centrifugo's channel -> shard mapping)."""
    if count == 1:
        return 0
    return jump_hash(fnv1a_64(room.encode("utf-8")), count)


# -- keys ---------------------------------------------------------------------------


def room_tag(room: str | None) -> str:
    """The hash tag of ``room``'s keys (``None``: the broadcast stream); see the module
    docstring."""
    if room is None:
        return BROADCAST_TAG
    tag = room.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    if tag.startswith(PREFIX + ":"):
        tag = PREFIX + "%3A" + tag[len(PREFIX) + 1 :]
    return tag


def _check_digest(digest_hex: str) -> None:
    if len(digest_hex) < 16 or any(c not in "0123456789abcdef" for c in digest_hex):
        raise ValueError("a session digest is 16 or more lowercase hex digits")


# -- configuration ------------------------------------------------------------------


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower()


def _split(text: str) -> list[str]:
    """A comma-separated list of URLs: a piece without ``://`` continues the previous
    URL (the host list of a Cluster or Sentinel URL)."""
    out: list[str] = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            continue
        if out and "://" not in piece:
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def _host_list(url: str, rest: str) -> list[tuple[str, int]]:
    hosts = []
    for item in rest.split(","):
        host, colon, port_text = item.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{redact(url)!r}: each node must be host:port, got {item.strip()!r}")
        hosts.append((host, int(port_text)))
    return hosts


def parse_cluster_url(
    url: str,
) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """``redis+cluster://[[user]:password@]host:port[,host:port...]`` as
    (startup nodes, username, password); ValueError if it is not of that form."""
    hosts, path, username, password = split_url(url, CLUSTER_SCHEME)
    if path:
        raise ValueError(
            f"{redact(url)!r}: a Cluster has no database: "
            f"{CLUSTER_SCHEME}://host:port[,host:port...]"
        )
    return _host_list(url, hosts), username, password


def _check_plain(url: str) -> str:
    """A normalised form of a plain URL, to find duplicates; ValueError if malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"{redact(url)!r}: {error}") from None
    scheme = parts.scheme.lower()
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"{redact(url)!r}: a unix:// URL needs a socket path")
        return f"unix://{parts.path}"
    if not parts.hostname:
        raise ValueError(f"{redact(url)!r}: no host")
    path = parts.path.strip("/") or "0"
    if not path.isdigit():
        raise ValueError(f"{redact(url)!r}: the database must be a number, got {path!r}")
    return f"{scheme}://{parts.hostname.lower()}:{port or 6379}/{int(path)}"


def parse_redis_urls(value: str | Sequence[str]) -> list[str]:
    """The Redis URLs of ``value`` (one URL, a comma-separated string, or a list whose
    items may be comma-separated too), checked; ValueError (without passwords) names
    what is wrong."""
    items = [value] if isinstance(value, str) else list(value)
    urls = [url for item in items for url in _split(item) if url]
    if not urls:
        raise ValueError("no Redis URL given")
    special = [url for url in urls if _scheme(url) in (CLUSTER_SCHEME, "redis+sentinel")]
    if special and len(urls) > 1:
        kind = "redis+cluster://" if _scheme(special[0]) == CLUSTER_SCHEME else "redis+sentinel://"
        raise ValueError(
            f"a {kind} URL names the whole deployment and goes alone, "
            f"got {len(urls)} URLs: {', '.join(redact(u) for u in urls)}"
        )
    seen: dict[str, str] = {}
    for url in urls:
        scheme = _scheme(url)
        if "://" not in url:
            raise ValueError(f"not a URL: {redact(url)!r}")
        if scheme == CLUSTER_SCHEME:
            parse_cluster_url(url)
        elif scheme == "redis+sentinel":
            parse_sentinel_url(url)
        elif scheme in PLAIN_SCHEMES:
            normal = _check_plain(url)
            if normal in seen:
                raise ValueError(
                    f"the same Redis is listed twice: {redact(seen[normal])!r} and {redact(url)!r}"
                )
            seen[normal] = url
        else:
            raise ValueError(
                f"{redact(url)!r}: unknown scheme {scheme + '://'!r}; expected redis://, "
                "rediss://, unix://, redis+cluster:// or redis+sentinel://"
            )
    return urls


# -- subscribers --------------------------------------------------------------------


_TYPES = {
    "message": "message",
    "smessage": "message",
    "subscribe": "subscribe",
    "ssubscribe": "subscribe",
}


def _typed(message: Any) -> dict[str, Any] | None:
    """redis-py's message as a dict whose type is ``message`` (a delivery, plain or
    sharded) or ``subscribe`` (a confirmation); None for anything else."""
    out = dict(message)
    kind = out["type"]
    if isinstance(kind, bytes):
        kind = kind.decode()
    out["type"] = _TYPES.get(kind)
    return out if out["type"] is not None else None


class Subscriber:
    """Pub/sub on one shard: plain ``SUBSCRIBE`` (one instance, a shard, a Sentinel
    master). ``get_message`` returns redis-py's dicts of type ``message`` only."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub
        self.channels: set[str] = set()

    async def subscribe(self, *channels: str) -> None:
        if channels:
            await self._pubsub.subscribe(*channels)
            self.channels.update(channels)

    async def unsubscribe(self, *channels: str) -> None:
        if channels:
            await self._pubsub.unsubscribe(*channels)
            self.channels.difference_update(channels)

    async def get_message(
        self, timeout: float = 0.0, confirmations: bool = False
    ) -> dict[str, Any] | None:
        """The next message, or None after ``timeout`` seconds. ``confirmations``:
        also the confirmations of subscriptions, as type ``subscribe`` (the channel
        is subscribed from then on: nothing published after is missed)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._pubsub.connection is None:  # never subscribed: nothing can come
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                return None
            message = await self._pubsub.get_message(
                ignore_subscribe_messages=not confirmations,
                timeout=max(0.0, deadline - time.monotonic()),
            )
            if message is not None:
                out = _typed(message)
                if out is not None:
                    return out
            # an (un)subscribe confirmation ends redis-py's wait early: wait on
            if time.monotonic() >= deadline:
                return None

    async def aclose(self) -> None:
        await self._pubsub.aclose()


class ClusterSubscriber(Subscriber):
    """Sharded pub/sub on a Cluster: ``SSUBSCRIBE`` on the owner of each channel's slot
    (redis-py's ``ClusterPubSub``); ``smessage`` deliveries are reported as
    ``message``."""

    def __init__(self, cluster: Any) -> None:
        super().__init__(cluster.pubsub())
        self._cluster = cluster
        # ssubscribe adds a node's PubSub to the mapping before its connection is
        # made; a read of it meanwhile connects the same connection a second time,
        # and the SSUBSCRIBE (its confirmation, its messages) is lost with the
        # socket it went on. Reads and (un)subscriptions therefore take turns.
        self._turn = asyncio.Lock()

    async def subscribe(self, *channels: str) -> None:
        """``SSUBSCRIBE`` each channel on the node of its slot. The slot map is the
        client's: after a failover nothing has refreshed yet, the owner it names is
        dead; then the map is read again and the channels subscribed once more."""
        from redis.exceptions import ConnectionError, TimeoutError

        if not channels:
            return
        async with self._turn:
            try:
                await self._pubsub.ssubscribe(*channels)
            except (ConnectionError, TimeoutError, OSError):
                await self._cluster.nodes_manager.initialize()
                mapping = self._pubsub.node_pubsub_mapping
                for name, pubsub in list(mapping.items()):
                    if pubsub.connection is None and not pubsub.subscribed:
                        del mapping[name]  # never connected: the dead node's
                await self._pubsub.ssubscribe(*channels)
        self.channels.update(channels)

    async def unsubscribe(self, *channels: str) -> None:
        if channels:
            async with self._turn:
                await self._pubsub.sunsubscribe(*channels)
            self.channels.difference_update(channels)

    async def get_message(
        self, timeout: float = 0.0, confirmations: bool = False
    ) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            nodes = len(self._pubsub.node_pubsub_mapping)
            remaining = max(0.0, deadline - time.monotonic())
            if nodes == 0:
                await asyncio.sleep(min(remaining, POLL_SLICE))
            else:
                wait = min(remaining, POLL_SLICE) / nodes  # short: a subscribe waits its turn
                async with self._turn:
                    message = await self._pubsub.get_sharded_message(
                        ignore_subscribe_messages=not confirmations, timeout=wait
                    )
                if message is not None:
                    out = _typed(message)
                    if out is not None:
                        return out
            if time.monotonic() >= deadline:
                return None


# -- engines ------------------------------------------------------------------------


def _cluster_client(url: str) -> Any:
    """redis-py's asyncio ``RedisCluster`` on the startup nodes of ``url``: it follows
    MOVED and ASK, and failovers (a connection error refreshes the slots and retries,
    its default retry policy), with simplew's short connect and command timeouts."""
    try:
        from redis.asyncio.cluster import ClusterNode, RedisCluster
    except ImportError:
        raise ImportError(
            "a Redis URL needs the Redis client: pip install 'simplew[redis]'"
        ) from None
    nodes, username, password = parse_cluster_url(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        username=username,
        password=password,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        socket_keepalive=True,
    )


class Engine:
    """The Redis deployment of ``urls``: which shard a room lives on, a client and a
    subscriber per shard, the key of each thing. Clients are made on first use and
    kept; :meth:`aclose` closes them. Loop thread only."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = parse_redis_urls(urls)
        scheme = _scheme(self.urls[0])
        if scheme == CLUSTER_SCHEME:
            self.kind = "cluster"
        elif is_sentinel_url(self.urls[0]):
            self.kind = "sentinel"
        elif len(self.urls) == 1:
            self.kind = "single"
        else:
            self.kind = "shards"
        self._clients: dict[int, Any] = {}
        self._subscribers: set[Subscriber] = set()

    @classmethod
    def from_urls(cls, urls: str | Sequence[str]) -> Engine:
        return cls(parse_redis_urls(urls))

    @property
    def size(self) -> int:
        """The number of shards (1 unless client-side shards)."""
        return len(self.urls) if self.kind == "shards" else 1

    @property
    def publish_command(self) -> str:
        """The command that publishes on a room's channel: sharded pub/sub on a Cluster."""
        return "SPUBLISH" if self.kind == "cluster" else "PUBLISH"

    def describe(self) -> str:
        """The deployment for the log, without passwords."""
        urls = ", ".join(redact(url) for url in self.urls)
        if self.kind == "shards":
            return f"{self.size} Redis shards: {urls}"
        return f"Redis {self.kind}: {urls}"

    # -- placement

    def shard_of(self, room: str | None) -> int:
        """The shard of ``room``'s keys and channel (None: the broadcast stream)."""
        if self.kind != "shards":
            return 0
        return shard_index(BROADCAST_TAG if room is None else room, self.size)

    def session_shard(self, digest_hex: str) -> int:
        """The shard of the session whose id has this (SHA-256) hex digest."""
        _check_digest(digest_hex)
        return shard_index(digest_hex, self.size) if self.kind == "shards" else 0

    @staticmethod
    def key(room: str | None, suffix: str) -> str:
        """``simplew:{<tag>}:<suffix>``: a key of ``room`` (None: the broadcast stream)."""
        return f"{PREFIX}:{{{room_tag(room)}}}:{suffix}"

    @staticmethod
    def session_key(digest_hex: str) -> str:
        """The key of the session whose id has this (SHA-256) hex digest."""
        _check_digest(digest_hex)
        return f"{PREFIX}:{{s:{digest_hex[:16]}}}:session:{digest_hex}"

    # -- connections

    def _check(self, shard: int) -> None:
        if not 0 <= shard < self.size:
            raise IndexError(f"shard {shard} of {self.size}")

    def client(self, shard: int) -> Any:
        """The asyncio client for commands and EVAL on ``shard``: ``redis.asyncio.Redis``
        (a Sentinel master's one for a Sentinel URL) or ``RedisCluster``."""
        self._check(shard)
        client = self._clients.get(shard)
        if client is None:
            if self.kind == "cluster":
                client = _cluster_client(self.urls[0])
            else:
                client = redis_client(self.urls[shard])
            self._clients[shard] = client
        return client

    def subscriber(self, shard: int) -> Subscriber:
        """A new subscriber on ``shard`` (its own connections; :meth:`Subscriber.aclose`
        it, or :meth:`aclose` the engine)."""
        client = self.client(shard)
        subscriber: Subscriber
        if self.kind == "cluster":
            subscriber = ClusterSubscriber(client)
        else:
            subscriber = Subscriber(client.pubsub())
        self._subscribers.add(subscriber)
        close = subscriber.aclose

        async def aclose() -> None:
            self._subscribers.discard(subscriber)
            await close()

        subscriber.aclose = aclose  # type: ignore[method-assign]
        return subscriber

    async def aclose(self) -> None:
        """Close every subscriber and client made here."""
        subscribers, self._subscribers = list(self._subscribers), set()
        clients, self._clients = list(self._clients.values()), {}
        for item in [*subscribers, *clients]:
            try:
                await item.aclose()
            except Exception:  # closing: a broken connection is fine
                pass


__all__ = [
    "Engine",
    "Subscriber",
    "ClusterSubscriber",
    "fnv1a_64",
    "jump_hash",
    "shard_index",
    "room_tag",
    "parse_redis_urls",
    "parse_cluster_url",
]
