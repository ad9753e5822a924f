"""WebSocketMessage: the envelope's fields and ``map_body`` onto dataclasses."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal, Optional

import pytest

from simplew import BodyMappingError, WebSocketMessage


@dataclass
class Address:
    street: str
    zip: str | None = None


@dataclass
class User:
    id: uuid.UUID | None = None
    name: str = ""
    creation: datetime | None = None
    enabled: bool = False


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


@dataclass
class Profile:
    user: User
    age: int
    score: float = 0.0
    tags: list[str] = field(default_factory=list)
    addresses: list[Address] = field(default_factory=list)
    nickname: str | None = None
    born: date | None = None
    color: Color = Color.RED
    mode: Literal["a", "b"] = "a"
    pair: tuple[int, str] | None = None
    extra: dict[str, int] = field(default_factory=dict)
    anything: Any = None


def msg(body: Any = None) -> WebSocketMessage:
    return WebSocketMessage("/websocket/x", body)


def test_fields_and_defaults():
    m = WebSocketMessage("/websocket/test/index", {"a": 1}, "tok")
    assert (m.url, m.body, m.jwt) == ("/websocket/test/index", {"a": 1}, "tok")
    m = WebSocketMessage("/u")
    assert m.body is None and m.jwt is None
    assert "WebSocketMessage(url='/u'" in repr(m)


def test_map_body_guide_user():
    user = msg({"name": "John Doe", "enabled": True}).map_body(User)
    assert user == User(name="John Doe", enabled=True)
    assert msg({"name": "x"}).MapBody(User).enabled is False  # SimpleW spelling


def test_map_body_uuid_and_datetime():
    uid = uuid.uuid4()
    user = msg({"id": str(uid), "creation": "2024-05-06T07:08:09Z", "enabled": True}).map_body(User)
    assert user.id == uid
    assert user.creation == datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    user = msg({"creation": "2024-05-06T07:08:09.123+02:00"}).map_body(User)
    assert user.creation.utcoffset() == timedelta(hours=2)
    assert msg({"creation": "2024-05-06"}).map_body(User).creation == datetime(2024, 5, 6)


def test_map_body_nested_optional_lists_and_defaults():
    body = {
        "user": {"name": "Ann", "enabled": True},
        "age": 41,
        "score": 3,  # int accepted for float
        "tags": ["a", "b"],
        "addresses": [{"street": "Main"}, {"street": "High", "zip": "12345"}],
        "nickname": None,
        "born": "1983-02-01",
        "color": "green",
        "mode": "b",
        "pair": [1, "one"],
        "extra": {"k": 2},
        "anything": {"free": ["form"]},
    }
    p = msg(body).map_body(Profile)
    assert p.user == User(name="Ann", enabled=True)
    assert p.age == 41 and p.score == 3.0 and isinstance(p.score, float)
    assert p.tags == ["a", "b"]
    assert p.addresses == [Address("Main"), Address("High", "12345")]
    assert p.nickname is None and p.born == date(1983, 2, 1)
    assert p.color is Color.GREEN and p.mode == "b" and p.pair == (1, "one")
    assert p.extra == {"k": 2} and p.anything == {"free": ["form"]}

    minimal = msg({"user": {}, "age": 1}).map_body(Profile)
    assert minimal == Profile(user=User(), age=1)
    assert minimal.tags == [] and minimal.tags is not Profile(user=User(), age=1).tags


def test_map_body_plain_types():
    assert msg("hello").map_body(str) == "hello"
    assert msg([1, 2]).map_body(list[int]) == [1, 2]
    assert msg(None).map_body(Optional[int]) is None
    assert msg({"a": 1}).map_body(dict) == {"a": 1}
    assert msg(5).map_body(Any) == 5


@pytest.mark.parametrize(
    "body, cls, expected",
    [
        ({"user": {}, "age": "41"}, Profile, "body.age: expected int, got a string"),
        ({"user": {}, "age": True}, Profile, "body.age: expected int, got a boolean"),
        ({"user": {}}, Profile, "body: missing field 'age' for Profile"),
        (
            {"user": {"enabled": "yes"}, "age": 1},
            Profile,
            "body.user.enabled: expected bool, got a string",
        ),
        (
            {"user": {"id": "not-a-uuid"}, "age": 1},
            Profile,
            "body.user.id: expected UUID, got a string",
        ),
        (
            {"user": {"creation": "yesterday"}, "age": 1},
            Profile,
            "body.user.creation: expected datetime, got a string",
        ),
        (
            {"user": {}, "age": 1, "tags": "a,b"},
            Profile,
            "body.tags: expected a list, got a string",
        ),
        (
            {"user": {}, "age": 1, "tags": ["a", 2]},
            Profile,
            "body.tags[1]: expected str, got a number",
        ),
        (
            {"user": {}, "age": 1, "addresses": [{"street": "x"}, {}]},
            Profile,
            "body.addresses[1]: missing field 'street' for Address",
        ),
        (
            {"user": {}, "age": 1, "addresses": [{"street": 5}]},
            Profile,
            "body.addresses[0].street: expected str, got a number",
        ),
        (
            {"user": {}, "age": 1, "nickname": 3},
            Profile,
            "body.nickname: expected str, got a number",
        ),
        (
            {"user": {}, "age": 1, "color": "blue"},
            Profile,
            "body.color: expected one of 'red', 'green' for Color, got 'blue'",
        ),
        (
            {"user": {}, "age": 1, "mode": "c"},
            Profile,
            "body.mode: expected one of 'a', 'b', got 'c'",
        ),
        (
            {"user": {}, "age": 1, "pair": [1]},
            Profile,
            "body.pair: expected a list of 2 items, got 1",
        ),
        (
            {"user": {}, "age": 1, "extra": {"k": "v"}},
            Profile,
            "body.extra.k: expected int, got a string",
        ),
        (
            {"user": {}, "age": 1, "surname": "x"},
            Profile,
            "body: unknown field(s) for Profile: surname",
        ),
        (
            {"user": "Ann", "age": 1},
            Profile,
            "body.user: expected an object for User, got a string",
        ),
        (None, User, "body: expected an object for User, got null"),
        ("John", User, "body: expected an object for User, got a string"),
        ([1], User, "body: expected an object for User, got a list"),
    ],
)
def test_map_body_errors_name_the_field(body, cls, expected):
    with pytest.raises(BodyMappingError) as info:
        msg(body).map_body(cls)
    assert str(info.value) == expected
    assert isinstance(info.value, ValueError)


def test_map_body_local_dataclass_with_unresolvable_annotations():
    @dataclass
    class Local:  # "Inner" is not resolvable from the module globals
        inner: Inner
        n: int = 0

    @dataclass
    class Inner:
        x: int

    value = msg({"inner": {"x": 1}, "n": 2}).map_body(Local)
    assert value.inner == {"x": 1} and value.n == 2  # unresolvable: passed through as is
    with pytest.raises(BodyMappingError, match="unknown field"):
        msg({"inner": 1, "zzz": 2}).map_body(Local)
    with pytest.raises(BodyMappingError, match=r"body\.n: expected int"):  # still checked
        msg({"inner": 1, "n": "2"}).map_body(Local)


# -- the compiled converter against the general walk ----------------------------


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.IntFlag):
    READ = 1
    WRITE = 2
    EXEC = 4


class Mode(enum.Flag):
    A = 1
    B = 2


def test_flags_take_declared_bits_only_and_cache_nothing_new():
    """``IntFlag(-5)`` is ``READ|WRITE`` and ``IntFlag(1 << 40)`` a new member the enum keeps
    for ever: a body could grow memory without limit. Only declared bits are taken."""
    assert msg(5).map_body(Perm) is Perm.READ | Perm.EXEC
    assert msg(0).map_body(Perm) == Perm(0) and msg([7]).map_body(list[Perm]) == [Perm(7)]
    assert msg(3).map_body(Mode) is Mode.A | Mode.B
    cached = len(Perm._value2member_map_), len(Mode._value2member_map_)
    for value in (-5, -1, 8, 9, 1 << 40, True, 1.0, "1", None):
        with pytest.raises(BodyMappingError, match="expected a combination of 1, 2, 4 for Perm"):
            msg(value).map_body(Perm)
    for value in (-1, 4, 1 << 70, False):
        with pytest.raises(BodyMappingError, match="for Mode"):
            msg(value).map_body(Mode)
    for value in range(8, 60_008):  # was +18 MB, never returned
        with pytest.raises(BodyMappingError):
            msg(value).map_body(Optional[Perm])
    assert (len(Perm._value2member_map_), len(Mode._value2member_map_)) == cached


def test_an_enum_member_is_named_by_a_value_of_its_type():
    """As for ``Literal``: ``true`` and ``1.0`` are not the ``IntEnum`` member 1."""
    assert msg(2).map_body(Level) is Level.HIGH
    for value in (True, 1.0, "1", 3):
        with pytest.raises(BodyMappingError, match="expected one of 1, 2 for Level"):
            msg(value).map_body(Level)


@dataclass
class Node:  # refers to itself
    name: str
    children: list[Node] = field(default_factory=list)


class Text(str):
    pass


AGREEMENT_VALUES = [
    None,
    True,
    False,
    0,
    1,
    -7,
    2**70,
    -5,
    8,
    3,
    10**400,  # past a float's range
    1.5,
    -0.0,
    float("nan"),
    "",
    "x",
    Text("sub"),
    "6f1c2b9e-3d4a-4e5b-8c7d-1a2b3c4d5e6f",
    "{6f1c2b9e-3d4a-4e5b-8c7d-1a2b3c4d5e6f}",
    "\uff11" * 32,  # fullwidth digits: int(x, 16) takes them, a UUID does not
    "1234_678" * 4,
    "2024-05-06T07:08:09Z",
    "2024-05-06",
    "2024-05-06T07:08:09+02:00",
    "red",
    "green",
    "a",
    [],
    [1, 2],
    ["a", 2],
    [[1]],
    [{"name": "n"}],
    {},
    {"a": 1},
    {"k": "v"},
    {1: 2},
    {"name": "root", "children": [{"name": "leaf"}]},
    {"name": "r", "children": [{"nom": 1}]},
    {"user": {}, "age": 1},
    {"user": {"id": "bad"}, "age": 1},
    {"user": {}, "age": 1, "x": 0},
    {"user": {}, "age": 1, "pair": [1, "one"], "extra": {"k": 2}, "color": "green"},
    {"user": {}, "age": 1, "tags": ["a", Text("b")]},
    {"street": "s", "zip": None},
]
AGREEMENT_TYPES = [
    Any,
    bool,
    int,
    float,
    str,
    type(None),
    uuid.UUID,
    datetime,
    date,
    Color,
    Level,
    Perm,
    Mode,
    Optional[Perm],
    Optional[int],
    int | str,
    str | int,
    float | None,
    list[int],
    list[str],
    set[int],
    frozenset[str],
    tuple[int, ...],
    tuple[int, str],
    dict[str, int],
    dict,
    list,
    Literal["a", 1],
    list[Address],
    Optional[list[Address]],
    Address,
    User,
    Profile,
    Node,
    list[Node],
    dict[str, list[int]],
    bytes,
    Text,
]


def _outcome(func, value, tp):
    try:
        result = func(value, tp, "body")
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome
        return ("raised", type(exc), str(exc))
    return ("value", type(result), repr(result))


@pytest.mark.parametrize("tp", AGREEMENT_TYPES, ids=repr)
def test_compiled_converter_gives_the_general_walks_values_and_errors(tp):
    from simplew.message import _convert, convert

    for value in AGREEMENT_VALUES:
        for _ in range(2):  # the second call uses the cached converter
            assert _outcome(convert, value, tp) == _outcome(_convert, value, tp), (value, tp)
