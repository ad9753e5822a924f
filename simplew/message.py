"""``WebSocketMessage``: the envelope a client sends, and mapping its body."""
from __future__ import annotations

import dataclasses
import datetime
import types
import typing
import uuid
from typing import Any, TypeVar

T = TypeVar("T")


class BodyMappingError(ValueError):
    """The message body does not fit the class it is mapped onto."""


class WebSocketMessage:
    """``{"url": ..., "body": ..., "jwt": ...}`` as received; ``body`` is decoded JSON."""

    __slots__ = ("url", "body", "jwt")

    def __init__(self, url: str, body: Any = None, jwt: str | None = None) -> None:
        self.url = url
        self.body = body
        self.jwt = jwt

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
    if origin in (list, tuple, set, frozenset):
        if not isinstance(value, list):
            raise BodyMappingError(f"{where}: expected a list, got {_kind(value)}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return origin(items)
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
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        return value
    raise BodyMappingError(f"{where}: expected {_name(tp)}, got {_kind(value)}")


def _to_dataclass(value: Any, cls: type, where: str) -> Any:
    if not isinstance(value, dict):
        raise BodyMappingError(f"{where}: expected an object for {cls.__name__}, got {_kind(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise BodyMappingError(f"{where}: unknown field(s) for {cls.__name__}: {', '.join(unknown)}")
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            kwargs[name] = _convert(value[name], hints.get(name, Any), f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise BodyMappingError(f"{where}: missing field {name!r} for {cls.__name__}")
    return cls(**kwargs)


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
