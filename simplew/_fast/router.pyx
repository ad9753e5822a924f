# cython: language_level=3
"""Envelope parsing and route dispatch for WebSocket messages.

A :class:`RouteEndpoint` receives each whole message of a client, parses the
``{"url": ..., "body": ...}`` envelope, looks the url up in a dict built once
at start-up and calls the controller method. Every failure is answered to the
client with one JSON error message (see README, "Errors") and the connection
stays open.

The envelope is decoded by :func:`simplew._fast.plainjson.decode_json`
(msgspec's C decoder, with ``json.loads`` deciding what msgspec refuses).
What the facade decides (which routes need a JWT, which controllers have a
before-hook, the message class, how a return value is sent) arrives as
values: this module imports nothing of ``simplew/*.py``.
"""
import asyncio
import functools
import inspect
import json
import logging

from simplew._fast.connection cimport Endpoint, WebSocketConnection
from simplew._fast.context cimport ServerContext
from simplew._fast.frames cimport text_frame
from simplew._fast.plainjson import decode_json, has_lone_surrogate

log = logging.getLogger("simplew.websocket")

cdef object _json_dumps = json.dumps
cdef object _iscoroutine = inspect.iscoroutine
cdef object _partial = functools.partial
cdef object _loads = decode_json
cdef object _has_lone_surrogate = has_lone_surrogate


class Unauthorized(Exception):
    """No valid token: the text is the ``message`` of the error sent to the client.

    Raised by the JWT validator (:class:`simplew.auth.JwtAuth`), answered here."""


cdef object _Unauthorized = Unauthorized


cdef class RouteTarget:
    """A compiled route: the controller class and its method for one url."""
    cdef readonly object controller_class
    cdef readonly object method
    cdef readonly str url
    cdef readonly bint require_jwt   # only messages with a valid JWT (simplew.auth)
    cdef readonly bint before_hook   # call on_before_method() first (the class overrides it)

    def __init__(self, str url, controller_class, method, bint require_jwt, bint before_hook):
        self.url = url
        self.controller_class = controller_class
        self.method = method
        self.require_jwt = require_jwt
        self.before_hook = before_hook


cpdef str error_message(str code, object url, str message):
    """The JSON text sent to a client whose message could not be served."""
    return _json_dumps({"error": code, "url": url, "message": message})


cdef inline int _send_error(WebSocketConnection conn, str code, object url, str message) except -1:
    if conn.v2:
        return conn.queue_message(1, error_message(code, url, message).encode("utf-8"))
    return conn.write_frame(text_frame(error_message(code, url, message)))


