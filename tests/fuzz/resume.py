"""Harness 7: ``simplew.v2`` resumes and the identity they need (simplew.recovery,
simplew.tokens).

Before each input fresh streams (new epochs, empty histories) get two ended
sessions on the recovery server of targets.py: alice's (her JWT; rooms
``alice-private`` and ``revoked``, which ``on_resume_room`` refuses) and an
anonymous one (no token; room ``open``), then five publications (to
``alice-private``, ``open``, everyone, ``revoked``, ``other``). The input then
chooses an upgrade: with ``resume=1`` in the query or not, a token (alice's,
one of alice's that expires in 60 s, bob's, "Alice"'s, expired, not yet
valid, signed with another key, ``alg: none``, a non-string ``sub``, fuzz
bytes) and where it goes (``Authorization``, the ``bearer`` subprotocol
before or after ``simplew.v2``, ``bearer.<token>``, both); then the first
message: a ``resume`` message built from parts (the session id: alice's, the
anonymous one's, fuzz, missing, not a string; up to 7 ``streams`` entries,
each a room, an epoch and an offset of every accepted and refused form, or
an entry of the wrong shape; ``type`` first or not, ``resume`` or another
type; extra fields), an envelope, fuzz text, a BINARY resume, or nothing
(then the resume timeout passes); then up to three messages (``refresh``
with any token, ``/me``, ``/join`` of a room, an unknown protocol message,
fuzz text), five live publications and some virtual time (token expiry,
grace period).

Invariants, from docs/protocol.md 5.2-5.8 and docs/security.md, computed from
the input alone (the resume message as the table of 5.3 accepts it, the
identity as PyJWT decodes the token the rules of 5.7 pick): no exception,
nothing logged at ERROR; a 101 with ``simplew.v2``; with ``resume=1``, a
first message that is not a protocol message of type ``resume`` closes 1002
without a welcome, no message at all closes 1008; otherwise the first message
is a welcome with the documented fields, order and types; ``recovered: true``
exactly when the resume is well-formed, the session known and (for alice's
session) the token valid with ``sub`` alice; then the session id, each
stream's entry (the position sent and its missed count when its epoch is
current and the offset not beyond the stream, else the position now), ``left``
(the rooms sent that the session is not in, sorted) and the missed ``pub``
messages stream by stream, exactly; otherwise a new id, the broadcast
stream's position now, ``missed: 0``, no ``left``; a refused attempt counted
once in ``resumes_refused``; ``/me`` answers the user of the connection's own
token; a ``join`` gives the room's position now; a refresh closes with 4003
exactly when the protocol says; live publications exactly those of the
connection's streams, offsets following by one per stream; a ``pub`` of
``alice-private`` only ever to alice; close codes from the documented set;
alice's ended session still resumed by alice's token afterwards with every
publication of her rooms; nothing left in the hub, one ended session per
session id.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import jwt as pyjwt

import simplew.recovery
import support
from support import Client
from targets import (
    JWT_KEY,
    RECOVERY_MAX_ROOMS,
    REVOKED_ROOM,
    check_released,
    fresh_recovery,
    recovery_server,
)
from wire import Reader, client_frame, close_code, parse_responses, parse_server_frames

stats = support.stats

# docs/protocol.md 5.2, 5.3: the accepted forms
SESSION_FORM = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")
EPOCH_FORM = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
MAX_OFFSET = 10**18
CLOSE_CODES = {1000, 1001, 1002, 1007, 1008, 1009, 1011, 4001, 4003}
WELCOME_KEYS = ["type", "session", "recovered", "missed", "streams"]
PUB_KEYS = ["type", "room", "epoch", "offset", "text"]
ALICE_ROOMS = frozenset({"alice-private", REVOKED_ROOM})
ANON_ROOMS = frozenset({"open"})
SETUP_PUBS = (
    ("alice-private", "a1"),
    ("open", "o1"),
    (None, "all1"),
    (REVOKED_ROOM, "r1"),
    ("other", "x1"),
    ("alice-private", "a2"),
)
LIVE_PUBS = (
    ("alice-private", "a3"),
    ("open", "o2"),
    (None, "all2"),
    (REVOKED_ROOM, "r2"),
    ("lobby", "l2"),
)
JOIN_ROOMS = ("alice-private", "open", "lobby", REVOKED_ROOM, "alice-", "other")
# the rooms a resume entry names (fuzz text aside)
ENTRY_ROOMS: tuple[Any, ...] = (
    None,
    "alice-private",
    REVOKED_ROOM,
    "open",
    "other",
    "lobby",
    "",
    "x" * 255,
    "x" * 256,
    "é" * 127,
    "é" * 128,
    5,
    ["open"],
)
KNOWN_ROOMS = (None, "alice-private", REVOKED_ROOM, "open", "other", "lobby", "alice-")
OFFSETS: tuple[Any, ...] = (-1, MAX_OFFSET - 1, MAX_OFFSET, True, 1.0, "1", None, 2**70)
WAITS = (0.0, 0.0, 10.0, 70.0, 200.0)  # virtual seconds before the client leaves
SESSION_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_ .'\"é"
TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/"
TEXT_CHARS = SESSION_CHARS + '{}":,[]\\'


def _chars(raw: bytes, alphabet: str) -> str:
    """Fuzz bytes as text of ``alphabet`` (a byte already in it stays itself, so
    the fuzzer can splice real ids in)."""
    return "".join(chr(b) if chr(b) in alphabet else alphabet[b % len(alphabet)] for b in raw)


def room_key(room: str) -> bytes:
    return room.encode("utf-8")


# -- tokens -----------------------------------------------------------------------

TOKEN_KINDS = 11


def make_token(kind: int, r: Reader) -> Any:
    now = int(time.time())
    if kind == 0:
        return pyjwt.encode({"sub": "alice"}, JWT_KEY, "HS256")
    if kind == 1:
        return pyjwt.encode({"sub": "alice", "exp": now + 60}, JWT_KEY, "HS256")
    if kind == 2:
        return pyjwt.encode({"sub": "bob"}, JWT_KEY, "HS256")
    if kind == 3:
        return pyjwt.encode({"sub": "alice", "exp": now - 100}, JWT_KEY, "HS256")
    if kind == 4:
        return pyjwt.encode({"sub": "alice"}, JWT_KEY + "-not", "HS256")
    if kind == 5:
        return pyjwt.encode({"sub": "alice", "nbf": now + 3600}, JWT_KEY, "HS256")
    if kind == 6:
        return pyjwt.encode({"sub": "alice"}, None, "none")
    if kind == 7:
        return pyjwt.encode({"sub": "Alice"}, JWT_KEY, "HS256")
    if kind == 8:
        return pyjwt.encode({"user": "alice", "sub": ["alice"]}, JWT_KEY, "HS256")
    if kind == 9:
        return pyjwt.encode({"sub": "alice", "exp": str(now + 60)}, JWT_KEY, "HS256")
    return _chars(r.take(r.int_in(0, 200)), TOKEN_CHARS)


def identity_of(token: Any) -> str | None:
    """The user a token proves (docs/security.md): its ``sub`` when valid and a string."""
    if type(token) is not str:
        return None
    try:
        claims = pyjwt.decode(token, JWT_KEY, algorithms=["HS256"])
    except Exception:
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


def expires(token: Any) -> bool:
    try:
        return "exp" in pyjwt.decode(token, options={"verify_signature": False})
    except Exception:
        return False


def upgrade_token(headers: dict[str, str]) -> str | None:
    """The token of an upgrade: ``Authorization: Bearer``, else the item after
    ``bearer`` (or ``bearer.<token>``) in the subprotocol offer."""
    value = headers.get("authorization")
    if value:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    items = [item.strip() for item in headers.get("sec-websocket-protocol", "").split(",")]
    for i, item in enumerate(items):
        if item.lower() == "bearer":
            if i + 1 < len(items) and items[i + 1]:
                return items[i + 1]
        elif item[:7].lower() == "bearer." and len(item) > 7:
            return item[7:]
    return None


# -- the wire -----------------------------------------------------------------------

UPGRADE = (
    "Host: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def upgrade(query: str, headers: dict[str, str]) -> bytes:
    head = f"GET /ws{'?' + query if query else ''} HTTP/1.1\r\n{UPGRADE}"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (head + "\r\n").encode("latin-1")


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def text_frame(obj: Any) -> bytes:
    data = obj if isinstance(obj, str) else compact(obj)
    return client_frame(1, data.encode("utf-8", "surrogatepass"))


def envelope(path: str, body: Any) -> dict:
    return {"url": "/ws/vault/" + path, "body": body}


class Conn:
    """One simplew.v2 connection of the harness: what the server sent, parsed."""

    def __init__(self, s) -> None:
        self.client = Client(s)

    async def open(self, query: str, headers: dict[str, str], first: bytes | None) -> None:
        """The upgrade, then ``first`` (a frame) when given."""
        await self.client.send(upgrade(query, headers) + (first or b""))
        out = bytes(self.client.transport.out)
        responses, rest = parse_responses(out, [])
        assert responses and responses[0].status == 101, responses
        assert responses[0].headers.get("sec-websocket-protocol") == "simplew.v2", responses
        self.start = rest

    def frames(self) -> list:
        return parse_server_frames(bytes(self.client.transport.out)[self.start :])

    def messages(self) -> list[dict]:
        out = []
        for fin, _rsv, opcode, payload in self.frames():
            if opcode == 8:
                break
            assert opcode == 1 and fin, f"a simplew.v2 server frame: opcode {opcode}, fin {fin}"
            message = json.loads(payload)
            assert type(message) is dict and type(message.get("type")) is str, message
            assert payload == compact(message).encode(), ("not compact JSON", payload)
            out.append(message)
        return out

    def close_code(self) -> int | None:
        for frame in self.frames():
            if frame[2] == 8:
                code = close_code(frame)
                assert code in CLOSE_CODES, f"close code {code}"
                return code
        return None

    async def send(self, obj: Any) -> None:
        await self.client.send(text_frame(obj))


def check_welcome(w: dict) -> dict:
    keys = list(w)
    assert keys in (WELCOME_KEYS, WELCOME_KEYS + ["left"]), f"welcome fields {keys}"
    assert w["type"] == "welcome"
    assert type(w["session"]) is str and SESSION_FORM.match(w["session"]), w
    assert type(w["recovered"]) is bool, w
    assert type(w["missed"]) is int and w["missed"] >= 0, w
    streams = w["streams"]
    assert type(streams) is list and streams and streams[0][0] is None, w
    for _room, epoch, offset, recovered, missed in streams:
        assert type(epoch) is str and EPOCH_FORM.match(epoch), w
        assert type(offset) is int and 0 <= offset < MAX_OFFSET, w
        assert type(recovered) is bool and type(missed) is int and missed >= 0, w
        assert recovered or missed == 0, w
    rooms = [e[0] for e in streams[1:]]
    assert all(type(r) is str for r in rooms), w
    assert rooms == sorted(set(rooms), key=room_key), w
    assert w["missed"] == sum(e[4] for e in streams), w
    if not w["recovered"]:
        assert len(streams) == 1 and w["missed"] == 0 and "left" not in w, w
    if "left" in w:
        left = w["left"]
        assert type(left) is list and left and all(type(x) is str for x in left), w
        assert left == sorted(set(left), key=room_key) and not set(left) & set(rooms), w
    return w


# -- the world before each input -------------------------------------------------------


class World:
    """The ended sessions and publications every input starts from."""

    def __init__(self, s) -> None:
        self.s = s
        self.pubs: list[tuple[str | None, int, str]] = []  # (room, offset, text)
        self.epochs: dict[str | None, str] = {}
        self.tops: dict[str | None, int] = {}
        self.alice: dict = {}
        self.anon: dict = {}

    async def build(self) -> None:
        fresh_recovery(self.s)
        streams = self.s.recovery.streams
        for room in KNOWN_ROOMS:
            self.epochs[room], self.tops[room] = streams.position(room)
            assert self.tops[room] == 0
        alice_token = pyjwt.encode({"sub": "alice"}, JWT_KEY, "HS256")
        self.alice = await self.leave(
            {"Authorization": f"Bearer {alice_token}", "Sec-WebSocket-Protocol": "simplew.v2"},
            sorted(ALICE_ROOMS),
        )
        self.anon = await self.leave({"Sec-WebSocket-Protocol": "simplew.v2"}, sorted(ANON_ROOMS))
        for room, text in SETUP_PUBS:
            self.publish(room, text)
        assert self.s.recovery.ended_sessions == 2

    async def leave(self, headers: dict[str, str], rooms: list[str]) -> dict:
        """A session that joins ``rooms`` and drops: its id and the positions it holds."""
        conn = Conn(self.s)
        await conn.open("", headers, None)
        for room in rooms:
            await conn.send(envelope("join", room))
        await conn.client.finish()
        messages = conn.messages()
        welcome = check_welcome(messages[0])
        assert not welcome["recovered"]
        positions = {None: (welcome["streams"][0][1], welcome["streams"][0][2])}
        for m in messages[1:]:
            if m["type"] == "join":
                positions[m["room"]] = (m["epoch"], m["offset"])
        assert set(positions) == {None, *rooms}, messages
        return {"session": welcome["session"], "positions": positions}

    def publish(self, room: str | None, text: str) -> None:
        self.s.multicast_text(text, room=room)
        self.tops[room] += 1
        self.pubs.append((room, self.tops[room], text))
        assert self.s.recovery.streams.position(room) == (self.epochs[room], self.tops[room])

    def pub(self, room: str | None, offset: int, text: str) -> dict:
        return {
            "type": "pub",
            "room": room,
            "epoch": self.epochs[room],
            "offset": offset,
            "text": text,
        }

    def missed(self, room: str | None, after: int) -> list[dict]:
        return [self.pub(r, o, t) for r, o, t in self.pubs if r == room and o > after]


# -- the first message ------------------------------------------------------------------


def build_resume(r: Reader, world: World) -> tuple[Any, str]:
    """A resume message of the input (any JSON value, maybe malformed) and its text."""
    message: dict[str, Any] = {}
    kind = r.byte() % 8
    if kind < 5:
        message["type"] = "resume"
    elif kind == 5:
        message["type"] = "refresh"
    elif kind == 6:
        message["type"] = "Resume"
    which = r.byte() % 6
    support.note(f"resume session {which}")
    if which == 0:
        message["session"] = world.alice["session"]
    elif which == 1:
        message["session"] = world.anon["session"]
    elif which == 2:
        message["session"] = _chars(r.take(r.int_in(0, 70)), SESSION_CHARS)
    elif which == 3:
        message["session"] = (None, 7, [world.alice["session"]])[r.byte() % 3]
    elif which == 4:
        message["session"] = world.alice["session"][: r.int_in(10, 21)]
    entries: list[Any] = []
    count = r.byte() % 8
    for _ in range(count):
        shape = r.byte() % 12
        which = r.byte()
        if which < len(ENTRY_ROOMS) * 16:
            room = ENTRY_ROOMS[which % len(ENTRY_ROOMS)]
        else:
            room = _chars(r.take(r.int_in(0, 12)), SESSION_CHARS)
        which = r.byte() % 8
        if which < 4:
            known = type(room) is str and room in world.epochs
            epoch: Any = world.epochs[room if known else None]
        elif which == 4:
            epoch = world.epochs["other"]
        elif which == 5:
            epoch = _chars(r.take(r.int_in(0, 70)), SESSION_CHARS)
        else:
            epoch = (None, 12, "")[r.byte() % 3]
        which = r.byte() % 16
        offset = r.int_in(0, 4) if which < 8 else OFFSETS[which % len(OFFSETS)]
        if shape < 9:
            entries.append([room, epoch, offset])
        elif shape == 9:
            entries.append([room, epoch])
        elif shape == 10:
            entries.append([room, epoch, offset, 0])
        else:
            entries.append({"room": room, "epoch": epoch, "offset": offset})
    which = r.byte() % 8
    if which < 6:
        message["streams"] = entries
    elif which == 6:
        message["streams"] = {"null": entries}
    flags = r.byte()
    if flags & 1:
        message["extra"] = [1, {"a": None}]
    if flags & 2 and "type" in message:
        message["type"] = message.pop("type")  # "type" last: not a protocol message
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=bool(flags & 4))
    return message, text


def accepted(message: Any, max_streams: int) -> dict[str | None, tuple[str, int]] | None:
    """The streams of a resume the table of docs/protocol.md 5.3 accepts, else None."""
    session, entries = message.get("session"), message.get("streams")
    if type(session) is not str or not SESSION_FORM.match(session):
        return None
    if type(entries) is not list or len(entries) > max_streams:
        return None
    streams: dict[str | None, tuple[str, int]] = {}
    for entry in entries:
        if type(entry) is not list or len(entry) != 3:
            return None
        room, epoch, offset = entry
        if room is not None and (type(room) is not str or not 1 <= len(room_key(room)) <= 255):
            return None
        if type(epoch) is not str or not EPOCH_FORM.match(epoch):
            return None
        if type(offset) is not int or not 0 <= offset < MAX_OFFSET or room in streams:
            return None
        streams[room] = (epoch, offset)
    return streams


def build_headers(r: Reader) -> dict[str, str]:
    """Upgrade headers with the input's token(s)."""
    first = make_token(r.byte() % TOKEN_KINDS, r)
    where = r.byte() % 7
    support.note(f"token placement {where}")
    headers: dict[str, str] = {}
    if where == 0:
        headers["Sec-WebSocket-Protocol"] = "simplew.v2"
    elif where == 1:
        headers["Authorization"] = f"Bearer {first}"
        headers["Sec-WebSocket-Protocol"] = "simplew.v2"
    elif where == 2:
        headers["Sec-WebSocket-Protocol"] = f"simplew.v2, bearer, {first}"
    elif where == 3:
        headers["Sec-WebSocket-Protocol"] = f"bearer, {first}, simplew.v2"
    elif where == 4:
        headers["Sec-WebSocket-Protocol"] = f"simplew.v2, bearer.{first}"
    elif where == 5:
        headers["authorization"] = f"bearer   {first}"
        headers["Sec-WebSocket-Protocol"] = "simplew.v2"
    else:
        second = make_token(r.byte() % TOKEN_KINDS, r)
        headers["Authorization"] = f"Bearer {first}"
        headers["Sec-WebSocket-Protocol"] = f"simplew.v2, bearer, {second}"
    return headers


