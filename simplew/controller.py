"""Controllers and the ``@route`` decorator, as in SimpleW.

``@route("/test")`` on a :class:`Controller` subclass gives its base path;
``@route("WEBSOCKET", "/index")`` on a method makes it answer WebSocket
messages whose url is endpoint + class path + method path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ROUTES_ATTR = "__simplew_routes__"
CLASS_ROUTE_ATTR = "__simplew_route__"


def route(method_or_path: str, path: str | None = None) -> Callable[[Any], Any]:
    """Route a controller class (``@route("/x")``) or method (``@route("WEBSOCKET", "/x")``)."""
    if path is None:
        verb, target = None, method_or_path
    else:
        verb, target = method_or_path.upper(), path
    if not target.startswith("/"):
        raise ValueError(f"route path must start with '/': {target!r}")

    def decorate(obj: Any) -> Any:
        if isinstance(obj, type):
            if verb is not None:
                raise TypeError("a controller class takes @route(path), without a verb")
            setattr(obj, CLASS_ROUTE_ATTR, target)
        else:
            routes = list(getattr(obj, ROUTES_ATTR, ()))
            routes.append((verb or "GET", target))
            setattr(obj, ROUTES_ATTR, routes)
        return obj

    return decorate


class Controller:
    """Base class of controllers; a new instance serves each message.

    During a call: ``self.session`` is the client's session (``id``,
    ``send_text``, ``send_binary``, ``close``), ``self.request`` the upgrade
    request (``path``, ``query``, ``headers``) and ``self.server`` the server.
    For an HTTP route (``@route("GET", "/users/{id}")``, see :mod:`simplew.rest`)
    ``self.request`` is the HTTP request (``method``, ``path``, ``query``,
    ``headers``, ``body``) and ``self.session`` is None.
    ``self.jwt`` is the decoded JWT of the message, or None (:mod:`simplew.auth`);
    ``require_jwt = True`` makes every method of the class need a valid one.
    """

    session: Any = None
    request: Any = None
    server: Any = None
    jwt: Any = None
    require_jwt: bool = False
    _registry: list[type[Controller]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Controller._registry.append(cls)

    def on_before_method(self) -> None:
        """Runs before the routed method; override to check or prepare."""
        self.OnBeforeMethod()

    def OnBeforeMethod(self) -> None:  # SimpleW spelling; override either
        pass

    @property
    def Session(self) -> Any:
        return self.session

    @property
    def Request(self) -> Any:
        return self.request

    @classmethod
    def subclasses(cls) -> list[type[Controller]]:
        """Every Controller subclass defined so far, in definition order."""
        return list(Controller._registry)


def has_before_hook(controller: type[Controller]) -> bool:
    """Whether ``controller`` overrides ``on_before_method`` or ``OnBeforeMethod``
    (the router then calls the hook; Controller's own does nothing)."""
    return (
        getattr(controller, "on_before_method", None) is not Controller.on_before_method
        or getattr(controller, "OnBeforeMethod", None) is not Controller.OnBeforeMethod
    )


def join_path(*parts: str) -> str:
    """Join route parts: ``("/websocket", "/test", "/index")`` → ``/websocket/test/index``."""
    path = "".join(p.rstrip("/") for p in parts if p and p != "/")
    return path or "/"


def routed_methods(controller: type[Controller]) -> list[tuple[str, str, Callable[..., Any]]]:
    """(verb, full path, function) for each ``@route`` of ``controller``'s methods."""
    base = getattr(controller, CLASS_ROUTE_ATTR, "")
    found = []
    for name in dir(controller):
        func = getattr(controller, name, None)
        if func is None:
            continue
        for method, path in getattr(func, ROUTES_ATTR, ()):
            found.append((method, join_path(base, path), func))
    return found


def routes_of(controller: type[Controller], verb: str) -> list[tuple[str, Callable[..., Any]]]:
    """(path, function) for each method of ``controller`` routed with ``verb``."""
    return [(path, func) for method, path, func in routed_methods(controller) if method == verb]
