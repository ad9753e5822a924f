"""The server API: JSON over HTTP POST, for backends (docs/api.md).

``SimpleWServer(api_path="/api", api_token=...)`` answers ``POST /api/<method>``
with a JSON object in and out, for requests carrying ``Authorization: Bearer
<api_token>`` (compared in constant time; 401 otherwise). The methods publish
(with an idempotency key), broadcast to many rooms, read presence and history,
and act on connections (disconnect, join, leave); ``info`` describes the
processes. With Redis every method acts on the whole deployment: publications,
history and presence through the streams in Redis (:mod:`simplew.stream`), acts
on connections through the command channel (:class:`simplew.commands.Commands`),
which every process with the API listens to, and ``info`` from the registry of
processes (:mod:`simplew.registry`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from simplew._fast.plainjson import decode_json
from simplew.auth import bearer_challenge, bearer_matches
from simplew.backplane import decode_records
from simplew.commands import Commands
from simplew.emitter import publication, redis_failed
from simplew.emitter import store as store_publication
from simplew.recovery import log_id
from simplew.rest import Response
from simplew.shard import LOAD_CONCURRENCY
from simplew.stream import Unavailable

MAX_ROOMS = 1000  # rooms of one broadcast
MAX_LIMIT = 1000  # publications of one history answer
DEFAULT_LIMIT = 100
MAX_KEYS = 100_000  # idempotency keys kept in memory (without Redis), oldest forgotten first
MAX_REASON = 123  # bytes of a close reason
Handler = Callable[[dict[str, Any]], Awaitable[Any]]
T = TypeVar("T")


class ApiError(Exception):
    """An answer other than 200: ``{"error": error, "message": message}``."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}
        self.extra = extra  # more fields of the answer

    def answer(self) -> Response:
        body = {"error": self.error, "message": self.message, **self.extra}
        return Response(self.status, body, self.headers)


async def _from_redis(call: Awaitable[T]) -> T:
    """The result of ``call``; ApiError 503 when Redis could not be reached or answer."""
    try:
        return await call
    except Exception as exc:
        if not redis_failed(exc):
            raise
        raise _unavailable(f"Redis cannot answer now: {exc}") from None


def _unavailable(message: str, **extra: Any) -> ApiError:
    headers = {"Retry-After": str(Unavailable.retry_after)}
    return ApiError(503, "unavailable", message, headers, **extra)


class Keys:
    """Idempotency keys of this process: ``(room, key)`` -> the first answer, for
    ``ttl`` seconds, at most ``limit`` of them (the oldest forgotten first)."""

    def __init__(self, ttl: float, limit: int = MAX_KEYS) -> None:
        self.ttl = ttl
        self.limit = limit
        self._kept: OrderedDict[tuple[str | None, str], tuple[float, Any]] = OrderedDict()

    def get(self, room: str | None, key: str) -> Any:
        found = self._kept.get((room, key))
        if found is None or found[0] <= time.monotonic():
            return None
        return found[1]

    def put(self, room: str | None, key: str, answer: Any) -> None:
        now = time.monotonic()
        kept = self._kept
        kept.pop((room, key), None)
        kept[(room, key)] = (now + self.ttl, answer)
        while kept and (len(kept) > self.limit or next(iter(kept.values()))[0] <= now):
            kept.popitem(last=False)


# -- reading a request's fields -----------------------------------------------------


def _fields(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(400, "bad_field", f"unknown field {unknown[0]!r}; expected {list(allowed)}")


def _room(body: dict[str, Any], required: bool = True) -> str | None:
    room = body.get("room")
    if room is None and not required:
        return None
    if not isinstance(room, str):
        raise ApiError(400, "bad_field", "'room' must be a room name (a string)")
    _check(room)
    return room


def _check(room: str, key: str | None = None) -> None:
    try:
        publication("", room, key)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "bad_field", str(exc)) from None


def _one_of(body: dict[str, Any], first: str, second: str, hint: str) -> tuple[str, str]:
    """``(name, value)`` of the one field of ``first`` and ``second`` given, a string."""
    given = [name for name in (first, second) if body.get(name) is not None]
    if len(given) != 1:
        raise ApiError(400, "bad_field", f"give one of '{first}' or '{second}' ({hint})")
    name = given[0]
    if not isinstance(body[name], str):
        raise ApiError(400, "bad_field", f"'{name}' must be a string")
    return name, body[name]


