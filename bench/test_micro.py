"""Micro-benchmarks of simplew's Cython hot paths against pure-Python equivalents.

    python -m pytest bench/test_micro.py --benchmark-enable -q

Each pair (``cython`` / ``python``) shares a benchmark group, and every test first
checks that both implementations give the same result. The pure-Python
equivalents are written here, as a careful Python programmer would
(``struct`` headers, whole-buffer XOR through ``int``), not strawmen.

Envelope parse + dispatch: ``simplew._fast.router`` exposes no standalone
parse-and-dispatch function; the benchmark calls the ``cpdef``
``RouteEndpoint.on_message`` of a real endpoint (built as ``SimpleWServer``
builds it) with a ``WebSocketConnection`` that has no transport, so the reply
frame is built but not written. The Python side does the same steps:
``json.loads``, checks, dict lookup, ``WebSocketMessage``, a new controller,
``on_before_method``, the call, building the reply frame.
"""

from __future__ import annotations

import json
import os
import struct

import pytest

frames = pytest.importorskip("simplew._fast.frames")

PAYLOAD_SIZES = [64, 1024, 65536]


# ------------------------------------------------------------ pure Python ---


def py_build(opcode: int, payload: bytes, rsv1: bool = False) -> bytes:
    """A final unmasked frame (server to client)."""
    n = len(payload)
    b0 = 0x80 | (0x40 if rsv1 else 0) | (opcode & 0x0F)
    if n < 126:
        header = struct.pack("!BB", b0, n)
    elif n < 65536:
        header = struct.pack("!BBH", b0, 126, n)
    else:
        header = struct.pack("!BBQ", b0, 127, n)
    return header + payload


def py_text_frame(text: str) -> bytes:
    return py_build(0x1, text.encode("utf-8"))


def py_apply_mask(data: bytes, mask: bytes) -> bytes:
    """XOR with a 4-byte mask, the whole buffer at once through ``int``."""
    n = len(data)
    if n == 0:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


def py_apply_mask_bytewise(data: bytes, mask: bytes) -> bytes:
    """The textbook loop, for the record (only benchmarked on small payloads)."""
    return bytes(b ^ mask[i & 3] for i, b in enumerate(data))


# ------------------------------------------------------------------ frames ---


