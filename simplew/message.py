"""``WebSocketMessage``: the envelope a client sends, and mapping its body."""
from __future__ import annotations

import dataclasses
import datetime
import enum
import sys
import types
import typing
import uuid
from typing import Any, TypeVar

T = TypeVar("T")


class BodyMappingError(ValueError):
    """The message body does not fit the class it is mapped onto."""


class WebSocketMessage:
    """``{"url": ..., "body": ..., "jwt": ...}`` as received; ``body`` is decoded JSON.

    ``claims`` holds the decoded JWT when the server has a key (``set_token``)
    and the message came with a valid token (see :mod:`simplew.auth`), else None.
    """

    __slots__ = ("url", "body", "jwt", "claims")

    def __init__(self, url: str, body: Any = None, jwt: str | None = None,
                 claims: dict[str, Any] | None = None) -> None:
        self.url = url
        self.body = body
        self.jwt = jwt
        self.claims = claims

    def map_body(self, cls: type[T]) -> T:
        """The body as an instance of ``cls`` (a dataclass, or a plain type).

        Raises :class:`BodyMappingError` naming the field that does not fit.
        """
        return _convert(self.body, cls, "body")

    MapBody = map_body

    def __repr__(self) -> str:
        return f"WebSocketMessage(url={self.url!r}, body={self.body!r})"


def _convert(value: Any, tp: Any, where: str) -> Any:
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
        elif args == ((),):              # tuple[()]
            args = ()
        elif args and len(args) != len(value):
            raise BodyMappingError(f"{where}: expected a list of {len(args)} items, got {len(value)}")
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
        except TypeError as exc:         # unhashable items for a set
            raise BodyMappingError(f"{where}: {exc}") from None
    if origin is dict:
        if not isinstance(value, dict):
            raise BodyMappingError(f"{where}: expected an object, got {_kind(value)}")
        args = typing.get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _to_dataclass(value, tp, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is uuid.UUID:
        if isinstance(value, str):
            try:
                return uuid.UUID(value)
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
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in tp)
            raise BodyMappingError(
                f"{where}: expected one of {choices} for {tp.__name__}, got {value!r}") from None
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        return value
    raise BodyMappingError(f"{where}: expected {_name(tp)}, got {_kind(value)}")


# dataclass → (field name → (type, required)); resolving string annotations is
# slow, and a class is mapped again for every message.
_FIELDS: dict[type, dict[str, tuple[Any, bool]]] = {}


def _fields_of(cls: type) -> dict[str, tuple[Any, bool]]:
    fields = _FIELDS.get(cls)
    if fields is None:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:                # a name some annotation uses is not resolvable
            hints = None
        module = sys.modules.get(cls.__module__)
        fields = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            tp = hints[f.name] if hints is not None else f.type
            if isinstance(tp, str):      # resolve this one alone, else accept any value
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
        raise BodyMappingError(f"{where}: expected an object for {cls.__name__}, got {_kind(value)}")
    fields = _fields_of(cls)
    unknown = sorted(k for k in value if k not in fields)
    if unknown:
        raise BodyMappingError(f"{where}: unknown field(s) for {cls.__name__}: {', '.join(unknown)}")
    kwargs = {}
    for name, (tp, required) in fields.items():
        if name in value:
            kwargs[name] = _convert(value[name], tp, f"{where}.{name}")
        elif required:
            raise BodyMappingError(f"{where}: missing field {name!r} for {cls.__name__}")
    return cls(**kwargs)


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
