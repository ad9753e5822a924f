"""``WebSocketMessage``: the envelope a client sends, and mapping its body.

Also the body converter REST parameters share (:func:`convert`); envelopes and
REST bodies are decoded by :func:`decode_json` (:mod:`simplew._fast.plainjson`).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import re
import sys
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any, TypeVar, cast

from simplew._fast.plainjson import decode_json, has_lone_surrogate  # noqa: F401 (re-exported)

T = TypeVar("T")


class BodyMappingError(ValueError):
    """The message body does not fit the class it is mapped onto."""


class WebSocketMessage:
    """``{"url": ..., "body": ..., "jwt": ...}`` as received; ``body`` is decoded JSON.

    ``claims`` holds the decoded JWT when the server has a key (``set_token``)
    and the message came with a valid token (see :mod:`simplew.auth`), else None.
    """

    __slots__ = ("url", "body", "jwt", "claims")

    def __init__(
        self,
        url: str,
        body: Any = None,
        jwt: str | None = None,
        claims: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.body = body
        self.jwt = jwt
        self.claims = claims

    def map_body(self, cls: type[T]) -> T:
        """The body as an instance of ``cls`` (a dataclass, or a plain type).

        Raises :class:`BodyMappingError` naming the field that does not fit.
        """
        return cast(T, convert(self.body, cls, "body"))

    MapBody = map_body

    def __repr__(self) -> str:
        return f"WebSocketMessage(url={self.url!r}, body={self.body!r})"


def convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` (decoded JSON) as ``tp``; :class:`BodyMappingError` naming ``where`` if it does not fit.

    A converter compiled once per type handles values that fit; on the first
    thing it does not take, the value is converted again by the general
    walk, which gives the error (or the value, for the rare cases the compiled
    converter leaves to it). Results and errors are those of the general walk.
    """
    try:
        fast = _COMPILED[tp]
    except (KeyError, TypeError):  # first use, or an unhashable annotation
        fast = _compile(tp)
    result = fast(value)
    if result is _NO:
        return _convert(value, tp, where)
    return result


