"""The worker processes of ``simplew serve --workers N``: start, supervise, stop.

The parent only supervises; its N workers accept on one port with SO_REUSEPORT,
so while one is down the others go on serving. What callers may rely on:

* A worker that dies (a crash, ``kill -9``) is reaped at once and replaced by a
  new process with the same index. One that had booted (it set its ``listening``
  event, and lived at least ``MIN_UPTIME`` seconds) is replaced at once; one
  that had not waits first, 0.5 s doubling to 10 s for each failed boot in a
  row, back to 0.5 s once a worker of that index has booted. Each restart is
  logged as a WARNING with the pid and the exit status or signal.
* ``MAX_FAILED_BOOTS`` failed boots in a row of one index end it all, as
  gunicorn does: an ERROR says so, the other workers are stopped as on SIGTERM
  and :func:`supervise` returns ``BOOT_FAILED`` (3). The worker's own error went
  to the stderr it shares with the parent.
* SIGTERM or SIGINT to the parent is passed to every worker as SIGTERM; from
  then on nothing is restarted. A worker still running ``kill_after`` seconds
  later gets SIGKILL. :func:`supervise` returns when every worker has exited:
  0 if each one's last exit had status 0, else 1 (or ``BOOT_FAILED``).
* Every child is reaped: no zombie is left behind, and no worker outlives the
  parent: one whose parent died (even by SIGKILL) gets SIGTERM and stops.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from typing import Any

log = logging.getLogger("simplew")

MIN_UPTIME = 1.0  # seconds a worker must live, listening included, to have booted
FIRST_DELAY = 0.5  # seconds before restarting a worker that failed to boot
MAX_DELAY = 10.0
MAX_FAILED_BOOTS = 5  # failed boots in a row of one worker that end the server
BOOT_FAILED = 3  # supervise's status then (gunicorn's for a worker that fails to boot)


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
        self.listening: Any = None  # the process's event: set once it listens
        self.delay = FIRST_DELAY  # the wait after the next failed boot
        self.failed_boots = 0  # in a row
        self.restart_at = 0.0  # when the process is None: when to start one
        self.last_exit: int | None = None

    def start(self, ctx: Any, target: Callable[..., None], argv: Sequence[str]) -> None:
        self.listening = ctx.Event()
        self.process = ctx.Process(
            target=_child,
            args=(target, os.getpid(), list(argv), self.index, self.listening),
            name=f"simplew-worker-{self.index}",
        )
        self.process.start()
        self.started = time.monotonic()

    def reap(self, stopping: bool) -> bool:
        """The process has exited (its sentinel is ready): collect it, plan a restart.

        True if it was the ``MAX_FAILED_BOOTS``-th failed boot in a row: no restart.
        """
        process, self.process = self.process, None
        process.join()  # waitpid: no zombie
        pid, self.last_exit = process.pid, process.exitcode
        process.close()
        if stopping:
            return False
        now = time.monotonic()
        if self.listening.is_set() and now - self.started >= MIN_UPTIME:
            self.delay = FIRST_DELAY
            self.failed_boots = 0
            wait_for = 0.0
        else:
            self.failed_boots += 1
            if self.failed_boots >= MAX_FAILED_BOOTS:
                log.error(
                    "worker%d (pid %d) died with %s after %.1f s: it failed to boot %d times "
                    "in a row (its error is above); stopping the server",
                    self.index,
                    pid,
                    describe_exit(self.last_exit),
                    now - self.started,
                    self.failed_boots,
                )
                return True
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
        return False


def _child(
    target: Callable[..., None], parent: int, argv: list[str], index: int, listening: Any
) -> None:
    """A worker process: tied to its parent's life, then ``target``."""
    _exit_with_parent(parent)
    target(argv, index, listening)


PR_SET_PDEATHSIG = 1  # prctl(2)


def _exit_with_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` dies: at once on Linux (prctl), else
    within a second (a thread that watches the parent pid)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
                if os.getppid() != parent:  # it died before the request took effect
                    os.kill(os.getpid(), signal.SIGTERM)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="simplew-parent-watch", daemon=True).start()


def supervise(
    target: Callable[..., None], argv: Sequence[str], count: int, kill_after: float = 30.0
) -> int:
    """Run ``count`` processes of ``target(argv, index, listening)`` until SIGTERM/SIGINT, or
    until one fails to boot ``MAX_FAILED_BOOTS`` times in a row; see the module.

    ``listening`` is a ``multiprocessing.Event`` the target sets once it serves.
    """
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
    gave_up = False  # a worker failed to boot MAX_FAILED_BOOTS times: stop as on SIGTERM
    try:
        while True:
            now = time.monotonic()
            if gave_up and not signalled:
                on_signal(signal.SIGTERM, None)
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
                if slot.process.sentinel in ready and slot.reap(signalled):
                    gave_up = True
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
    if gave_up:
        return BOOT_FAILED
    return 0 if all(slot.last_exit == 0 for slot in slots) else 1