# -- one input ------------------------------------------------------------------------


def test_one_input(data: bytes) -> None:
    s = recovery_server()
    support.run(_drive(s, Reader(data)))


async def _drive(s, r: Reader) -> None:
    world = World(s)
    await world.build()
    recovery = s.recovery
    query = ("", "resume=1", "x=1&resume=1", "resume=0", "resume=yes")[r.byte() % 5]
    resuming = query.endswith("resume=1")
    headers = build_headers(r)
    lower = {k.lower(): v for k, v in headers.items()}
    user = identity_of(upgrade_token(lower))

    # the first message: (frame, what it is)
    kind = r.byte() % 10
    message: Any = None
    if kind < 6:
        message, text = build_resume(r, world)
        first: bytes | None = text_frame(text)
    elif kind == 6:
        first, text = text_frame(envelope("me", None)), ""
    elif kind == 7:
        text = _chars(r.take(r.int_in(0, 200)), TEXT_CHARS)
        first = text_frame(text)
    elif kind == 8:
        message, text = build_resume(r, world)
        first = client_frame(2, text.encode("utf-8"))
    else:
        first, text = None, ""
    support.note(f"query {query!r} first {kind}")

    # what the protocol says must happen, from the input alone
    limit = RECOVERY_MAX_ROOMS + 1
    protocol = kind in (0, 1, 2, 3, 4, 5, 7) and text.startswith('{"type":')
    exact = kind != 7  # fuzz text: only the structure is checked
    closes = None
    asked = False
    streams = None
    if resuming:
        if kind == 9:
            closes = 1008
        elif not protocol or (kind < 6 and message.get("type") != "resume"):
            closes = 1002
        else:
            asked = True
            if kind < 6:
                streams = accepted(message, limit)
    owners = {world.alice["session"]: "alice", world.anon["session"]: "anon"}
    target = owners.get(message.get("session")) if streams is not None else None
    refused = target == "alice" and user != "alice"
    recover = target is not None and not refused

    conn = Conn(s)
    await conn.open(query, headers, first if resuming else None)
    if resuming and kind == 9:
        support.loop().advance(simplew.recovery.RESUME_TIMEOUT + 1)
        await support.settle()
        conn.client.transport.client_reads()
        await support.settle()
    messages = conn.messages()
    if closes is not None or (not exact and resuming and not messages):
        code = conn.close_code()
        support.note(f"closed {code} before a welcome")
        assert messages == [], messages
        assert code == (closes or 1002), (code, closes, text)
        assert recovery.sessions_reset == 0 and recovery.resumes_refused == 0
        await conn.client.finish()
        assert recovery.ended_sessions == 2
        await _alice_still_resumes(s, world, None, True)
        check_released(s)
        return
    assert messages, "no welcome"
    welcome = check_welcome(messages[0])
    if exact:
        assert welcome["recovered"] is recover, (message, headers, user, welcome)
    recover = welcome["recovered"]
    support.note(f"recovered {recover} refused {refused} left {'left' in welcome}")
    rooms: set[str] = set()
    expected_missed: list[dict] = []
    if recover and exact:
        old = ALICE_ROOMS if target == "alice" else ANON_ROOMS
        rooms = set(old - {REVOKED_ROOM})
        assert streams is not None
        entries = []
        for room in [None, *sorted(rooms, key=room_key)]:
            held = streams.get(room)
            epoch, top = world.epochs[room], world.tops[room]
            if held is not None and held[0] == epoch and held[1] <= top:
                missed = world.missed(room, held[1])
                entries.append([room, epoch, held[1], True, len(missed)])
                expected_missed += missed
            else:
                entries.append([room, epoch, top, False, 0])
        assert welcome["session"] == message["session"], welcome
        assert welcome["streams"] == entries, (welcome, entries, streams)
        left = sorted((x for x in streams if x is not None and x not in rooms), key=room_key)
        assert welcome.get("left", []) == left, (welcome, left)
    elif recover:
        old = ALICE_ROOMS if welcome["session"] == world.alice["session"] else ANON_ROOMS
        assert welcome["session"] in owners, welcome
        assert welcome["session"] != world.alice["session"] or user == "alice", welcome
        rooms = set(old - {REVOKED_ROOM})
        expected_missed = [m for m in messages[1 : 1 + welcome["missed"]]]
    else:
        assert welcome["session"] not in owners, welcome
        assert welcome["streams"] == [[None, world.epochs[None], world.tops[None], False, 0]]
    if exact:
        assert recovery.resumes_refused == int(refused), (recovery.resumes_refused, headers)
        assert recovery.sessions_reset == int(asked and not recover), recovery.sessions_reset

    # messages; `exact` while the harness knows what each one does
    closing = False  # a 4003 is due
    answers: list[Any] = []
    joins: list[dict] = []
    timed = user is not None and expires(upgrade_token(lower))
    if not resuming and first is not None:
        await conn.client.send(first)  # not a resume here: a resume message is ignored
        if kind == 6:
            answers.append({"user": user})
        else:
            exact = False  # a BINARY message or fuzz text: answered as the endpoint does
    for _ in range(r.byte() % 4):
        if closing:
            break
        kind = r.byte() % 7
        support.note(f"message {kind}")
        if kind in (0, 1):
            token = make_token(r.byte() % TOKEN_KINDS, r)
            await conn.send({"type": "refresh", "token": token})
            if user is None or identity_of(token) != user:
                closing = True
            else:
                timed = expires(token)
        elif kind == 2:
            await conn.send(envelope("me", None))
            answers.append({"user": user})
        elif kind == 3:
            room = JOIN_ROOMS[r.byte() % len(JOIN_ROOMS)]
            await conn.send(envelope("join", room))
            if room.startswith("alice-") and user != "alice":
                answers.append({"refused": room})
            else:
                if room not in rooms:
                    epoch, top = s.recovery.streams.position(room)
                    joins.append({"type": "join", "room": room, "epoch": epoch, "offset": top})
                rooms.add(room)
                answers.append({"joined": room})
        elif kind == 4:
            kind_of = ("refresh", "nope")[r.byte() & 1]
            await conn.send({"type": kind_of, "token": (None, 1, [])[r.byte() % 3]})
            closing = kind_of == "refresh"  # no token string: refused, even without a user
        elif kind == 5:
            await conn.send({"type": "nope", "token": make_token(0, r)})
        else:
            await conn.send(_chars(r.take(r.int_in(0, 300)), TEXT_CHARS))
            exact = False
    code_before = conn.close_code()
    top = len(world.pubs)
    for room, text in LIVE_PUBS:
        world.publish(room, text)
    await support.settle()
    wait = WAITS[r.byte() % len(WAITS)]
    if wait:
        support.loop().advance(wait)
        await support.settle()
        support.loop().advance(s.credentials.grace + 1)
        await support.settle()
    await conn.client.finish()

    # what the connection got
    messages = conn.messages()
    code = conn.close_code()
    support.note(f"close {code}")
    assert messages[0] == welcome
    rest = messages[1:]
    assert rest[: welcome["missed"]] == expected_missed, (
        rest[: welcome["missed"]],
        expected_missed,
    )
    live = rest[welcome["missed"] :]
    pubs = [m for m in live if m["type"] == "pub"]
    msgs = [m for m in live if m["type"] == "msg"]
    others = [m for m in live if m["type"] not in ("pub", "msg")]
    held = {e[0]: e[2] for e in welcome["streams"]}
    for m in rest:
        if m["type"] == "join":
            held[m["room"]] = m["offset"]
        elif m["type"] == "pub":
            assert list(m) == PUB_KEYS, m
            assert m["epoch"] == world.epochs[m["room"]], m
            assert m["room"] in held, ("a pub of a stream the client does not hold", m)
            assert m["offset"] == held[m["room"]] + 1, ("offsets do not follow", m, held)
            held[m["room"]] = m["offset"]
            assert m["room"] != "alice-private" or user == "alice", ("alice's room leaked", m)
    for m in others:
        if m["type"] == "join":
            assert m["room"] in JOIN_ROOMS or not exact, m
        else:
            assert m == {"type": "refresh"}, m
            assert timed or not exact, ("a refresh request without an expiring token", m)
    if exact:
        assert [m for m in others if m["type"] == "join"] == joins, (others, joins)
        expected_live = [world.pub(*p) for p in world.pubs[top:] if p[0] is None or p[0] in rooms]
        if code_before is None and not closing:
            assert pubs == expected_live, (pubs, expected_live)
        else:
            assert all(m in expected_live for m in pubs), pubs
        got = [json.loads(m["text"]) for m in msgs]
        if closing:
            assert code == 4003, (code, messages)
            assert got == answers[: len(got)], (got, answers)
        else:
            assert got == answers, (got, answers)
            assert code in (None, 4001), code
            assert code is None or timed, code
    if code == 4001:
        assert timed or not exact
    kept = recovery.ended_sessions
    assert kept == 2 + int(not recover), f"{kept} ended sessions kept"
    took_alice = recover and welcome["session"] == world.alice["session"]
    await _alice_still_resumes(s, world, rooms if took_alice else None, exact or not took_alice)
    check_released(s)
    assert not recovery._waiting


