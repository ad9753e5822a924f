"""The server the harnesses attack: static files, typed REST and WebSocket
controllers, a callback endpoint and a compressed endpoint.

Every handler checks the types of what it was given: a value that does not
have its declared type raises AssertionError, which the server answers as a
handler error (HTTP 500 / ``handler_error``), and the harnesses count any
such answer as a finding.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import math
import os
import re
import tempfile
import uuid
from typing import Any, Literal, Optional
from urllib.parse import parse_qs, unquote

from support import install_guard, instrumented_simplew, loop

instrumented_simplew()

from simplew import (
    Controller,
    HttpError,
    Response,
    SimpleWServer,
    WebSocketMessage,
    require_jwt,
    route,
)  # noqa: E402

JWT_KEY = "fuzz-secret-key-0123456789abcdef"
SECRET = b"FUZZ-SECRET-OUTSIDE-THE-STATIC-ROOT"

_STATIC_ROOT: str | None = None


def static_root() -> str:
    """A small static tree, with a symlink to a file outside it and dotfiles
    holding the secret (none of which may be served)."""
    global _STATIC_ROOT
    if _STATIC_ROOT is None:
        base = tempfile.mkdtemp(prefix="simplew-fuzz-")
        root = os.path.join(base, "www")
        os.makedirs(os.path.join(root, "sub"))
        os.makedirs(os.path.join(root, ".git"))
        with open(os.path.join(base, "secret.txt"), "wb") as f:
            f.write(SECRET)
        for name, body in (
            ("index.html", b"<h1>hello</h1>\n"),
            ("a.txt", b"a" * 300),
            ("sub/b.css", b"body{}\n"),
            ("sub/index.html", b"<p>sub</p>"),
            (".env", SECRET),
            (".git/config", SECRET),
        ):
            with open(os.path.join(root, name), "wb") as f:
                f.write(body)
        os.symlink(os.path.join(base, "secret.txt"), os.path.join(root, "leak.txt"))
        _STATIC_ROOT = root
    return _STATIC_ROOT


class Role(enum.Enum):
    USER = "user"
    ADMIN = "admin"
    LEVEL = 3


@dataclasses.dataclass
class Address:
    street: str
    zip: int


@dataclasses.dataclass
class User:
    name: str
    age: int
    tags: list[str] = dataclasses.field(default_factory=list)
    email: str | None = None
    role: Role = Role.USER
    address: Address | None = None
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    born: datetime.date | None = None
    seen: datetime.datetime | None = None
    id: uuid.UUID | None = None
    pair: tuple[int, str] | None = None
    flags: frozenset[str] = frozenset()
    level: Literal["low", "high"] = "low"
    extra: Any = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_float(value: Any) -> bool:
    """A float JSON can carry: finite (NaN and Infinity are not JSON)."""
    return type(value) is float and math.isfinite(value)


_ASCII_INT = re.compile(r"[+-]?[0-9]+")


def _ascii_int(raw: str | None) -> bool:
    """Whether the text an ``int`` parameter was read from is ASCII digits with an
    optional sign (``int()`` also takes other scripts' digits, ``1_000``, spaces)."""
    return raw is not None and _ASCII_INT.fullmatch(raw) is not None


def _segment(path: str, index: int) -> str:
    return unquote(path.rstrip("/").split("/")[index])


def check_user(user: Any) -> User:
    """Every field of a mapped ``User`` has its declared type."""
    assert type(user) is User, type(user)
    assert isinstance(user.name, str)
    assert _is_int(user.age)
    assert isinstance(user.tags, list) and all(isinstance(t, str) for t in user.tags)
    assert user.email is None or isinstance(user.email, str)
    assert isinstance(user.role, Role)
    if user.address is not None:
        assert type(user.address) is Address
        assert isinstance(user.address.street, str) and _is_int(user.address.zip)
    assert isinstance(user.scores, dict)
    assert all(isinstance(k, str) and _is_float(v) for k, v in user.scores.items())
    assert user.born is None or type(user.born) is datetime.date
    assert user.seen is None or type(user.seen) is datetime.datetime
    assert user.id is None or type(user.id) is uuid.UUID
    if user.pair is not None:
        assert type(user.pair) is tuple and len(user.pair) == 2
        assert _is_int(user.pair[0]) and isinstance(user.pair[1], str)
    assert type(user.flags) is frozenset and all(isinstance(f, str) for f in user.flags)
    assert user.level in ("low", "high")
    return user


# -- REST ---------------------------------------------------------------------


class Kind(enum.Enum):
    A = "a"
    B = "b"


@route("/api")
class ApiController(Controller):
    @route("GET", "/items/{id}")
    def get_item(
        self,
        id: int,
        verbose: bool = False,
        limit: int | None = None,
        ratio: float = 1.0,
        kind: Kind = Kind.A,
        mode: Literal["x", "y"] = "x",
        when: datetime.datetime | None = None,
        day: datetime.date | None = None,
        uid: uuid.UUID | None = None,
        name: str = "",
    ) -> dict:
        assert _is_int(id) and type(verbose) is bool and _is_float(ratio)
        assert _ascii_int(_segment(self.request.path, 3))
        assert limit is None or (_is_int(limit) and _ascii_int(self.request.query.get("limit")))
        assert isinstance(kind, Kind) and mode in ("x", "y") and isinstance(name, str)
        assert when is None or type(when) is datetime.datetime
        assert day is None or type(day) is datetime.date
        assert uid is None or type(uid) is uuid.UUID
        return {
            "id": id,
            "verbose": verbose,
            "limit": limit,
            "ratio": ratio,
            "kind": kind,
            "when": when,
            "day": day,
            "uid": uid,
            "name": name,
        }

    @route("DELETE", "/items/{id}")
    def delete_item(self, id: uuid.UUID) -> None:
        assert type(id) is uuid.UUID

    @route("GET", "/nums")
    def nums(self, n: list[int], t: tuple[float, ...] = (), s: set[str] | None = None) -> dict:
        assert isinstance(n, list) and all(_is_int(x) for x in n)
        raw = parse_qs(self.request.query_string, keep_blank_values=True)
        assert all(_ascii_int(x) for x in raw.get("n", ()))
        assert isinstance(t, tuple) and all(_is_float(x) for x in t)
        assert s is None or (type(s) is set and all(isinstance(x, str) for x in s))
        return {"n": n, "t": t, "s": sorted(s) if s else None}

    @route("GET", "/pair")
    def pair(self, p: tuple[int, str]) -> dict:
        assert type(p) is tuple and len(p) == 2 and _is_int(p[0]) and isinstance(p[1], str), p
        return {"p": p}

    @route("GET", "/opt/{a}/{b}")
    def two(self, a: int, b: float | None) -> dict:
        assert _is_int(a) and _ascii_int(_segment(self.request.path, 3))
        assert b is None or _is_float(b)
        return {"a": a, "b": b}

    @route("POST", "/users")
    def create_user(self, user: User) -> Response:
        check_user(user)
        return Response(201, user, {"Location": f"/api/users/{len(user.name)}"})

    @route("PUT", "/users/{name}")
    def put_counts(self, name: str, body: dict[str, int]) -> dict:
        assert isinstance(name, str)
        assert isinstance(body, dict) and all(_is_int(v) for v in body.values())
        return {"name": name, "n": len(body)}

    @route("POST", "/raw")
    def raw(self, body: bytes) -> dict:
        assert type(body) is bytes
        return {"size": len(body)}

    @route("POST", "/text")
    def text(self, body: str) -> str:
        assert type(body) is str
        return body[:64]

    @route("POST", "/list")
    def numbers(self, body: list[int], scale: int = 1) -> dict:
        assert isinstance(body, list) and all(_is_int(x) for x in body) and _is_int(scale)
        return {"sum": sum(body) * scale}

    @route("POST", "/maybe")
    def maybe(self, body: Address | None = None) -> Any:
        assert body is None or type(body) is Address
        return body

    @route("GET", "/slow")
    async def slow(self, n: int = 0) -> dict:
        assert _is_int(n)
        await asyncio.sleep(0)
        return {"n": n}

    @route("GET", "/teapot")
    def teapot(self, code: int = 403) -> None:
        raise HttpError(403 if code != 409 else 409, "no")

    @route("GET", "/secure")
    @require_jwt
    def secure(self) -> dict:
        return {"claims": self.jwt}


# -- WebSocket -------------------------------------------------------------------


@route("/app")
class WsController(Controller):
    @route("WEBSOCKET", "/echo")
    def echo(self, message: WebSocketMessage) -> dict:
        return {"echo": message.body}

    @route("WEBSOCKET", "/user")
    def user(self, message: WebSocketMessage) -> User:
        return check_user(message.map_body(User))

    @route("WEBSOCKET", "/int")
    def integer(self, message: WebSocketMessage) -> dict:
        n = message.map_body(int)
        assert _is_int(n)
        return {"n": n}

    @route("WEBSOCKET", "/str")
    def string(self, message: WebSocketMessage) -> dict:
        s = message.map_body(str)
        assert isinstance(s, str)
        return {"len": len(s)}

    @route("WEBSOCKET", "/text")
    def text(self, message: WebSocketMessage) -> str:
        """Answers with the body itself, as a TEXT message that is not JSON."""
        return "text:" + message.map_body(str)

    @route("WEBSOCKET", "/list")
    def numbers(self, message: WebSocketMessage) -> dict:
        values = message.map_body(list[int])
        assert isinstance(values, list) and all(_is_int(v) for v in values)
        return {"sum": sum(values)}

    @route("WEBSOCKET", "/optional")
    def optional(self, message: WebSocketMessage) -> dict:
        value = message.map_body(Optional[float])
        assert value is None or _is_float(value)
        return {"value": value}

    @route("WEBSOCKET", "/enum")
    def role(self, message: WebSocketMessage) -> dict:
        value = message.map_body(Role)
        assert isinstance(value, Role)
        return {"role": value}

    @route("WEBSOCKET", "/async")
    async def later(self, message: WebSocketMessage) -> dict:
        counts = message.map_body(dict[str, int])
        assert isinstance(counts, dict) and all(_is_int(v) for v in counts.values())
        await asyncio.sleep(0)
        return {"keys": len(counts)}

    @route("WEBSOCKET", "/room")
    def room(self, message: WebSocketMessage) -> dict:
        name = message.map_body(str)
        try:
            self.session.join(name)
        except ValueError:  # not a room name (1 to 255 bytes of UTF-8)
            return {"refused": len(name)}
        self.server.multicast_text("hi " + name, room=name)
        return {"joined": name}

    @route("WEBSOCKET", "/secure")
    @require_jwt
    def secure(self, message: WebSocketMessage) -> dict:
        assert isinstance(message.claims, dict)
        return {"sub": message.claims.get("sub")}


def _echo_callback(session, data) -> None:
    """Echoes at once, so every echo is queued before a CLOSE that follows."""
    if isinstance(data, str):
        session.send_text(data[:200])
    else:
        session.send_binary(data[:200])


class RecordingServer(SimpleWServer):
    """Remembers, in order, whether each request the handler answered was a HEAD."""

    head_flags: list[bool]

    def http_handler(self, request):
        self.head_flags.append(request.method == "HEAD")
        return super().http_handler(request)


_SERVER: RecordingServer | None = None


def server() -> RecordingServer:
    """The one server of this process, compiled (not listening), with small
    limits so the fuzzer reaches them with short inputs."""
    global _SERVER
    if _SERVER is None:
        install_guard()
        s = RecordingServer(
            "127.0.0.1",
            0,
            max_message_size=4096,
            max_rooms_per_session=RECOVERY_MAX_ROOMS,
            max_body_size=2048,
            max_header_size=1024,
            idle_timeout=10.0,
            header_timeout=5.0,
            compression=False,
            metrics=True,
            access_log=True,
            max_write_buffer=8192,
            # the virtual clock runs 20 s ahead in a blink, and the harness's
            # client never answers pings: the heartbeat would close it (1011)
            ping_interval=None,
        )
        s.head_flags = []
        s.limits.max_url_size = 512
        root = static_root()
        s.add_static_content(root, "/")
        s.add_static_content(root, "/cached", timeout=60)
        s.add_dynamic_content(ApiController, "/")
        s.map_get("/hello", lambda name="world": f"hello {name}")
        s.add_websocket_content(WsController, "/ws")
        s.add_websocket_content("/raw", on_message=_echo_callback)
        s.add_websocket_content(WsController, "/wsz", compression=True)
        s.add_cors(["http://a.example", "http://b.example"], credentials=True, max_age=60)
        s.set_token(JWT_KEY)
        s._compile()
        s._loop = loop()  # multicasts from handlers run on this loop
        s._loop_thread_id = __import__("threading").get_ident()
        _SERVER = s
    return _SERVER


def check_released(s: RecordingServer) -> None:
    """Nothing of a finished connection may stay behind in the server."""
    assert len(s.hub) == 0, f"{len(s.hub)} sessions left in the hub"
    assert not s.hub.rooms(), f"rooms left: {s.hub.rooms()}"
    assert not s._http_connections, "an HTTP connection left in the server's set"


# -- simplew.v2 recovery (resume.py) -------------------------------------------------

REVOKED_ROOM = "revoked"  # on_resume_room refuses it: a resumed session loses it
RECOVERY_MAX_ROOMS = 4  # max_rooms_per_session: a resume holds at most 5 streams


@route("/vault")
class VaultController(Controller):
    """Rooms named ``alice-*`` are alice's: only a connection whose user is alice
    joins them (so a ``pub`` of one reaching anyone else came from a resume)."""

    @route("WEBSOCKET", "/join")
    def join(self, message: WebSocketMessage) -> dict:
        room = message.map_body(str)
        if room.startswith("alice-") and self.session.user != "alice":
            return {"refused": room}
        self.session.join(room)
        return {"joined": room}

    @route("WEBSOCKET", "/me")
    def me(self, message: WebSocketMessage) -> dict:
        return {"user": self.session.user}


_RECOVERY_SERVER: SimpleWServer | None = None


def recovery_server() -> SimpleWServer:
    """A second server of this process, with ``simplew.v2`` recovery and JWTs: the
    one resume.py attacks (``server()`` stays as the other harnesses know it)."""
    global _RECOVERY_SERVER
    if _RECOVERY_SERVER is None:
        install_guard()
        s = SimpleWServer(
            "127.0.0.1",
            0,
            recovery=True,
            recovery_window=1e6,  # the virtual clock jumps: no ended session expires
            token_grace=5.0,
            max_message_size=4096,
            max_rooms_per_session=RECOVERY_MAX_ROOMS,
            compression=False,
            metrics=True,
            ping_interval=None,
        )
        s.add_websocket_content(VaultController, "/ws")
        s.on_resume_room(lambda session, room: room != REVOKED_ROOM)
        s.set_token(JWT_KEY)
        s._compile()
        s._loop = loop()
        s._loop_thread_id = __import__("threading").get_ident()
        _RECOVERY_SERVER = s
    return _RECOVERY_SERVER


def fresh_recovery(s: SimpleWServer) -> None:
    """New streams for the next input: new epochs, empty histories, no ended
    session (as ``SimpleWServer._compile`` makes them), so inputs stay independent."""
    from simplew.recovery import Recovery

    old = s.recovery
    assert old is not None
    old.close()
    new = Recovery(s.context, s.recovery_window, s.history_size, s.history_bytes, s.history_ttl)
    new.on_session_end = old.on_session_end
    new.on_resume_room = old.on_resume_room
    s.context.recovery = new  # server.recovery reads it
