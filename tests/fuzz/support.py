"""Shared machinery of the atheris harnesses in this folder.

* :func:`instrumented_simplew` imports simplew under atheris's bytecode
  instrumentation (Python modules only: the Cython extensions in
  ``simplew._fast`` are compiled C and give the fuzzer no coverage feedback).
* :class:`Loop` is an asyncio loop with a virtual clock, so a harness can
  let 60 s of timeouts pass in microseconds.
* :class:`FakeTransport` is the socket as the protocols see it: it records
  what is written, models a write buffer (the client may stop reading) and
  reports the close as asyncio does (``connection_lost`` on the next turn).
* :class:`Client` drives one accepted connection of a real
  :class:`~simplew.SimpleWServer` (``server._protocol()``) through it.
* :class:`LogGuard` turns every ERROR record of ``simplew.*``, every log
  message that fails to format, and every exception the loop catches in a
  callback into a finding.
* :func:`note` counts what a run reached and reports it to the fuzzer as
  coverage (see "outcome feedback").

What the server writes is parsed by wire.py; the server itself is targets.py.

Every harness exposes ``test_one_input(data: bytes)`` (usable by
``atheris.Setup``), ``seeds()`` (the committed seed corpus: name -> bytes) and
``stats`` (a Counter of what the run reached, printed by ``run.py``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import re
import selectors
import socket
import sys
import time
import zlib
from typing import Any

import atheris

stats: collections.Counter = collections.Counter()  # outcomes reached (run.py prints them)


def instrumented_simplew() -> None:
    """Import simplew's Python modules with atheris coverage instrumentation.

    Must run before anything else imports simplew.
    """
    if "simplew" in sys.modules:
        return
    with atheris.instrument_imports(include=["simplew"]):
        import simplew  # noqa: F401
        import simplew.auth  # noqa: F401
        import simplew.message  # noqa: F401
        import simplew.metrics  # noqa: F401
        import simplew.rest  # noqa: F401
        import simplew.server  # noqa: F401
        import simplew.static  # noqa: F401


# -- outcome feedback -------------------------------------------------------------
#
# atheris sees coverage of Python code only; most of the paths worth reaching
# are in the Cython extensions. What the server did (a status, a close code,
# a log message template of the extensions) is turned into coverage here: each
# outcome is hashed to one of 256 leaves of an instrumented decision tree, so
# an input that makes the server do something new (or something more often)
# is kept in the corpus like one that reaches new Python lines.


def _tree(depth: int, prefix: int, indent: str) -> list[str]:
    if depth == 8:
        return [f"{indent}return {prefix}"]
    bit = 1 << (7 - depth)
    return (
        [f"{indent}if h & {bit}:"]
        + _tree(depth + 1, prefix | bit, indent + "    ")
        + [f"{indent}else:"]
        + _tree(depth + 1, prefix, indent + "    ")
    )


def _make_feedback():
    namespace: dict = {}
    source = "\n".join(["def outcome_leaf(h):"] + _tree(0, 0, "    "))
    exec(compile(source, "<outcome feedback>", "exec"), namespace)
    return atheris.instrument_func(namespace["outcome_leaf"])


_outcome_leaf = _make_feedback()


def _not_json(name: str) -> Any:
    raise AssertionError(f"{name} in an answer: not JSON")


def strict_json(data: bytes | str) -> Any:
    """``data`` parsed as JSON allows it and no more: NaN and Infinity (which Python's
    json reads and writes) and numbers past a float's range fail (AssertionError)."""

    def finite(text: str) -> float:
        value = float(text)
        assert math.isfinite(value), f"{text} in an answer: out of range"
        return value

    return json.loads(data, parse_constant=_not_json, parse_float=finite)


def note(outcome: str) -> None:
    """Count ``outcome`` in ``stats`` and report it to the fuzzer as coverage."""
    stats[outcome] += 1
    _outcome_leaf(zlib.crc32(outcome.encode("utf-8", "replace")) & 255)


# -- findings from logs and loop callbacks ------------------------------------