cdef class RouteEndpoint(Endpoint):
    """An endpoint whose messages are routed to controller methods."""
    cdef dict _routes
    cdef object _message_class
    cdef object _mapping_error
    cdef object _reply
    cdef set _tasks            # running async handlers (the loop keeps only weak references)

    def __init__(self, str path, Py_ssize_t max_message_size, dict routes,
                 message_class, mapping_error, reply, ServerContext context=None):
        Endpoint.__init__(self, path, max_message_size, context)
        self._routes = routes
        self._message_class = message_class
        self._mapping_error = mapping_error
        self._reply = reply
        self._tasks = set()

    @property
    def routes(self):
        return dict(self._routes)

    cpdef on_message(self, WebSocketConnection conn, bint is_text, object data):
        cdef RouteTarget target
        cdef object envelope, url
        try:
            envelope = _loads(data)
            if (type(data) is not str or "\\u" in data) and _has_lone_surrogate(envelope):
                raise ValueError("a string holds a lone surrogate (\\ud800-\\udfff)")
        except (ValueError, RecursionError) as exc:
            # ValueError covers JSONDecodeError and UnicodeDecodeError (binary
            # data); RecursionError is what json raises for very deep nesting.
            _send_error(conn, "bad_json", None, f"message is not valid JSON: {exc}")
            return
        if type(envelope) is not dict:
            _send_error(conn, "bad_envelope", None,
                        "message must be a JSON object with a \"url\"")
            return
        url = (<dict>envelope).get("url")
        if type(url) is not str:
            _send_error(conn, "missing_url", None, "message has no \"url\" string")
            return
        target = self._routes.get(url)
        if target is None:
            _send_error(conn, "unknown_url", url, f"no WEBSOCKET route for {url}")
            return
        token = (<dict>envelope).get("jwt")
        claims = None
        jwt_auth = self.context.jwt_auth
        if jwt_auth is not None:
            if target.require_jwt:
                try:
                    claims = jwt_auth.claims_for(token, conn.request.headers)
                except _Unauthorized as exc:
                    _send_error(conn, "unauthorized", url, str(exc))
                    return
            else:
                claims = jwt_auth.optional_claims(token, conn.request.headers)
        elif target.require_jwt:
            _send_error(conn, "unauthorized", url,
                        "this route requires a JWT but the server has no key (set_token)")
            return
        message = self._message_class(url, (<dict>envelope).get("body"), token, claims)
        self._call(conn, target, message, claims)

    cdef _call(self, WebSocketConnection conn, RouteTarget target, message, claims):
        try:
            controller = target.controller_class()
            controller.session = conn
            controller.request = conn.request
            controller.server = self.context.app
            if claims is not None:          # else the class default, None
                controller.jwt = claims
            if target.before_hook:          # Controller's own hook does nothing
                controller.on_before_method()
            result = target.method(controller, message)
        except Exception as exc:
            self._failed(conn, target.url, exc)
            return
        if result is None:
            return
        if _iscoroutine(result):
            task = asyncio.get_running_loop().create_task(result)
            self._tasks.add(task)
            task.add_done_callback(_partial(self._async_done, conn, target.url))
            return
        self._send_result(conn, target.url, result)

    cdef _send_result(self, WebSocketConnection conn, str url, result):
        # str and bytes are sent as they are (what the server's reply does with
        # them, without its Python call); anything else goes through the reply
        try:
            if type(result) is str:
                conn.queue_message(1, (<str>result).encode("utf-8"))
            elif type(result) is bytes:
                conn.queue_message(2, <bytes>result)
            else:
                self._reply(conn, result)
        except Exception as exc:
            self._failed(conn, url, exc)

    def _async_done(self, WebSocketConnection conn, str url, task):
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._failed(conn, url, exc)
        elif task.result() is not None:
            self._send_result(conn, url, task.result())

    cdef _failed(self, WebSocketConnection conn, str url, exc):
        if isinstance(exc, self._mapping_error):
            _send_error(conn, "bad_body", url, str(exc))
            return
        self.handler_errors += 1
        log.error("handler for %s raised", url, exc_info=exc)
        _send_error(conn, "handler_error", url, f"{type(exc).__name__} in handler for {url}")


cdef class CallbackEndpoint(Endpoint):
    """An endpoint that gives each whole message to ``callback(session, data)``.

    ``data`` is a ``str`` for a TEXT message and ``bytes`` for BINARY.
    """
    cdef object _callback
    cdef set _tasks

    def __init__(self, str path, Py_ssize_t max_message_size, callback,
                 ServerContext context=None):
        Endpoint.__init__(self, path, max_message_size, context)
        self._callback = callback
        self._tasks = set()

    cpdef on_message(self, WebSocketConnection conn, bint is_text, object data):
        try:
            result = self._callback(conn, data)
        except Exception:
            self.handler_errors += 1
            log.exception("message callback of %s raised", self.path)
            conn.fail(1011, "internal error")
            return
        if _iscoroutine(result):
            task = asyncio.get_running_loop().create_task(result)
            self._tasks.add(task)
            task.add_done_callback(_partial(self._async_done, conn))

    def _async_done(self, WebSocketConnection conn, task):
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        self.handler_errors += 1
        log.error("message callback of %s raised", self.path, exc_info=task.exception())
        conn.fail(1011, "internal error")
