"""REST controllers and inline handlers (SimpleW's ``AddDynamicContent``, ``MapGet``), and CORS.

``server.add_dynamic_content("/api")`` routes HTTP requests to the non-WEBSOCKET
methods of every :class:`~simplew.controller.Controller` subclass::

    @route("/users")
    class UserController(Controller):
        @route("GET", "/{id}")
        def get(self, id: int, verbose: bool = False) -> dict: ...

``GET /api/users/7?verbose=true`` calls ``get(id=7, verbose=True)``. Arguments are
taken by name from the path parameters, then the query string, converted with
the annotation (int, float, bool, str, UUID, datetime, enums, ``list[X]`` for a
repeated query parameter). A parameter annotated with a dataclass, or named
``body``, receives the JSON request body (mapped like ``message.map_body``; read
only under a JSON Content-Type, else 415 ``unsupported_media_type``); one
annotated :class:`~simplew.request.Request` (or named ``request``) the request.

What a handler returns becomes the response: dict / list / dataclass → JSON 200,
``str`` → text/plain, ``bytes`` → application/octet-stream, ``None`` → 204, a
:class:`Response` → exactly that. ``raise HttpError(403, "...")`` answers a JSON
error. Routes are compiled once at start: exact paths in a dict, parameterised
ones in one alternation regex (one match call per request whatever their number).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, unquote

import msgspec

from simplew._fast.context import ServerContext
from simplew._fast.plainjson import decode_json, has_lone_surrogate
from simplew._fast.plainjson import plain as _plain
from simplew.controller import Controller, join_path, routed_methods
from simplew.message import BodyMappingError, _convert, convert
from simplew.request import Request

log = logging.getLogger("simplew.rest")

HttpResponse = tuple[int, list[tuple[str, str]], bytes]

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
BINARY_TYPE = "application/octet-stream"
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MISSING = object()
_RESULTS = frozenset((dict, list, str, bytes, type(None)))  # results that are not awaitable


class Response:
    """A full response from a handler: ``Response(201, {"id": 3}, {"Location": "/x/3"})``.

    ``body`` is converted like a return value (dict/list/dataclass → JSON, str →
    text, bytes → octet-stream, None → empty); ``content_type`` overrides the type.
    """

    __slots__ = ("status", "body", "headers", "content_type")

    def __init__(
        self,
        status: int = 200,
        body: Any = None,
        headers: dict[str, str] | Iterable[tuple[str, str]] | None = None,
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.content_type = content_type

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.body!r})"


class HttpError(Exception):
    """Raise in a handler (or ``on_before_method``) to answer ``status`` with a JSON error."""

    def __init__(self, status: int, message: str = "", error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error = error or _ERROR_NAMES.get(status, "error")


_ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "handler_error",
    503: "unavailable",
}


class _BadRequest(Exception):
    def __init__(
        self, error: str, message: str, parameter: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.parameter = parameter
        self.status = status


def _is_json_type(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON: ``application/json`` or ``application/*+json``,
    any case, parameters (``; charset=utf-8``) ignored. None (no header) is not JSON.

    A browser sends a cross-site POST without a preflight only with ``text/plain``,
    ``application/x-www-form-urlencoded``, ``multipart/form-data`` or no Content-Type
    at all (a Blob or ArrayBuffer body), so a JSON body bound only under a JSON type
    is never one a foreign page could forge with a user's cookies.
    """
    if content_type is None:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == JSON_TYPE or (
        media.startswith("application/") and media.endswith("+json") and len(media) > 17
    )


# -- argument binding ---------------------------------------------------------

# where an argument comes from
PATH, QUERY, QUERY_LIST, BODY_JSON, BODY_RAW, BODY_TEXT, REQUEST = range(7)


