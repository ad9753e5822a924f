"""Harness 3: the envelope router (simplew._fast.router.RouteEndpoint.on_message).

A client upgrades on ``/ws`` (routed to the typed controller of targets.py:
dataclass bodies with nested, optional, enum, date, UUID, tuple, frozenset,
Literal fields; int, str, list[int], Optional[float], enum and dict bodies;
an async handler; rooms; a JWT-protected route) and sends the input as one
message: a TEXT frame when it is UTF-8, else BINARY (which the router parses
as JSON bytes). An input starting with ``\\x00`` is sent in fragments cut
at positions its second byte chooses.

Invariants: no exception escapes, nothing logged at ERROR; every message gets
exactly one answer before the client closes, which is either the handler's
result or ``{"error", "url", "message"}`` with a documented error code -
never ``handler_error`` (the handlers raise only when a mapped value does not
have its declared type, a float included that is not finite); the answer parses
with a strict JSON parser (no ``NaN`` or ``Infinity``); the connection stays open (no CLOSE from the
server); the session leaves no trace once it is gone. A JSON-aware custom mutator
(json_mutator.py) keeps most inputs valid JSON so the typed mapping is reached.
"""

from __future__ import annotations

import json

import jwt

import support
from support import Client
from targets import JWT_KEY, check_released, server
from wire import client_frame, parse_responses, parse_server_frames, split_points, upgrade_request

stats = support.stats
ERRORS = {"bad_json", "bad_envelope", "missing_url", "unknown_url", "bad_body", "unauthorized"}


def _frames(message: bytes, cut_seed: int | None) -> bytes:
    try:
        message.decode("utf-8")
        opcode = 1
    except UnicodeDecodeError:
        opcode = 2
    if cut_seed is None:
        return client_frame(opcode, message)
    pieces = split_points(message, cut_seed, 1 + cut_seed % 4)
    out = []
    for i, piece in enumerate(pieces):
        out.append(client_frame(opcode if i == 0 else 0, piece, i == len(pieces) - 1))
    return b"".join(out)


def test_one_input(data: bytes) -> None:
    if data[:1] == b"\x00" and len(data) >= 2:
        message, cut = data[2:], data[1]
    else:
        message, cut = data, None
    if len(message) > 4000:  # the endpoint's max_message_size is 4096
        return
    s = server()
    s.head_flags = []
    support.run(_drive(s, upgrade_request("/ws") + _frames(message, cut)))


async def _drive(s, wire: bytes) -> None:
    client = Client(s)
    await client.send(wire)
    await client.finish()
    out = bytes(client.transport.out)
    responses, rest = parse_responses(out, s.head_flags)
    assert responses[0].status == 101
    frames = parse_server_frames(out[rest:])
    answers = [f for f in frames if f[2] == 1]
    others = [f for f in frames if f[2] != 1]
    assert not others, f"server sent {[(f[2], f[3][:60]) for f in others]}"
    room = [f for f in answers if f[3].startswith(b"hi ")]  # the /room multicast
    answers = [f for f in answers if not f[3].startswith(b"hi ")]
    assert len(answers) == 1, f"{len(answers)} answers: {[f[3][:80] for f in answers]}"
    if answers[0][3].startswith(b"text:"):
        support.note("answered text")
        check_released(s)
        return
    reply = support.strict_json(answers[0][3])  # JSON: no NaN, no Infinity
    if isinstance(reply, dict) and set(reply) == {"error", "url", "message"}:
        support.note(f"error {reply['error']}")
        assert reply["error"] in ERRORS, reply
    else:
        support.note("answered")
        if isinstance(reply, dict) and "joined" in reply:
            assert len(room) == 1, "a joined client gets its room's multicast"
    check_released(s)


def seeds() -> dict[str, bytes]:
    def env(url: str, body=None, **extra) -> bytes:
        return json.dumps({"url": "/ws/app/" + url, "body": body, **extra}).encode()

    user = {
        "name": "ann",
        "age": 30,
        "tags": ["a"],
        "email": None,
        "role": "admin",
        "address": {"street": "x", "zip": 1},
        "scores": {"m": 1.5, "n": 2},
        "born": "2000-01-02",
        "seen": "2024-05-06T07:08:09Z",
        "id": "12345678-1234-5678-1234-567812345678",
        "pair": [1, "b"],
        "flags": ["x", "y"],
        "level": "high",
        "extra": [1, {"a": None}],
    }
    return {
        "echo": env("echo", {"a": [1, 2.5, "x", None, True]}),
        "user_full": env("user", user),
        "user_min": env("user", {"name": "b", "age": 1}),
        "user_bad_field": env("user", {"name": "b", "age": "1", "zzz": 2}),
        "int": env("int", 42),
        "str": env("str", "hello"),
        "text": env("text", "plain \u00e9"),
        "list": env("list", [1, 2, 3]),
        "optional": env("optional", None),
        "enum": env("enum", 3),
        "async": env("async", {"a": 1, "b": 2}),
        "room": env("room", "lobby"),
        "secure_no_token": env("secure", None),
        "secure_bad_token": env("secure", None, jwt="a.b.c"),
        "secure_token": env("secure", None, jwt=jwt.encode({"sub": "fuzz"}, JWT_KEY, "HS256")),
        "unknown_url": b'{"url": "/nope", "body": 1}',
        "not_object": b"[1, 2, 3]",
        "bad_json": b'{"url": ',
        "binary_utf16": '{"url": "/ws/app/int", "body": 7}'.encode("utf-16"),
        "fragmented": b"\x00\x07" + env("list", list(range(20))),
        "deep": b"[" * 3000,
        "echo_nan": b'{"url": "/ws/app/echo", "body": {"a": NaN}}',
        "optional_infinity": b'{"url": "/ws/app/optional", "body": Infinity}',
        "optional_overflow": b'{"url": "/ws/app/optional", "body": -1e999}',
        "user_score_nan": env("user", {"name": "b", "age": 1})[:-2] + b', "scores": {"m": NaN}}}',
        "user_score_int_past_float": env("user", {"name": "b", "age": 1})[:-2]
        + b', "scores": {"m": 1'
        + b"0" * 400
        + b"}}}",
    }


FIELDS = (
    "url",
    "body",
    "jwt",
    "name",
    "age",
    "tags",
    "email",
    "role",
    "address",
    "scores",
    "born",
    "seen",
    "id",
    "pair",
    "flags",
    "level",
    "extra",
    "street",
    "zip",
    "a",
    "b",
)
URLS = tuple(
    f"/ws/app/{name}"
    for name in (
        "echo",
        "user",
        "int",
        "str",
        "text",
        "list",
        "optional",
        "enum",
        "async",
        "room",
        "secure",
    )
)

if __name__ == "__main__":
    from json_mutator import make_mutator

    support.main(
        test_one_input,
        make_mutator(lambda d: (d[:2], d[2:]) if d[:1] == b"\x00" else (b"", d), FIELDS, URLS),
    )