class LogGuard(logging.Handler):
    """Collects what counts as a finding: ERROR records on ``simplew.*``,
    records whose message does not format, exceptions caught by the loop."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.problems: list[str] = []
        self.allowed: list[re.Pattern[str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception as exc:  # a bad format string or arguments
            self.problems.append(f"log record does not format: {record.msg!r} {exc!r}")
            return
        ints = (
            [a for a in record.args if isinstance(a, int)] if isinstance(record.args, tuple) else []
        )
        _outcome_leaf(zlib.crc32(f"{record.msg} {ints}".encode("utf-8", "replace")) & 255)
        if record.levelno >= logging.ERROR and not any(p.search(text) for p in self.allowed):
            detail = ""
            if record.exc_info and record.exc_info[1] is not None:
                import traceback

                detail = "\n" + "".join(traceback.format_exception(*record.exc_info))
            self.problems.append(f"{record.name} {record.levelname}: {text}{detail}")

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        import traceback

        detail = "".join(traceback.format_exception(exc)) if exc is not None else ""
        self.problems.append(f"loop caught: {context.get('message')}\n{detail}")

    def check(self) -> None:
        """Raise (a finding) if anything was collected since the last check."""
        if self.problems:
            problems, self.problems = self.problems, []
            raise AssertionError("\n".join(problems))


GUARD = LogGuard()


def install_guard() -> LogGuard:
    root = logging.getLogger("simplew")
    if GUARD not in root.handlers:
        root.addHandler(GUARD)
        root.propagate = False
        root.setLevel(logging.DEBUG)  # every message is formatted: a bad one is a finding
    return GUARD


# -- the event loop -------------------------------------------------------------


class Loop(asyncio.SelectorEventLoop):
    """A selector loop whose clock moves only when :meth:`advance` says so."""

    def __init__(self) -> None:
        super().__init__(selectors.SelectSelector())
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def busy(self) -> bool:
        """Callbacks are ready to run this turn."""
        return bool(self._ready)


_LOOP: Loop | None = None


def loop() -> Loop:
    global _LOOP
    if _LOOP is None:
        _LOOP = Loop()
        asyncio.set_event_loop(_LOOP)
        _LOOP.set_exception_handler(GUARD.loop_exception)
    return _LOOP


async def settle(turns: int = 200) -> None:
    """Run the loop until nothing is ready (at most ``turns`` turns)."""
    lp = asyncio.get_running_loop()
    for _ in range(turns):
        await asyncio.sleep(0)
        if not lp.busy():  # type: ignore[attr-defined]
            await asyncio.sleep(0)
            if not lp.busy():  # type: ignore[attr-defined]
                return


# -- the transport ----------------------------------------------------------------

_SOCKET = None


def _socket() -> socket.socket:
    """A real (never connected) TCP socket: picows sets options on it."""
    global _SOCKET
    if _SOCKET is None:
        _SOCKET = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    return _SOCKET


class FakeTransport(asyncio.Transport):
    """An in-process stand-in for an accepted TCP socket.

    ``out`` holds every byte written. ``buffered`` models the kernel/loop
    write buffer: it grows with writes until the client reads
    (:meth:`client_reads`); crossing the high-water mark calls the
    protocol's ``pause_writing`` as asyncio does.
    """

    def __init__(self, lp: Loop, high_water: int = 1 << 16) -> None:
        super().__init__()
        self._loop = lp
        self.protocol = None
        self.out = bytearray()
        self.buffered = 0
        self.high = high_water
        self.low = high_water // 4
        self.write_paused = False
        self.reading_paused = False
        self.closing = False
        self.lost = False
        self.eof_written = False
        self.aborted = False
        self.inbox: collections.deque = collections.deque()
        self.paused_writes = 0  # writes since the last pause_writing
        self.most_paused_writes = 0  # the most of them in one pause

    # asyncio.Transport
    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol

    def get_extra_info(self, name, default=None):
        if name == "socket":
            return _socket()
        if name == "peername":
            return ("127.0.0.1", 40000)
        if name == "sockname":
            return ("127.0.0.1", 2015)
        return default

    def write(self, data) -> None:
        if self.lost:
            raise AssertionError("write after connection_lost")
        if self.eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")  # as asyncio does
        if self.closing:
            return
        if self.write_paused:  # the protocol was told to stop writing
            self.paused_writes += 1
            self.most_paused_writes = max(self.most_paused_writes, self.paused_writes)
        self.out += data
        self.buffered += len(data)
        self._check_high()

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self._loop.call_soon(self._lose)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        self.reading_paused = True

    def is_reading(self) -> bool:
        return not self.reading_paused

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self.high = 1 << 16 if high is None else high
        self.low = self.high // 4 if low is None else low
        self._check_high()

    def get_write_buffer_limits(self):
        return self.low, self.high

    # the model
    def _check_high(self) -> None:
        if not self.write_paused and self.high > 0 and self.buffered > self.high:
            self.write_paused = True
            self.protocol.pause_writing()

    def client_reads(self) -> None:
        """The client drained everything written so far."""
        self.buffered = 0
        if self.write_paused and not self.lost:
            self.write_paused = False
            self.paused_writes = 0
            self.protocol.resume_writing()

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost(None)

    def deliver(self, data: bytes) -> None:
        """Bytes reach the protocol now (plain or buffered protocol)."""
        get_buffer = getattr(self.protocol, "get_buffer", None)
        if get_buffer is None:
            self.protocol.data_received(data)
            return
        pos = 0
        while pos < len(data) and not self.lost and not self.closing:
            buf = get_buffer(len(data) - pos)
            n = min(len(buf), len(data) - pos)
            if n <= 0:
                raise AssertionError("a buffered protocol offered an empty buffer")
            buf[:n] = data[pos : pos + n]
            self.protocol.buffer_updated(n)
            pos += n

    # the client's side of the stream: what it sent waits while the server
    # does not read (pause_reading), as it would in the socket buffers
    def client_send(self, data: bytes) -> None:
        if data:
            self.inbox.append(data)
            self._pump()

    def client_eof(self) -> None:
        """The client shuts its sending side (after what it sent before)."""
        self.inbox.append(EOF)
        self._pump()

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self.inbox:
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        while self.inbox and not self.reading_paused and not self.closing and not self.lost:
            item = self.inbox.popleft()
            if item is EOF:
                if not self.protocol.eof_received():
                    self.close()
            else:
                self.deliver(item)


EOF = object()


class Client:
    """One accepted connection of ``server``, driven from a harness.

    ``reads``: the client reads what the server writes as soon as it is
    written; without it, the client reads only in :meth:`finish`.
    """

    def __init__(self, server, high_water: int = 1 << 16, reads: bool = True) -> None:
        self.server = server
        self.reads = reads
        self.transport = FakeTransport(loop(), high_water)
        protocol = server._protocol()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)

    async def send(self, data: bytes) -> None:
        t = self.transport
        t.client_send(data)
        await settle()
        if self.reads:
            t.client_reads()
            await settle()

    async def finish(self) -> None:
        """Client EOF, then it reads everything and lets time pass until the
        server lets go: a connection the server keeps although nothing moves
        is a finding (a hang)."""
        t = self.transport
        t.client_eof()
        lp = loop()
        idle_rounds = 0
        for _ in range(1000):
            before = (len(t.out), len(t.inbox))
            t.client_reads()
            await settle()
            if t.lost:
                return
            if (len(t.out), len(t.inbox)) == before:
                idle_rounds += 1
                if idle_rounds > 6:
                    break
                lp.advance(61.0)
                await settle()
            else:
                idle_rounds = 0
        raise AssertionError(
            "the server never released the connection "
            f"(closing={t.closing}, eof_written={t.eof_written}, "
            f"unread input={len(t.inbox)}, reading paused={t.reading_paused})"
        )


def run(coro) -> None:
    lp = loop()
    lp.run_until_complete(coro)
    GUARD.check()


_stats_written = [0.0]


def dump_stats(force: bool = False) -> None:
    """Write ``stats`` (plus the number of inputs run) as JSON to the file named by
    $SIMPLEW_FUZZ_STATS, at most twice a second: libFuzzer exits without
    running Python's atexit handlers."""
    path = os.environ.get("SIMPLEW_FUZZ_STATS")
    if not path:
        return
    now = time.monotonic()
    if not force and now - _stats_written[0] < 0.5:
        return
    _stats_written[0] = now
    with open(path + ".tmp", "w") as f:
        json.dump(dict(stats), f)
    os.replace(path + ".tmp", path)


def main(test_one_input, custom_mutator=None) -> None:
    """``python harness.py [libFuzzer flags] [corpus dirs or files]``."""

    def one(data: bytes) -> None:
        stats["inputs"] += 1
        try:
            test_one_input(data)
        finally:
            dump_stats()

    if custom_mutator is None:
        atheris.Setup(sys.argv, one)
    else:
        atheris.Setup(sys.argv, one, custom_mutator=custom_mutator)
    atheris.Fuzz()