async def _alice_still_resumes(s, world: World, rooms, exact: bool) -> None:
    """alice, with her token and the positions she left with, gets her session
    back with everything it missed."""
    if rooms is None:
        rooms = ALICE_ROOMS
    rooms = set(rooms) - {REVOKED_ROOM}
    token = pyjwt.encode({"sub": "alice"}, JWT_KEY, "HS256")
    positions = world.alice["positions"]
    message = {
        "type": "resume",
        "session": world.alice["session"],
        "streams": [[room, *held] for room, held in positions.items()],
    }
    conn = Conn(s)
    await conn.open(
        "resume=1",
        {"Authorization": f"Bearer {token}", "Sec-WebSocket-Protocol": "simplew.v2"},
        text_frame(message),
    )
    await conn.send(envelope("me", None))
    await conn.client.finish()
    messages = conn.messages()
    welcome = check_welcome(messages[0])
    assert welcome["recovered"] is True, ("alice's session is gone", welcome)
    assert welcome["session"] == world.alice["session"]
    assert welcome.get("left") == [REVOKED_ROOM], welcome
    if exact:
        expected = []
        missed = []
        for room in [None, *sorted(rooms, key=room_key)]:
            if room in positions:
                stream_missed = world.missed(room, positions[room][1])
                expected.append([room, *positions[room], True, len(stream_missed)])
                missed += stream_missed
            else:
                expected.append([room, world.epochs[room], world.tops[room], False, 0])
        assert welcome["streams"] == expected, (welcome, expected)
        assert messages[1 : 1 + welcome["missed"]] == missed
    following = messages[1 : 1 + welcome["missed"]]
    assert all(m["type"] == "pub" for m in following), following
    answers = [json.loads(m["text"]) for m in messages if m["type"] == "msg"]
    assert answers == [{"user": "alice"}], messages