class _Param:
    __slots__ = ("name", "source", "type", "default")

    def __init__(self, name: str, source: int, tp: Any, default: Any) -> None:
        self.name = name
        self.source = source
        self.type = tp
        self.default = default


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _params_of(func: Callable[..., Any], path_params: set[str], is_method: bool) -> list[_Param]:
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # an unresolvable annotation: use the raw ones
        hints = {}
    params = []
    signature = inspect.signature(func)
    items = list(signature.parameters.values())
    if is_method:
        items = items[1:]  # self
    for p in items:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        tp = hints.get(p.name, p.annotation)
        if tp is inspect.Parameter.empty:
            tp = Any
        default = _MISSING if p.default is inspect.Parameter.empty else p.default
        bare = _strip_optional(tp)
        if p.name in path_params:
            source = PATH
        elif bare is Request or (p.name == "request" and tp is Any):
            source = REQUEST
        elif dataclasses.is_dataclass(bare) or p.name == "body":
            if bare in (bytes, bytearray):
                source = BODY_RAW
            elif bare is str:
                source = BODY_TEXT
            else:
                source = BODY_JSON
        elif typing.get_origin(bare) in (list, tuple, set, frozenset):
            source = QUERY_LIST
        else:
            source = QUERY
        params.append(_Param(p.name, source, tp, default))
    missing = path_params - {p.name for p in params if p.source == PATH}
    if missing and not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
        raise TypeError(
            f"{func.__qualname__} has no parameter for path parameter(s) "
            f"{', '.join(sorted(missing))}"
        )
    return params


_TRUE = frozenset(("true", "1", "yes", "on"))
_FALSE = frozenset(("false", "0", "no", "off"))


def _from_string(raw: str, tp: Any, name: str) -> Any:
    """A path or query string converted to ``tp``; _BadRequest naming ``name`` when it does not fit."""
    if tp is Any or tp is str:
        return raw
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _from_string(raw, arg, name)
            except _BadRequest:
                pass
        raise _BadRequest(
            "bad_parameter", f"parameter {name!r}: cannot convert {raw!r} to {_type_name(tp)}", name
        )
    try:
        if tp is int:
            return _parse_int(raw)
        if tp is float:
            return _parse_float(raw)
        if tp is bool:
            low = raw.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(raw)
        return _convert(raw, tp, name)  # UUID, datetime, date, enums, Literal, str
    except (ValueError, BodyMappingError):
        raise _BadRequest(
            "bad_parameter", f"parameter {name!r}: expected {_type_name(tp)}, got {raw!r}", name
        ) from None


_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _parse_int(raw: str) -> int:
    """ASCII digits with an optional sign; not what ``int()`` also takes (other scripts'
    digits, ``1_000``, surrounding spaces)."""
    digits = raw[1:] if raw[:1] in ("-", "+") else raw
    if digits.isdigit() and digits.isascii():
        return int(raw)
    raise ValueError(raw)


def _parse_float(raw: str) -> float:
    """A finite decimal number, ASCII: not ``nan``, ``inf``, ``1e999``, ``1_0``, ``٣``."""
    if _FLOAT.fullmatch(raw) is None:
        raise ValueError(raw)
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return getattr(tp, "__name__", str(tp))


