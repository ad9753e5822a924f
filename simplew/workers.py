"""The worker processes of ``simplew serve --workers N``: start, supervise, stop.

The parent only supervises; its N workers accept on one port with SO_REUSEPORT,
so while one is down the others go on serving. What callers may rely on:

* A worker that dies (a crash, ``kill -9``) is reaped at once and replaced by a
  new process with the same index. One that lived at least ``MIN_UPTIME``
  seconds is replaced at once; one that died sooner waits first, 0.5 s doubling
  to 10 s for each quick death in a row, back to 0.5 s once a worker of that
  index has lived ``MIN_UPTIME``. Each restart is logged as a WARNING with the
  pid and the exit status or signal.
* SIGTERM or SIGINT to the parent is passed to every worker as SIGTERM; from
  then on nothing is restarted. A worker still running ``kill_after`` seconds
  later gets SIGKILL. :func:`supervise` returns when every worker has exited:
  0 if each one's last exit had status 0, else 1.
* Every child is reaped: no zombie is left behind.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from typing import Any

log = logging.getLogger("simplew")

MIN_UPTIME = 1.0  # seconds a worker must live for its death not to count as "at start"
FIRST_DELAY = 0.5  # seconds before restarting a worker that died at start
MAX_DELAY = 10.0


def describe_exit(exitcode: int) -> str:
    """``exit status 3`` or ``signal SIGKILL`` for a ``Process.exitcode``."""
    if exitcode >= 0:
        return f"exit status {exitcode}"
    try:
        return f"signal {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"signal {-exitcode}"


class _Slot:
    """One worker index: its current process and its restart backoff."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None
        self.started = 0.0
        self.delay = FIRST_DELAY  # the wait after the next death at start
        self.restart_at = 0.0  # when the process is None: when to start one
        self.last_exit: int | None = None

    def start(self, ctx: Any, target: Callable[..., None], argv: Sequence[str]) -> None:
        self.process = ctx.Process(
            target=target, args=(list(argv), self.index), name=f"simplew-worker-{self.index}"
        )
        self.process.start()
        self.started = time.monotonic()

    def reap(self, stopping: bool) -> None:
        """The process has exited (its sentinel is ready): collect it, plan a restart."""
        process, self.process = self.process, None
        process.join()  # waitpid: no zombie
        pid, self.last_exit = process.pid, process.exitcode
        process.close()
        if stopping:
            return
        now = time.monotonic()
        if now - self.started >= MIN_UPTIME:
            self.delay = FIRST_DELAY
            wait_for = 0.0
        else:
            wait_for = self.delay
            self.delay = min(self.delay * 2, MAX_DELAY)
        self.restart_at = now + wait_for
        log.warning(
            "worker%d (pid %d) died with %s after %.1f s; restarting it %s",
            self.index,
            pid,
            describe_exit(self.last_exit),
            now - self.started,
            "now" if wait_for == 0 else f"in {wait_for:.1f} s",
        )


def supervise(
    target: Callable[..., None], argv: Sequence[str], count: int, kill_after: float = 30.0
) -> int:
    """Run ``count`` processes of ``target(argv, index)`` until SIGTERM/SIGINT; see the module."""
    ctx = multiprocessing.get_context("spawn")
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signalled = False

    def on_signal(_signum: int, _frame: Any) -> None:
        nonlocal signalled
        signalled = True
        try:
            os.write(wake_write, b"\0")  # wakes the wait below
        except BlockingIOError:
            pass

    # before any worker starts: a SIGTERM then must not kill the parent alone
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    slots = [_Slot(i) for i in range(count)]
    kill_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            if not signalled:
                for slot in slots:
                    if slot.process is None and slot.restart_at <= now:
                        slot.start(ctx, target, argv)
                        if slot.last_exit is not None and slot.process is not None:
                            log.info("worker%d restarted as pid %d", slot.index, slot.process.pid)
            running = [slot for slot in slots if slot.process is not None]
            if signalled and not running:
                break
            if signalled:
                timeout = None if kill_at is None else max(0.0, kill_at - now)
            else:
                timeout = min(
                    (slot.restart_at - now for slot in slots if slot.process is None), default=None
                )
            ready = wait([wake_read] + [slot.process.sentinel for slot in running], timeout)
            if wake_read in ready:
                os.read(wake_read, 512)
                for slot in running:  # each signal is passed on, the first starts the stop
                    if slot.process.exitcode is None:
                        os.kill(slot.process.pid, signal.SIGTERM)
                if kill_at is None:  # the first signal, or one after a SIGKILL
                    kill_at = time.monotonic() + kill_after
            for slot in running:
                if slot.process.sentinel in ready:
                    slot.reap(signalled)
            if kill_at is not None and time.monotonic() >= kill_at:
                for slot in slots:
                    if slot.process is not None and slot.process.exitcode is None:
                        log.warning(
                            "worker%d (pid %d) still runs %.0f s after SIGTERM: SIGKILL",
                            slot.index,
                            slot.process.pid,
                            kill_after,
                        )
                        slot.process.kill()
                kill_at = None
    finally:
        for slot in slots:  # only after an error in this loop: no orphans
            if slot.process is not None and slot.process.exitcode is None:
                slot.process.kill()
                slot.process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_read)
        os.close(wake_write)
    return 0 if all(slot.last_exit == 0 for slot in slots) else 1