def seeds() -> dict[str, bytes]:
    """Reader bytes: query, token and placement, first message kind and its
    parts, messages, wait."""

    def entry(room=0, epoch=0, offset=0, shape=0, special=None) -> tuple:
        """``offset`` 0 to 4, or ``OFFSETS[special]``."""
        if special is not None:
            return (shape, room, epoch, 8 + special)
        return (shape, room, epoch, 0, offset)

    def resume(kind=0, session=(0,), entries=(), streams=0, flags=0) -> tuple:
        out = (kind, *session, len(entries))
        for e in entries:
            out += tuple(e)
        return (*out, streams, flags)

    def seed(query=1, token=(0,), where=1, second=(), first=None, messages=(), wait=0):
        first = (0, *resume()) if first is None else first
        out = bytes([query, *token, where, *second, *first, len(messages)])
        for message in messages:
            out += bytes(message)
        return out + bytes([wait])

    alice_all = [entry(0), entry(1), entry(2)]
    fuzz = (2, 22, *b"AAAAAAAAAAAAAAAAAAAAAA")
    return {
        "alice_own_token": seed(first=(0, *resume(entries=alice_all))),
        "alice_no_streams": seed(),
        "alice_one_stream_offset_3": seed(first=(0, *resume(entries=[entry(1, 0, 3)]))),
        "alice_offset_beyond": seed(first=(0, *resume(entries=[entry(1, 0, 4), entry(0, 0, 4)]))),
        "alice_other_epoch": seed(first=(0, *resume(entries=[entry(1, 4, 0)]))),
        "alice_left_rooms": seed(first=(0, *resume(entries=[entry(3), entry(4), entry(5)]))),
        "alice_subprotocol": seed(where=2, first=(0, *resume(entries=alice_all))),
        "alice_no_token": seed(where=0, first=(0, *resume(entries=alice_all)), messages=[(2,)]),
        "alice_bob_token": seed(token=(2,), where=2, first=(0, *resume(entries=alice_all))),
        "alice_expired_token": seed(token=(3,), where=4),
        "alice_not_yet_token": seed(token=(5,), where=1),
        "alice_other_key": seed(token=(4,), where=5),
        "alice_alg_none": seed(token=(6,), where=3),
        "alice_capital_a": seed(token=(7,), where=1),
        "alice_list_sub": seed(token=(8,), where=1),
        "alice_expiring_waits": seed(token=(1,), where=2, wait=3),
        "alice_string_exp_waits": seed(token=(9,), where=1, wait=4),
        "alice_expiring_refreshed": seed(token=(1,), where=1, messages=[(0, 0)], wait=3),
        "alice_refresh_bob": seed(messages=[(1, 2), (2,)]),
        "alice_refresh_none": seed(messages=[(4, 0, 0)]),
        "alice_joins": seed(messages=[(3, 2), (3, 0), (3, 3)]),
        "mallory_refresh_alice": seed(token=(2,), where=1, messages=[(0, 0)]),
        "alice_both_places": seed(token=(2,), where=6, second=(0,), messages=[(2,)]),
        "bob_both_places": seed(token=(0,), where=6, second=(2,), messages=[(2,)]),
        "too_many_streams": seed(first=(0, *resume(entries=[entry(i) for i in range(6)]))),
        "duplicate_room": seed(first=(0, *resume(entries=[entry(1), entry(1, 0, 1)]))),
        "offset_minus_1": seed(first=(0, *resume(entries=[entry(special=0)]))),
        "offset_1e18": seed(first=(0, *resume(entries=[entry(special=2)]))),
        "offset_true": seed(first=(0, *resume(entries=[entry(1, special=3)]))),
        "offset_float": seed(first=(0, *resume(entries=[entry(special=4)]))),
        "long_room": seed(first=(0, *resume(entries=[entry(8), entry(10)]))),
        "entry_shapes": seed(first=(0, *resume(entries=[entry(shape=9), entry(shape=11)]))),
        "type_last": seed(first=(0, *resume(entries=alice_all, flags=2))),
        "type_refresh": seed(first=(0, *resume(kind=5))),
        "no_type": seed(first=(0, *resume(kind=7))),
        "anon_no_token": seed(where=0, first=(0, *resume(session=(1,), entries=[entry(3)]))),
        "anon_alice_token": seed(first=(0, *resume(session=(1,))), messages=[(3, 0)]),
        "fuzz_session": seed(first=(0, *resume(session=fuzz))),
        "short_session": seed(first=(0, *resume(session=(4, 15)))),
        "envelope_first": seed(first=(6,)),
        "fuzz_first": seed(first=(7, 20, *b'{"type":"resume","se')),
        "binary_first": seed(first=(8, *resume())),
        "nothing_first": seed(first=(9,)),
        "no_resume_query": seed(query=0, first=(0, *resume(entries=alice_all))),
        "resume_0_envelope": seed(query=3, first=(6,)),
        "fuzz_message": seed(messages=[(6, 20) + tuple(b'{"type":"refresh","t')]),
        "unknown_protocol_message": seed(messages=[(5,), (4, 1, 0)]),
    }


if __name__ == "__main__":
    support.main(test_one_input)