def _bind(
    params: list[_Param], request: Request, path_args: dict[str, str] | None
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    query = None
    body: Any = _MISSING
    for p in params:
        source = p.source
        if source == PATH:
            raw = path_args[p.name]  # type: ignore[index]
            kwargs[p.name] = _from_string(unquote(raw) if "%" in raw else raw, p.type, p.name)
        elif source == QUERY:
            if query is None:
                query = request.query
            raw = query.get(p.name)
            if raw is None:
                if p.default is _MISSING:
                    raise _BadRequest(
                        "missing_parameter", f"missing required parameter {p.name!r}", p.name
                    )
                kwargs[p.name] = p.default
            else:
                kwargs[p.name] = _from_string(raw, p.type, p.name)
        elif source == QUERY_LIST:
            values = parse_qs(request.query_string, keep_blank_values=True).get(p.name)
            if values is None:
                if p.default is _MISSING:
                    raise _BadRequest(
                        "missing_parameter", f"missing required parameter {p.name!r}", p.name
                    )
                kwargs[p.name] = p.default
                continue
            tp = _strip_optional(p.type)
            args = typing.get_args(tp)
            if typing.get_origin(tp) is tuple and args and args[-1] is not Ellipsis:
                if len(values) != len(args):  # tuple[int, str]: one value per item type
                    raise _BadRequest(
                        "bad_parameter",
                        f"parameter {p.name!r}: expected {len(args)} values, got {len(values)}",
                        p.name,
                    )
                kwargs[p.name] = tuple(_from_string(v, a, p.name) for v, a in zip(values, args))
                continue
            item = args[0] if args else Any
            converted = [_from_string(v, item, p.name) for v in values]
            kwargs[p.name] = typing.get_origin(tp)(converted)
        elif source == REQUEST:
            kwargs[p.name] = request
        elif source == BODY_RAW:
            kwargs[p.name] = request.body
        elif source == BODY_TEXT:
            try:
                kwargs[p.name] = request.body.decode("utf-8")
            except UnicodeDecodeError:
                raise _BadRequest(
                    "bad_body", "the request body is not UTF-8 text", p.name
                ) from None
        else:  # BODY_JSON
            if not request.body:
                if p.default is not _MISSING:
                    kwargs[p.name] = p.default
                    continue
                raise _BadRequest("bad_body", "a JSON request body is required", p.name)
            if body is _MISSING:
                content_type = request.headers.get("content-type")
                if not _is_json_type(content_type):
                    raise _BadRequest(
                        "unsupported_media_type",
                        "the request body must be JSON (Content-Type: application/json), got "
                        + ("no Content-Type" if content_type is None else repr(content_type)),
                        p.name,
                        415,
                    )
                try:
                    body = decode_json(request.body)
                    # a \uD800-\uDFFF escape (UTF-8 text) or UTF-16/32 (NUL bytes) may hold one
                    if (b"\\u" in request.body or b"\x00" in request.body) and has_lone_surrogate(
                        body
                    ):
                        raise ValueError("a string holds a lone surrogate (\\ud800-\\udfff)")
                except (ValueError, RecursionError) as exc:
                    raise _BadRequest(
                        "bad_json", f"the request body is not valid JSON: {exc}", p.name
                    ) from None
            try:
                kwargs[p.name] = convert(body, p.type, "body")
            except BodyMappingError as exc:
                raise _BadRequest("bad_body", str(exc), p.name) from None
    return kwargs


# -- JSON responses -------------------------------------------------------------

# for the values _plain accepts (simplew._fast.plainjson): the stdlib encoder's bytes, faster
_fast_encode = msgspec.json.Encoder().encode


# -- compiled routes ----------------------------------------------------------


class Target:
    """One compiled route: what to call for one method and path."""

    __slots__ = (
        "method",
        "path",
        "func",
        "controller",
        "params",
        "is_async",
        "protected",
        "name",
        "bare",
    )

    def __init__(
        self, method: str, path: str, func: Callable[..., Any], controller: type[Controller] | None
    ) -> None:
        self.method = method
        self.path = path
        self.func = func
        self.controller = controller
        names = set(_PARAM.findall(path))
        self.params = _params_of(func, names, controller is not None)
        self.is_async = inspect.iscoroutinefunction(func)
        self.protected = _is_protected(controller, func) if controller is not None else False
        self.name = f"{method} {path}"
        # an inline handler without parameters: called as func(), nothing to bind
        self.bare = controller is None and not self.params


def _is_protected(controller: type, func: Callable[..., Any]) -> bool:
    try:
        from simplew.auth import is_protected
    except ImportError:
        return False
    return bool(is_protected(controller, func))


class Router:
    """The HTTP routes of a server, compiled once at start."""

    def __init__(
        self,
        targets: list[Target],
        prefixes: list[str],
        context: ServerContext | None,
        json_default: Callable[[Any], Any],
    ) -> None:
        self.context = context
        self.app = None if context is None else context.app  # controllers' self.server
        self.prefixes = sorted(set(prefixes), key=len, reverse=True)
        # allow_nan=False: NaN and Infinity are not JSON; a handler returning one
        # gets 500 handler_error (ValueError) rather than an answer no client parses
        self._dumps = json.JSONEncoder(
            default=json_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode
        self.exact: dict[str, dict[str, Target]] = {}
        patterns: dict[str, dict[str, Target]] = {}
        for target in targets:
            table = patterns if "{" in target.path else self.exact
            methods = table.setdefault(target.path, {})
            if target.method in methods:
                raise ValueError(f"two handlers answer {target.method} {target.path}")
            methods[target.method] = target
        # one alternation: the outer group of each route closes last, so
        # ``match.lastindex`` tells which route matched
        parts = []
        self._groups: dict[int, tuple[dict[str, Target], list[tuple[str, int]]]] = {}
        group = 0
        for path, methods in patterns.items():
            group += 1
            outer = group
            names = []
            regex = []
            pos = 0
            for m in _PARAM.finditer(path):
                regex.append(re.escape(path[pos : m.start()]))
                group += 1
                names.append((m.group(1), group))
                regex.append("([^/]+)")
                pos = m.end()
            regex.append(re.escape(path[pos:]))
            parts.append("(" + "".join(regex) + ")")
            self._groups[outer] = (methods, names)
        self._regex = re.compile("(?:" + "|".join(parts) + r")\Z") if parts else None

    def __len__(self) -> int:
        return sum(len(m) for m in self.exact.values()) + sum(
            len(m) for m, _ in self._groups.values()
        )

    def routes(self) -> list[str]:
        """``"METHOD /path"`` of every route."""
        found = [t.name for m in self.exact.values() for t in m.values()]
        found += [t.name for m, _ in self._groups.values() for t in m.values()]
        return found

    def match(self, path: str) -> tuple[dict[str, Target], dict[str, str] | None] | None:
        """(method → target, path arguments) for ``path``, or None."""
        if len(path) > 1 and path[-1] == "/":
            path = path.rstrip("/") or "/"
        methods = self.exact.get(path)
        if methods is not None:
            return methods, None
        if self._regex is None:
            return None
        m = self._regex.match(path)
        if m is None:
            return None
        methods, names = self._groups[m.lastindex]  # type: ignore[index]
        return methods, {name: m.group(i) for name, i in names}

    def owns(self, path: str) -> bool:
        """Whether ``path`` is under a dynamic-content prefix (so a miss is a JSON 404)."""
        for prefix in self.prefixes:
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return True
        return False

    # -- dispatch ---------------------------------------------------------

    def dispatch(self, request: Request) -> Any:
        """The response for ``request``: a tuple, a coroutine giving one, or None (no route)."""
        methods = self.exact.get(request.path)
        if methods is not None:
            path_args = None
        else:
            found = self.match(request.path)
            if found is None:
                return None
            methods, path_args = found
        method = request.method
        target = methods.get(method)
        if target is not None and target.bare:
            # the common inline case in one frame: func() returning a plain dict
            try:
                result = target.func()
            except Exception as exc:
                return self.failure(target, request, exc)
            if type(result) is dict and _plain(result):
                return 200, [("Content-Type", JSON_TYPE)], _fast_encode(result)
            return self.finish(target, request, result)
        if target is None and method == "HEAD":
            target = methods.get("GET")
        if target is None:
            allow = _allow(methods)
            if method == "OPTIONS":
                return 204, [("Allow", allow)], b""
            return (
                405,
                [("Allow", allow), ("Content-Type", JSON_TYPE)],
                self._dumps(
                    {
                        "error": "method_not_allowed",
                        "method": method,
                        "path": request.path,
                        "allowed": allow.split(", "),
                    }
                ).encode(),
            )
        return self.call(target, request, path_args)

    def json_body(self, value: Any) -> bytes:
        """``value`` as UTF-8 JSON, compact, non-ASCII kept; the server's ``json_default``
        for other types. msgspec writes the plain values it writes identically."""
        if _plain(value):
            return _fast_encode(value)
        return self._dumps(value).encode("utf-8")

    def call(self, target: Target, request: Request, path_args: dict[str, str] | None) -> Any:
        try:
            kwargs = _bind(target.params, request, path_args) if target.params else {}
            controller = target.controller
            if controller is not None:
                instance = controller()
                instance.request = request
                instance.server = self.app
                self._authorize(target, instance, request)
                instance.on_before_method()
                result = target.func(instance, **kwargs)
            else:
                result = target.func(**kwargs)
        except Exception as exc:
            return self.failure(target, request, exc)
        return self.finish(target, request, result)

    def finish(self, target: Target, request: Request, result: Any) -> Any:
        """The response to what ``target``'s handler returned (awaited if awaitable)."""
        if type(result) not in _RESULTS and inspect.isawaitable(result):
            return self._finish(target, request, result)
        try:
            return self.response(result)
        except Exception as exc:
            return self.failure(target, request, exc)

    def _authorize(self, target: Target, instance: Controller, request: Request) -> None:
        auth = None if self.context is None else self.context.jwt_auth
        if auth is None:
            if target.protected:
                raise HttpError(
                    401, "this route requires a JWT but the server has no key (set_token)"
                )
            return
        try:
            instance.jwt = auth.claims_for(None, request.headers)
        except Exception as exc:  # simplew.auth.Unauthorized
            if target.protected:
                raise HttpError(401, str(exc)) from None

    async def _finish(self, target: Target, request: Request, awaitable: Any) -> HttpResponse:
        try:
            result = await awaitable
            return self.response(result)
        except Exception as exc:
            return self.failure(target, request, exc)

    def response(self, result: Any) -> HttpResponse:
        """A handler's return value as (status, headers, body)."""
        if type(result) is dict:
            return 200, [("Content-Type", JSON_TYPE)], self.json_body(result)
        if result is None:
            return 204, [], b""
        if isinstance(result, Response):
            status, headers, body = self._body(result.body, result.status)
            if result.content_type is not None:
                headers = [("Content-Type", result.content_type)]
            if result.headers:
                extra = (
                    result.headers.items() if isinstance(result.headers, dict) else result.headers
                )
                headers = headers + [(str(k), str(v)) for k, v in extra]
            return status, headers, body
        return self._body(result, 200)

    def _body(self, value: Any, status: int) -> HttpResponse:
        if value is None:
            return (204 if status == 200 else status), [], b""
        if isinstance(value, str):
            return status, [("Content-Type", TEXT_TYPE)], value.encode("utf-8")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return status, [("Content-Type", BINARY_TYPE)], bytes(value)
        return status, [("Content-Type", JSON_TYPE)], self.json_body(value)

    def failure(self, target: Target | None, request: Request, exc: BaseException) -> HttpResponse:
        """The JSON error answering ``exc``."""
        if isinstance(exc, _BadRequest):
            out = {"error": exc.error, "message": exc.message}
            if exc.parameter is not None:
                out["parameter"] = exc.parameter
            return self.error(exc.status, out)
        if isinstance(exc, HttpError):
            return self.error(exc.status, {"error": exc.error, "message": exc.message})
        if isinstance(exc, BodyMappingError):
            return self.error(400, {"error": "bad_body", "message": str(exc)})
        name = target.name if target is not None else f"{request.method} {request.path}"
        log.error("handler for %s raised", name, exc_info=exc)
        if self.context is not None:
            self.context.http_stats.handler_errors += 1
        return self.error(
            500,
            {"error": "handler_error", "message": f"{type(exc).__name__} in handler for {name}"},
        )

    def error(self, status: int, payload: dict[str, Any]) -> HttpResponse:
        return status, [("Content-Type", JSON_TYPE)], self.json_body(payload)

    def not_found(self, request: Request) -> HttpResponse:
        return self.error(
            404,
            {
                "error": "not_found",
                "path": request.path,
                "message": f"no route for {request.method} {request.path}",
            },
        )


def _allow(methods: dict[str, Target]) -> str:
    allowed = set(methods)
    if "GET" in allowed:
        allowed.add("HEAD")
    allowed.add("OPTIONS")
    return ", ".join(m for m in HTTP_METHODS if m in allowed) + "".join(
        ", " + m for m in sorted(allowed) if m not in HTTP_METHODS
    )


def http_routes_of(controller: type[Controller]) -> list[tuple[str, str, Callable[..., Any]]]:
    """(method, path, function) of each non-WEBSOCKET route of ``controller``."""
    return [route for route in routed_methods(controller) if route[0] != "WEBSOCKET"]


class DynamicSpec:
    """What ``add_dynamic_content`` asked for: compiled at start."""

    def __init__(self, path: str, controllers: list[type[Controller]] | None) -> None:
        self.path = path
        self.controllers = controllers

    def targets(self) -> list[Target]:
        out = []
        for controller in self.controllers or Controller.subclasses():
            for method, route_path, func in http_routes_of(controller):
                out.append(Target(method, join_path(self.path, route_path), func, controller))
        return out


def compile_router(
    specs: list[DynamicSpec],
    inline: list[tuple[str, str, Callable[..., Any]]],
    context: ServerContext | None,
    json_default: Callable[[Any], Any],
) -> Router | None:
    """The router of ``specs`` (controllers) and ``inline`` (map_get...) routes, or None."""
    if not specs and not inline:
        return None
    targets = []
    for spec in specs:
        targets.extend(spec.targets())
    for method, path, func in inline:
        targets.append(Target(method, path, func, None))
    return Router(targets, [spec.path for spec in specs], context, json_default)


# -- CORS -----------------------------------------------------------------------


class Cors:
    """``server.add_cors(...)``: preflight answers and Access-Control-* headers.

    ``origin`` is ``"*"``, one origin or a list of them; with a list (or with
    ``credentials``) the request's Origin is echoed when allowed, with ``Vary: Origin``.
    """

    def __init__(
        self,
        origin: str | Iterable[str] = "*",
        methods: str | Iterable[str] | None = None,
        headers: str | Iterable[str] | None = None,
        credentials: bool = False,
        max_age: int | None = None,
        expose_headers: str | Iterable[str] | None = None,
    ) -> None:
        if isinstance(origin, str):
            origins = [o.strip() for o in origin.split(",") if o.strip()]
        else:
            origins = list(origin)
        self.any_origin = "*" in origins
        self.origins = frozenset(o.rstrip("/") for o in origins if o != "*")
        self.credentials = credentials
        self.echo = credentials or not self.any_origin
        self.methods = _join(methods) or "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
        self.headers = _join(headers)  # None: echo Access-Control-Request-Headers
        self.max_age = max_age
        self.expose = _join(expose_headers)

    def _origin_for(self, origin: str | None) -> str | None:
        if origin is None:
            return None if self.echo else "*"
        if self.any_origin or origin in self.origins:
            return origin if self.echo else "*"
        return None

    def preflight(self, request: Request) -> HttpResponse:
        origin = request.headers.get("origin")
        allowed = self._origin_for(origin)
        if origin is None or allowed is None:
            return (
                403,
                [("Content-Type", JSON_TYPE), ("Vary", "Origin")],
                b'{"error":"cors_origin","message":"origin not allowed"}',
            )
        out = [
            ("Access-Control-Allow-Origin", allowed),
            ("Access-Control-Allow-Methods", self.methods),
        ]
        if self.headers is not None:
            out.append(("Access-Control-Allow-Headers", self.headers))
            vary = "Origin"
        else:
            asked = request.headers.get("access-control-request-headers")
            if asked:
                out.append(("Access-Control-Allow-Headers", asked))
            vary = "Origin, Access-Control-Request-Headers"
        if self.credentials:
            out.append(("Access-Control-Allow-Credentials", "true"))
        if self.max_age is not None:
            out.append(("Access-Control-Max-Age", str(int(self.max_age))))
        out.append(("Vary", vary if self.echo or self.headers is None else "Origin"))
        return 204, out, b""

    def headers_for(self, request: Request) -> list[tuple[str, str]]:
        """The headers an actual (non-preflight) response gets."""
        allowed = self._origin_for(request.headers.get("origin"))
        out = []
        if allowed is not None:
            out.append(("Access-Control-Allow-Origin", allowed))
            if self.credentials:
                out.append(("Access-Control-Allow-Credentials", "true"))
            if self.expose:
                out.append(("Access-Control-Expose-Headers", self.expose))
        if self.echo:
            out.append(("Vary", "Origin"))
        return out

    def apply(self, request: Request, response: Any) -> Any:
        """``response`` (a tuple or an awaitable of one) with the CORS headers added."""
        extra = self.headers_for(request)
        if not extra:
            return response
        if isinstance(response, tuple):
            status, headers, body = response
            return status, list(headers) + extra, body
        return _add_headers(response, extra)


async def _add_headers(awaitable: Any, extra: list[tuple[str, str]]) -> HttpResponse:
    status, headers, body = await awaitable
    return status, list(headers) + extra, body


def _join(value: str | Iterable[str] | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return ", ".join(value)


__all__ = [
    "Response",
    "HttpError",
    "Router",
    "Cors",
    "DynamicSpec",
    "compile_router",
    "http_routes_of",
]