def _data(body: dict[str, Any]) -> str | bytes:
    name, value = _one_of(body, "text", "binary", "a string, or base64")
    if name == "text":
        return value
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise ApiError(400, "bad_field", "'binary' is not valid base64") from None


def _key(body: dict[str, Any]) -> str | None:
    key = body.get("key")
    if key is not None:
        _check("x", key if isinstance(key, str) else "")
    return key


def _target(body: dict[str, Any]) -> tuple[str, str]:
    """``("session", public id)`` or ``("user", user)``: exactly one must be given."""
    return _one_of(body, "session", "user", "a public id as presence lists, or a JWT sub")


def _int_field(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if type(value) is not int or not low <= value <= high:
        raise ApiError(400, "bad_field", f"'{name}' must be an integer from {low} to {high}")
    return value


def _since(body: dict[str, Any]) -> tuple[str, int] | None:
    since = body.get("since")
    if since is None:
        return None
    if (
        type(since) is not dict
        or set(since) != {"epoch", "offset"}
        or not isinstance(since["epoch"], str)
        or type(since["offset"]) is not int
        or since["offset"] < 0
    ):
        raise ApiError(400, "bad_field", '\'since\' must be {"epoch": string, "offset": int >= 0}')
    return since["epoch"], since["offset"]


def _publication(offset: int, opcode: int, payload: bytes) -> dict[str, Any]:
    if opcode == 1:
        return {"offset": offset, "text": payload.decode("utf-8", "replace")}
    return {"offset": offset, "binary": base64.b64encode(payload).decode("ascii")}


class ServerApi:
    """The API of one server: authentication, the methods, the command channel."""

    def __init__(self, server: Any, path: str, token: str) -> None:
        self.server = server
        self.path = path
        self.route = path.rstrip("/") + "/{method}"
        self._token = token.encode("utf-8")
        self.keys = Keys(server.options.history_ttl)
        self.process_id = server.registry.process_id  # one name for this process
        self.commands: Commands | None = None
        self.methods: dict[str, Handler] = {
            "publish": self.publish,
            "broadcast": self.broadcast,
            "presence": self.presence,
            "presence_stats": self.presence_stats,
            "history": self.history,
            "disconnect": self.disconnect,
            "join": self.join,
            "leave": self.leave,
            "info": self.info,
        }

    # -- lifecycle (the server's loop) ---------------------------------------------

    def start(self) -> None:
        """With Redis: listen to the command channel."""
        if self.server.redis_url:
            self.commands = Commands(self.server.redis_url, self.process_id, self.act)
            self.commands.start()

    async def close(self) -> None:
        if self.commands is not None:
            await self.commands.close()
            self.commands = None

    # -- HTTP --------------------------------------------------------------------------

    async def handle(self, request: Any, method: str) -> Response:
        """``POST <path>/<method>``: the answer (the REST router calls this)."""
        try:
            self._authenticate(request)
            handler = self.methods.get(method)
            if handler is None:
                raise ApiError(404, "unknown_method", f"no API method {method!r}")
            try:
                body = decode_json(request.body) if request.body else {}
            except (ValueError, RecursionError) as exc:
                raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from None
            if type(body) is not dict:
                raise ApiError(400, "bad_json", "the body must be a JSON object")
            return Response(200, await handler(body))
        except ApiError as exc:
            return exc.answer()

    def _authenticate(self, request: Any) -> None:
        if bearer_matches(request.headers, self._token):
            return
        raise ApiError(
            401,
            "unauthorized",
            "the API needs 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": bearer_challenge(request.headers, "simplew")},
        )

    # -- publications ------------------------------------------------------------------

    def _store(self) -> Any:
        recovery = self.server.recovery
        return None if recovery is None else recovery.store

    async def _publish(
        self, data: str | bytes, room: str | None, key: str | None
    ) -> dict[str, Any]:
        """One publication; with ``key``, once. Raises ApiError 503.

        With Redis it is stored by one script call of its own (with its key, if
        any), not queued behind the shard's batches: a shard that cannot be
        reached answers at once, and nothing waits to be published later."""
        store = self._store()
        if store is not None:  # the key lives in Redis, beside the stream
            try:
                epoch, offset, duplicate = await store_publication(
                    store.engine,
                    room,
                    data,
                    maxlen=store.recovery.streams.history_size or 1,
                    ttl=store.ttl_seconds,
                    key=key,
                    replicas=store.wait_replicas,
                )
            except Unavailable as exc:
                raise _unavailable(str(exc)) from None
            return {"room": room, "epoch": epoch, "offset": offset, "duplicate": duplicate}
        if key is not None:
            first = self.keys.get(room, key)
            if first is not None:
                return {**first, "duplicate": True}
        try:
            position = await self.server.publish(data, room=room)
        except Unavailable as exc:
            raise _unavailable(str(exc)) from None
        answer: dict[str, Any] = {"room": room, "epoch": None, "offset": None}
        if position is not None:
            answer.update(epoch=position.epoch, offset=position.offset)
        if key is not None:
            self.keys.put(room, key, answer)
        return {**answer, "duplicate": False}

    async def publish(self, body: dict[str, Any]) -> Any:
        _fields(body, ("room", "text", "binary", "key"))
        return await self._publish(_data(body), _room(body, required=False), _key(body))

    async def broadcast(self, body: dict[str, Any]) -> Any:
        _fields(body, ("rooms", "text", "binary", "key"))
        rooms = body.get("rooms")
        if type(rooms) is not list or not 0 < len(rooms) <= MAX_ROOMS:
            raise ApiError(400, "bad_field", f"'rooms' must be a list of 1 to {MAX_ROOMS} rooms")
        for room in rooms:
            if not isinstance(room, str):
                raise ApiError(400, "bad_field", "each of 'rooms' must be a room name")
            _check(room)
        if len(set(rooms)) != len(rooms):
            raise ApiError(400, "bad_field", "'rooms' names a room twice")
        data, key = _data(body), _key(body)
        gate = asyncio.Semaphore(LOAD_CONCURRENCY)

        async def one(room: str) -> dict[str, Any]:
            async with gate:
                try:
                    return await self._publish(data, room, key)
                except ApiError as exc:
                    return {"room": room, "error": exc.error, "message": exc.message}

        positions = await asyncio.gather(*(one(room) for room in rooms))
        if any("error" in item for item in positions):
            message = "some rooms could not be published (see positions); retry with a key"
            raise _unavailable(message, positions=positions)
        return {"positions": positions}

    # -- presence ------------------------------------------------------------------------

    async def _entries(self, room: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = await _from_redis(self.server.presence_async(room))
        return entries

    async def presence(self, body: dict[str, Any]) -> Any:
        _fields(body, ("room",))
        room = _room(body)
        assert room is not None
        return {"room": room, "presence": await self._entries(room)}

    async def presence_stats(self, body: dict[str, Any]) -> Any:
        _fields(body, ("room",))
        room = _room(body)
        assert room is not None
        entries = await self._entries(room)
        users = {entry["user"] for entry in entries if entry["user"] is not None}
        return {"room": room, "clients": len(entries), "users": len(users)}

    # -- history ---------------------------------------------------------------------------

    async def history(self, body: dict[str, Any]) -> Any:
        _fields(body, ("room", "since", "limit"))
        room = _room(body, required=False)
        since = _since(body)
        limit = _int_field(body, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        recovery = self.server.recovery
        if recovery is None:
            raise ApiError(400, "no_history", "history needs recovery=True (--recovery)")
        if recovery.store is not None:
            return await _from_redis(self._redis_history(recovery.store, room, since, limit))
        streams = recovery.streams
        streams.expire()
        if room not in streams:
            return _history(room, None, 0, [], False)
        epoch, top = streams.position(room)
        held = None if since is None else streams.since(room, since[0], since[1])
        reset = since is not None and held is None
        if held is not None:
            held = held[:limit]
        else:
            held = (streams.since(room, epoch, top - streams.held(room)) or [])[-limit:]
        publications = []
        for message in held:
            pub = json.loads(message)
            pub.pop("type"), pub.pop("room"), pub.pop("epoch")
            publications.append(pub)
        return _history(room, epoch, top, publications, reset)

    async def _redis_history(
        self, store: Any, room: str | None, since: tuple[str, int] | None, limit: int
    ) -> dict[str, Any]:
        engine = store.engine
        client = engine.client(engine.shard_of(room))
        key = engine.key(room, "stream")
        epoch_raw, top_raw = await client.hmget(engine.key(room, "meta"), "epoch", "top")
        if epoch_raw is None:
            return _history(room, None, 0, [], False)
        epoch, top = epoch_raw.decode(), int(top_raw or 0)
        oldest = time.time() - store.history_ttl
        publications: list[dict[str, Any]] | None = None
        if since is not None and since[0] == epoch and since[1] <= top:
            rows = await client.xrange(key, f"{since[1] + 1}-0", f"{top}-1", count=limit)
            publications = _rows(rows, oldest)
            if since[1] < top and (not publications or publications[0]["offset"] != since[1] + 1):
                publications = None  # trimmed or expired: it cannot be continued
        reset = since is not None and publications is None
        if publications is None:
            rows = await client.xrevrange(key, f"{top}-1", "-", count=limit)
            publications = _rows(rows[::-1], oldest)
        return _history(room, epoch, top, publications, reset)

    # -- acts on connections ---------------------------------------------------------------

    async def disconnect(self, body: dict[str, Any]) -> Any:
        _fields(body, ("session", "user", "code", "reason"))
        kind, who = _target(body)
        code = _int_field(body, "code", 4000, 4000, 4999)
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason.encode("utf-8")) > MAX_REASON:
            raise ApiError(
                400, "bad_field", f"'reason' must be a string of {MAX_REASON} bytes at most"
            )
        return await self._everywhere("disconnect", {kind: who, "code": code, "reason": reason})

    async def join(self, body: dict[str, Any]) -> Any:
        _fields(body, ("room", "session", "user"))
        room = _room(body)
        kind, who = _target(body)
        return await self._everywhere("join", {kind: who, "room": room})

    async def leave(self, body: dict[str, Any]) -> Any:
        _fields(body, ("room", "session", "user"))
        room = _room(body)
        kind, who = _target(body)
        return await self._everywhere("leave", {kind: who, "room": room})

    async def info(self, body: dict[str, Any]) -> Any:
        _fields(body, ())
        processes = await _from_redis(self.server.registry.processes())
        processes.sort(key=lambda p: (str(p.get("host")), p.get("pid", 0), str(p.get("id"))))
        return {"processes": processes}

    async def _everywhere(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """``act`` here, or with Redis on every process; the sum of their counts."""
        if self.commands is None:
            return {"count": self.act(op, args), "processes": 1}
        answers = await _from_redis(self.commands.ask(op, args))
        return {"count": sum(answers), "processes": len(answers)}

    def act(self, op: str, args: dict[str, Any]) -> Any:
        """One command on this process's sessions (loop thread): how many it acted on."""
        server = self.server
        session, user = args.get("session"), args.get("user")
        count = 0
        for conn in server.hub.sessions():
            if (session is not None and log_id(conn.id) != session) or (
                user is not None and conn.user != user
            ):
                continue
            if op == "disconnect":
                self._end(conn)
                conn.close(args["code"], args["reason"])
                count += 1
            elif op == "join":
                count += bool(conn.join(args["room"]))
            elif op == "leave":
                count += bool(conn.leave(args["room"]))
        return count

    def _end(self, conn: Any) -> None:
        """A simplew.v2 session disconnected by the API is not kept for resuming."""
        if not conn.v2 or self.server.recovery is None:
            return
        conn.superseded = True
        store = self._store()
        if store is not None:
            store.forget_session(conn)


def _history(
    room: str | None, epoch: str | None, top: int, publications: list[Any], reset: bool
) -> dict[str, Any]:
    """The answer of ``history``."""
    return {
        "room": room,
        "epoch": epoch,
        "offset": top,
        "publications": publications,
        "reset": reset,
    }


def _rows(rows: list[Any], oldest: float) -> list[dict[str, Any]]:
    """Publications of a Redis Stream's entries; those stored before ``oldest`` (Unix
    time) are no longer recoverable, nor what comes before them."""
    out: list[dict[str, Any]] = []
    for entry_id, fields in rows:
        try:
            if float(fields.get(b"t", b"0")) < oldest:
                out.clear()
                continue
            opcode, _room, payload = decode_records(fields[b"r"])[0]
        except (KeyError, ValueError):
            continue
        out.append(_publication(int(entry_id.split(b"-")[0]), opcode, payload))
    return out