def _convert(value: Any, tp: Any, where: str) -> Any:
    """The general walk: every type, every error message."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except BodyMappingError as exc:
                errors.append(str(exc))
        raise BodyMappingError("; ".join(errors))
    if origin is typing.Annotated:
        return _convert(value, typing.get_args(tp)[0], where)
    if origin is typing.Literal:
        for allowed in typing.get_args(tp):
            if value == allowed and type(value) is type(allowed):
                return value
        choices = ", ".join(repr(a) for a in typing.get_args(tp))
        raise BodyMappingError(f"{where}: expected one of {choices}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list):
            raise BodyMappingError(f"{where}: expected a list, got {_kind(value)}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif args == ((),):  # tuple[()]
            args = ()
        elif args and len(args) != len(value):
            raise BodyMappingError(
                f"{where}: expected a list of {len(args)} items, got {len(value)}"
            )
        elif not args:
            args = (Any,) * len(value)
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (list, set, frozenset):
        if not isinstance(value, list):
            raise BodyMappingError(f"{where}: expected a list, got {_kind(value)}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        try:
            return origin(items)
        except TypeError as exc:  # unhashable items for a set
            raise BodyMappingError(f"{where}: {exc}") from None
    if origin is dict:
        if not isinstance(value, dict):
            raise BodyMappingError(f"{where}: expected an object, got {_kind(value)}")
        args = typing.get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _to_dataclass(value, tp, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int past 1.8e308
                raise BodyMappingError(f"{where}: number out of range for float") from None
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is uuid.UUID:
        if isinstance(value, str):
            try:
                return _uuid(value)
            except ValueError:
                pass
    elif tp is datetime.datetime:
        if isinstance(value, str):
            try:
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                pass
    elif tp is datetime.date:
        if isinstance(value, str):
            try:
                return datetime.date.fromisoformat(value)
            except ValueError:
                pass
    elif tp is type(None):
        if value is None:
            return None
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        member = _enum_member(tp, value)
        if member is not _NO:
            return member
        choices = ", ".join(repr(m.value) for m in tp)
        if issubclass(tp, enum.Flag):
            raise BodyMappingError(
                f"{where}: expected a combination of {choices} for {tp.__name__}, got {value!r}"
            )
        raise BodyMappingError(
            f"{where}: expected one of {choices} for {tp.__name__}, got {value!r}"
        )
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        return value
    raise BodyMappingError(f"{where}: expected {_name(tp)}, got {_kind(value)}")


_FLAG_BITS: dict[type, int] = {}


def _enum_member(tp: type[enum.Enum], value: Any) -> Any:
    """The member of ``tp`` that ``value`` names, or ``_NO``.

    A value of another type than the member's does not name it (``true`` or ``1.0`` is
    not ``IntEnum`` member 1; an ``int`` may name a float-valued member), as for
    ``Literal``. A ``Flag`` (``IntFlag`` included) takes a non-negative int made of
    declared bits only: ``tp(value)`` would make, and keep for ever, a new pseudo-member
    for any integer (``IntFlag(-5)`` is 3, ``IntFlag(1 << 40)`` a member of its own).
    """
    if issubclass(tp, enum.Flag):
        bits = _FLAG_BITS.get(tp)
        if bits is None:
            bits = 0
            for m in tp.__members__.values():
                if type(m.value) is int:
                    bits |= m.value
            _FLAG_BITS[tp] = bits
        if type(value) is not int or value < 0 or value & ~bits:
            return _NO
    try:
        member = tp(value)
    except ValueError:
        return _NO
    kind = type(member.value)
    if type(value) is not kind and not (kind is float and type(value) is int):
        return _NO
    return member


# dataclass → (field name → (type, required)); resolving string annotations is
# slow, and a class is mapped again for every message.
_FIELDS: dict[type, dict[str, tuple[Any, bool]]] = {}


def _fields_of(cls: type) -> dict[str, tuple[Any, bool]]:
    fields = _FIELDS.get(cls)
    if fields is None:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # a name some annotation uses is not resolvable
            hints = None
        module = sys.modules.get(cls.__module__)
        fields = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            tp = hints[f.name] if hints is not None else f.type
            if isinstance(tp, str):  # resolve this one alone, else accept any value
                try:
                    tp = eval(tp, dict(vars(module)) if module else {})
                except Exception:
                    tp = Any
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            fields[f.name] = (tp, required)
        _FIELDS[cls] = fields
    return fields


def _to_dataclass(value: Any, cls: type, where: str) -> Any:
    if not isinstance(value, dict):
        raise BodyMappingError(
            f"{where}: expected an object for {cls.__name__}, got {_kind(value)}"
        )
    fields = _fields_of(cls)
    unknown = sorted(k for k in value if k not in fields)
    if unknown:
        raise BodyMappingError(
            f"{where}: unknown field(s) for {cls.__name__}: {', '.join(unknown)}"
        )
    kwargs = {}
    for name, (tp, required) in fields.items():
        if name in value:
            kwargs[name] = _convert(value[name], tp, f"{where}.{name}")
        elif required:
            raise BodyMappingError(f"{where}: missing field {name!r} for {cls.__name__}")
    return cls(**kwargs)


# -- compiled converters ------------------------------------------------------
# ``_COMPILED[tp](value)`` is the converted value, or ``_NO`` when the value
# does not fit or is a case left to the general walk. No ``where`` strings are
# built and nothing is raised on that path: errors come from ``_convert``.

_NO: Any = object()
_COMPILED: dict[Any, Callable[[Any], Any]] = {}


def _compile(tp: Any) -> Callable[[Any], Any]:
    try:
        fast = _COMPILED.get(tp)
    except TypeError:  # an unhashable annotation: not cached
        return _general(tp)
    if fast is None:
        fast = _build(tp)
        _COMPILED[tp] = fast
    return fast


def _identity(value: Any) -> Any:
    return value


def _exact(kind: type) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        return value if type(value) is kind else _NO

    return check


def _to_float(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        try:
            return float(value)
        except OverflowError:  # the walk names it
            return _NO
    return _NO


def _to_none(value: Any) -> Any:
    return None if value is None else _NO


def _parser(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if type(value) is not str:
            return _NO
        try:
            return parse(value)
        except ValueError:
            return _NO

    return check


# what uuid.UUID reads, less what int(x, 16) also takes: other scripts' digits, "_", spaces
_UUID_TEXT = re.compile(r"(?:urn:uuid:)?\{?[0-9A-Fa-f-]*\}?")


def _uuid(text: str) -> uuid.UUID:
    if _UUID_TEXT.fullmatch(text) is None:
        raise ValueError(text)
    return uuid.UUID(text)


def _datetime(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


_LEAVES: dict[Any, Callable[[Any], Any]] = {
    Any: _identity,
    bool: _exact(bool),
    int: _exact(int),
    float: _to_float,
    str: _exact(str),
    type(None): _to_none,
    uuid.UUID: _parser(_uuid),
    datetime.datetime: _parser(_datetime),
    datetime.date: _parser(datetime.date.fromisoformat),
}


def _general(tp: Any) -> Callable[[Any], Any]:
    """The general walk behind the compiled interface (types not compiled)."""

    def walk(value: Any) -> Any:
        try:
            return _convert(value, tp, "")
        except BodyMappingError:
            return _NO

    return walk


def _build(tp: Any) -> Callable[[Any], Any]:
    leaf = _LEAVES.get(tp)
    if leaf is not None:
        return leaf
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return _build_union(args)
    if origin is typing.Annotated:
        return _compile(args[0])
    if origin in (list, set, frozenset):
        return _build_list(origin, args[0] if args else Any)
    if origin is dict:
        return _build_dict(args[1] if len(args) == 2 else Any)
    if origin is None and dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build_dataclass(tp)
    if origin is None and isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _build_enum(tp)
    if (
        origin is None
        and isinstance(tp, type)
        and tp not in (bytes, bytearray)
        and not issubclass(tp, (datetime.date, uuid.UUID))
    ):

        def instance(value: Any) -> Any:
            return value if isinstance(value, tp) else _NO

        return instance
    return _general(tp)  # Literal, tuple, and what the walk alone knows


def _build_union(args: tuple[Any, ...]) -> Callable[[Any], Any]:
    nullable = type(None) in args
    choices = [_compile(a) for a in args if a is not type(None)]

    def union(value: Any) -> Any:
        if value is None and nullable:
            return None
        for choice in choices:
            result = choice(value)
            if result is not _NO:
                return result
        return _NO

    return union


def _build_list(origin: type, item_type: Any) -> Callable[[Any], Any]:
    item = _compile(item_type)

    def items(value: Any) -> Any:
        if type(value) is not list:
            return _NO
        out: list[Any] = []
        append = out.append
        for v in value:
            v = item(v)
            if v is _NO:
                return _NO
            append(v)
        if origin is list:
            return out
        try:
            return origin(out)
        except TypeError:  # unhashable items: the walk names them
            return _NO

    return items


def _build_dict(value_type: Any) -> Callable[[Any], Any]:
    convert_value = _compile(value_type)

    def mapping(value: Any) -> Any:
        if type(value) is not dict:
            return _NO
        out = {}
        for k, v in value.items():
            v = convert_value(v)
            if v is _NO:
                return _NO
            out[k] = v
        return out

    return mapping


def _build_enum(tp: type[enum.Enum]) -> Callable[[Any], Any]:
    def member(value: Any) -> Any:
        return _enum_member(tp, value)

    return member


def _build_dataclass(cls: type) -> Callable[[Any], Any]:
    fields: list[tuple[str, Callable[[Any], Any], bool]] = []
    names: frozenset[str] = frozenset()
    ready = False

    def instance(value: Any) -> Any:
        if not ready:
            prepare()
        if type(value) is not dict or not names.issuperset(value):
            return _NO
        kwargs = {}
        for name, field, required in fields:
            v = value.get(name, _NO)
            if v is _NO:
                if required:
                    return _NO
                continue
            v = field(v)
            if v is _NO:
                return _NO
            kwargs[name] = v
        return cls(**kwargs)

    def prepare() -> None:
        # field converters are compiled on first use, so that a dataclass
        # may refer to itself (its converter is in the cache by then)
        nonlocal names, ready
        spec = _fields_of(cls)
        fields[:] = [(name, _compile(tp), required) for name, (tp, required) in spec.items()]
        names = frozenset(spec)
        ready = True

    return instance


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)