@pytest.mark.parametrize("size", PAYLOAD_SIZES)
@pytest.mark.parametrize("impl", ["cython", "python"])
def test_text_frame(benchmark, impl, size):
    text = ("héllo wörld " * (size // 12 + 1))[:size]
    assert frames.text_frame(text) == py_text_frame(text)
    fn = frames.text_frame if impl == "cython" else py_text_frame
    benchmark.group = f"text_frame {size} chars"
    benchmark(fn, text)


@pytest.mark.parametrize("size", PAYLOAD_SIZES)
@pytest.mark.parametrize("impl", ["cython", "python"])
def test_build(benchmark, impl, size):
    payload = os.urandom(size)
    assert frames.build(2, payload) == py_build(2, payload)
    fn = frames.build if impl == "cython" else py_build
    benchmark.group = f"build BINARY {size} B"
    benchmark(fn, 2, payload)


@pytest.mark.parametrize("size", PAYLOAD_SIZES)
@pytest.mark.parametrize("impl", ["cython", "python", "python-bytewise"])
def test_apply_mask(benchmark, impl, size):
    if impl == "python-bytewise" and size > 1024:
        pytest.skip("the byte loop is only measured on small payloads")
    data = os.urandom(size)
    mask = os.urandom(4)
    expected = py_apply_mask_bytewise(data, mask)
    assert frames.apply_mask(data, mask) == expected
    assert py_apply_mask(data, mask) == expected
    fn = {
        "cython": frames.apply_mask,
        "python": py_apply_mask,
        "python-bytewise": py_apply_mask_bytewise,
    }[impl]
    benchmark.group = f"apply_mask {size} B"
    benchmark(fn, data, mask)


# ------------------------------------------------------- parse + dispatch ---


def _routing_parts():
    """A real RouteEndpoint, a transport-less connection, and a Python twin of both."""
    router = pytest.importorskip("simplew._fast.router")
    connection = pytest.importorskip("simplew._fast.connection")
    from simplew import Controller, route
    from simplew.controller import join_path, routes_of
    from simplew.message import BodyMappingError, WebSocketMessage

    if not all(hasattr(router, n) for n in ("RouteEndpoint", "RouteTarget")):
        pytest.skip("simplew._fast.router has no RouteEndpoint/RouteTarget")

    calls = []

    class MicroController(Controller):
        @route("WEBSOCKET", "/echo")
        def echo(self, message):
            calls.append(1)
            return message.body

    MicroController.__simplew_route__ = "/micro"
    # Controller registers every subclass; this one is only for this file.
    try:
        Controller._registry.remove(MicroController)
    except (AttributeError, ValueError):
        pass

    def reply(session, result):
        session.send_text(result if isinstance(result, str) else json.dumps(result))

    routes = {}
    for path, func in routes_of(MicroController, "WEBSOCKET"):
        url = join_path("/ws", path)
        routes[url] = router.RouteTarget(url, MicroController, func, False, False)
    try:
        endpoint = router.RouteEndpoint(
            "/ws", 1 << 20, routes, WebSocketMessage, BodyMappingError, reply
        )
        conn = connection.WebSocketConnection(endpoint, None)
    except TypeError as exc:
        pytest.skip(f"RouteEndpoint/WebSocketConnection signature changed: {exc}")

    py_routes = {
        url: (MicroController, func)
        for url, func in (
            (join_path("/ws", p), f) for p, f in routes_of(MicroController, "WEBSOCKET")
        )
    }

    class PySession:
        """What the Python dispatcher replies through: builds the frame like send_text."""

        last = b""

        def send_text(self, text):
            PySession.last = py_text_frame(text)

    py_session = PySession()

    def py_on_message(session, data):
        try:
            envelope = json.loads(data)
        except ValueError as exc:
            session.send_text(json.dumps({"error": "bad_json", "url": None, "message": str(exc)}))
            return
        if type(envelope) is not dict:
            session.send_text(json.dumps({"error": "bad_envelope", "url": None, "message": "x"}))
            return
        url = envelope.get("url")
        if type(url) is not str:
            session.send_text(json.dumps({"error": "missing_url", "url": None, "message": "x"}))
            return
        target = py_routes.get(url)
        if target is None:
            session.send_text(json.dumps({"error": "unknown_url", "url": url, "message": "x"}))
            return
        cls, func = target
        message = WebSocketMessage(url, envelope.get("body"), envelope.get("jwt"))
        controller = cls()
        controller.session = session
        controller.request = None
        controller.server = None
        controller.on_before_method()
        result = func(controller, message)
        if result is not None:
            reply(session, result)

    return endpoint, conn, py_on_message, py_session, calls


@pytest.mark.parametrize("impl", ["cython", "python"])
def test_envelope_dispatch(benchmark, impl):
    endpoint, conn, py_on_message, py_session, calls = _routing_parts()
    data = json.dumps({"url": "/ws/micro/echo", "body": "hello-" + "x" * 26})
    endpoint.on_message(conn, True, data)
    py_on_message(py_session, data)
    assert len(calls) == 2, "both dispatchers must reach the controller method"
    assert py_session.last == frames.text_frame("hello-" + "x" * 26)
    benchmark.group = "envelope parse + dispatch"
    if impl == "cython":
        benchmark(endpoint.on_message, conn, True, data)
    else:
        benchmark(py_on_message, py_session, data)


@pytest.mark.parametrize("impl", ["cython", "python"])
def test_envelope_unknown_url(benchmark, impl):
    """The error path: valid JSON, no route; one JSON error message back."""
    endpoint, conn, py_on_message, py_session, calls = _routing_parts()
    data = json.dumps({"url": "/ws/micro/nope", "body": None})
    benchmark.group = "envelope unknown url"
    if impl == "cython":
        benchmark(endpoint.on_message, conn, True, data)
    else:
        benchmark(py_on_message, py_session, data)
    assert not calls


# ------------------------------------------------------------- map_body ---


def _order_types():
    import datetime
    import enum
    import uuid
    from dataclasses import dataclass, field

    class Status(enum.Enum):
        OPEN = "open"
        PAID = "paid"

    @dataclass
    class Order:  # the 6-field dataclass of the map_body figures
        id: uuid.UUID
        customer: str
        amount: float
        status: Status
        created: datetime.datetime
        tags: list[str] = field(default_factory=list)

    @dataclass
    class Plain:  # 6 fields of JSON-native types
        id: int
        customer: str
        amount: float
        paid: bool
        tags: list[str] = field(default_factory=list)
        note: str | None = None

    return {
        "uuid-datetime-enum": (
            Order,
            {
                "id": "6f1c2b9e-3d4a-4e5b-8c7d-1a2b3c4d5e6f",
                "customer": "Ann",
                "amount": 12,
                "status": "paid",
                "created": "2024-05-06T07:08:09Z",
                "tags": ["a", "b"],
            },
        ),
        "json-native": (
            Plain,
            {
                "id": 7,
                "customer": "Ann",
                "amount": 12.5,
                "paid": True,
                "tags": ["a", "b"],
                "note": "x",
            },
        ),
    }


@pytest.mark.parametrize("impl", ["compiled", "general"])
@pytest.mark.parametrize("shape", ["uuid-datetime-enum", "json-native"])
def test_map_body(benchmark, impl, shape):
    """WebSocketMessage.map_body (compiled converter) vs the general walk it falls back to."""
    from simplew.message import WebSocketMessage, _convert

    cls, body = _order_types()[shape]
    message = WebSocketMessage("/ws/orders/add", body)
    assert message.map_body(cls) == _convert(body, cls, "body")
    benchmark.group = f"map_body, 6-field dataclass ({shape})"
    if impl == "compiled":
        benchmark(message.map_body, cls)
    else:
        benchmark(_convert, body, cls, "body")
