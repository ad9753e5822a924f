#!/usr/bin/env python3
"""WebSocket/HTTP load generator for the simplew benchmark.

Holds thousands of WebSocket client connections spread over several worker
processes (raw non-blocking sockets + ``select.epoll``, its own handshake and a
minimal frame parser), and measures a server running in another process:

* ``fanout``: N clients connected; a control client (one of the N, on ``/ctl``)
  sends ``BCAST <count> <size> <round> <t_ns>`` and the server sends ``count``
  messages of ``size`` bytes to every client in one callback. Per round:
  server CPU per delivered message, delivery latency (receive time minus the
  trigger time carried in the payload), and a check that every client got every
  message, in order. The median over the rounds is reported.
* ``rr``: request/response; ``{"url": "/ws/test/echo", "body": ...}`` over C
  connections with W messages in flight on each; messages/s and server CPU
  per message.
* ``static``: ``wrk`` against a small and a 100 KiB file; requests/s and server
  CPU per request.

Server CPU is read from ``/proc/PID/task/*/schedstat`` (nanoseconds, every
thread of the server) before and after each measurement; ``/proc/PID/stat``
(utime+stime, 10 ms ticks) is read too, over whole cases, as a cross-check.

    python bench/loadgen.py --peer simplew --n 1000 --rounds 10
    python bench/loadgen.py --port 8765 --pid 12345 --scenarios fanout
"""

from __future__ import annotations

import argparse
import atexit
import base64
import errno
import glob
import json
import multiprocessing
import os
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
SERVERS_DIR = BENCH_DIR / "servers"
PEERS = ["simplew", "picows", "websockets", "aiohttp", "socketify"]
ECHO_URL = "/ws/test/echo"
HEADER_SIZE = 32  # B + round(8) + index(4) + t_ns(19)
CLK_TCK = os.sysconf("SC_CLK_TCK")

# fan-out cases: (label, size, count)
FANOUT_CASES = [
    ("64 B x1", 64, 1),
    ("1 KiB x1", 1024, 1),
    ("64 B x10 burst", 64, 10),
    ("1 KiB x10 burst", 1024, 10),
]

EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
EPOLLERR_HUP = select.EPOLLERR | select.EPOLLHUP


# ---------------------------------------------------------------- progress ---

_TTY = sys.stderr.isatty()


def progress(msg: str, final: bool = False) -> None:
    """One status line on stderr (overwritten in place on a terminal)."""
    if _TTY:
        sys.stderr.write("\r\x1b[K" + msg + ("\n" if final else ""))
    elif final:
        sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# -------------------------------------------------------------- server CPU ---


def cpu_ns(pid: int) -> int:
    """CPU time (user+system) of every thread of ``pid``, in ns, from schedstat."""
    total = 0
    found = False
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
                found = True
        except (OSError, ValueError, IndexError):
            pass  # a thread ended meanwhile
    if not found:
        return stat_cpu_ns(pid)
    return total


def stat_cpu_ns(pid: int) -> int:
    """utime+stime of ``pid`` from /proc/PID/stat (clock-tick resolution), in ns."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // CLK_TCK


def pin_server(pid: int, cpus: set[int]) -> None:
    """Bind every thread of ``pid`` to ``cpus`` (threads made later inherit it)."""
    for path in glob.glob(f"/proc/{pid}/task/*"):
        try:
            os.sched_setaffinity(int(os.path.basename(path)), cpus)
        except (OSError, ValueError):
            pass


ALL_CPUS = set(os.sched_getaffinity(0))  # before any pinning of ours


def unpin(server_pid: int | None) -> None:
    """Let the server and this process (and later workers) run on every CPU again."""
    if server_pid:
        pin_server(server_pid, ALL_CPUS)
    os.sched_setaffinity(0, ALL_CPUS)


def cpu_layout() -> tuple[set[int], set[int]] | None:
    """(server CPUs, load generator CPUs): the first CPU for the server, the rest for us."""
    cpus = sorted(ALL_CPUS)
    if len(cpus) < 2:
        return None
    return {cpus[0]}, set(cpus[1:])


def apply_pinning(server_pid: int | None) -> str:
    """Pin the server to one CPU and this process (and the workers it forks) to the others."""
    layout = cpu_layout()
    if layout is None:
        return "not pinned (one CPU)"
    server_cpus, load_cpus = layout
    if server_pid:
        pin_server(server_pid, server_cpus)
    os.sched_setaffinity(0, load_cpus)
    return f"server on CPU {sorted(server_cpus)}, load generator on CPU {sorted(load_cpus)}"


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---------------------------------------------------------- client framing ---


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked FIN frame (client to server)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    if n:
        m = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        payload = (int.from_bytes(payload, "big") ^ m).to_bytes(n, "big")
    return header + mask + payload


def envelope_frame(body: str) -> bytes:
    return client_frame(1, json.dumps({"url": ECHO_URL, "body": body}).encode())


# ------------------------------------------------------------------ worker ---

IDLE, FANOUT, RR = 0, 1, 2


class Worker:
    """One client process: its sockets, an epoll, and commands from the coordinator."""

    def __init__(self, pipe, wid: int) -> None:
        self.pipe = pipe
        self.wid = wid
        self.ep = select.epoll()
        self.socks: dict[int, socket.socket] = {}
        self.order: list[int] = []  # fds in connect order
        self.buf: dict[int, bytes] = {}
        self.out: dict[int, bytes] = {}
        self.got: dict[int, int] = {}
        self.mode = IDLE
        self.closed_by_server = 0
        self.stray = 0
        self.exit = False
        # fan-out round state
        self.round = -1
        self.count = 0
        self.remaining = 0
        self.bad = 0
        self.stale = 0
        self.lats: list[int] = []
        self.deadline = 0.0
        # request/response state
        self.rr_frame = b""
        self.rr_reply = b""
        self.rr_sending = False
        self.rr_outstanding = 0
        self.rr_replies = 0
        self.rr_bad = 0
        self.rr_first = 0
        self.rr_last = 0
        self.rr_drain_deadline = 0.0

    # -- plumbing ---------------------------------------------------------

    def reply(self, msg: Any) -> None:
        self.pipe.send(msg)

    def send(self, fd: int, data: bytes) -> None:
        pending = self.out.get(fd)
        if pending:
            self.out[fd] = pending + data
            return
        s = self.socks.get(fd)
        if s is None:
            return
        try:
            sent = s.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.dead(fd)
            return
        if sent < len(data):
            self.out[fd] = data[sent:]
            self.ep.modify(fd, EPOLLIN | EPOLLOUT)

    def flush(self, fd: int) -> None:
        pending = self.out.pop(fd, b"")
        s = self.socks.get(fd)
        if s is None:
            return
        if pending:
            try:
                sent = s.send(pending)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.dead(fd)
                return
            if sent < len(pending):
                self.out[fd] = pending[sent:]
                return
        self.ep.modify(fd, EPOLLIN)

    def dead(self, fd: int) -> None:
        s = self.socks.pop(fd, None)
        if s is None:
            return
        self.closed_by_server += 1
        try:
            self.ep.unregister(fd)
        except OSError:
            pass
        s.close()
        self.out.pop(fd, None)
        if self.mode == FANOUT and self.got.get(fd, 0) < self.count:
            self.remaining -= 1

    # -- connecting ---------------------------------------------------------

    def connect(self, host: str, port: int, paths: list[str], timeout: float) -> dict:
        key = base64.b64encode(os.urandom(16)).decode()
        requests = {
            p: (
                f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            for p in set(paths)
        }
        todo = list(range(len(paths) - 1, -1, -1))  # pop() from the end: index 0 first
        attempts = [0] * len(paths)
        done: list[int | None] = [None] * len(paths)
        flight: dict[int, list] = {}
        errors: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        max_flight = 128

        def fail(i: int, why: str, retry: bool = True) -> None:
            attempts[i] += 1
            if retry and attempts[i] < 6:
                todo.insert(0, i)
            else:
                errors[why] = errors.get(why, 0) + 1

        while (todo or flight) and time.monotonic() < deadline:
            while todo and len(flight) < max_flight:
                i = todo.pop()
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                err = s.connect_ex((host, port))
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    fail(i, errno.errorcode.get(err, str(err)))
                    continue
                fd = s.fileno()
                flight[fd] = [i, s, 0, b""]
                self.ep.register(fd, EPOLLOUT)
            for fd, ev in self.ep.poll(0.05):
                entry = flight.get(fd)
                if entry is None:
                    continue
                i, s, state, data = entry
                if state == 0:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err or ev & EPOLLERR_HUP:
                        del flight[fd]
                        self.ep.unregister(fd)
                        s.close()
                        fail(i, errno.errorcode.get(err, "hup"))
                        continue
                    s.send(requests[paths[i]])
                    entry[2] = 1
                    self.ep.modify(fd, EPOLLIN)
                    continue
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    del flight[fd]
                    self.ep.unregister(fd)
                    s.close()
                    fail(i, "closed during handshake")
                    continue
                data += chunk
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    entry[3] = data
                    continue
                del flight[fd]
                if not data.startswith(b"HTTP/1.1 101"):
                    self.ep.unregister(fd)
                    s.close()
                    fail(i, data.split(b"\r\n", 1)[0].decode("latin-1"), retry=False)
                    continue
                done[i] = fd
                self.socks[fd] = s
                self.buf[fd] = data[end + 4 :]
                self.got[fd] = 0
        for fd, entry in flight.items():
            self.ep.unregister(fd)
            entry[1].close()
            errors["timeout"] = errors.get("timeout", 0) + 1
        self.order = [fd for fd in done if fd is not None]
        return {"connected": len(self.order), "errors": errors, "first_ok": done[0] is not None}

    # -- reading ------------------------------------------------------------

    def on_readable(self, fd: int) -> None:
        s = self.socks.get(fd)
        if s is None:
            return
        try:
            data = s.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.dead(fd)
            return
        now = time.time_ns()
        left = self.buf[fd]
        if left:
            data = left + data
        n = len(data)
        pos = 0
        mode = self.mode
        replies = 0
        while n - pos >= 2:
            ln = data[pos + 1] & 127
            if ln < 126:
                p = pos + 2
            elif ln == 126:
                if n - pos < 4:
                    break
                ln = (data[pos + 2] << 8) | data[pos + 3]
                p = pos + 4
            else:
                if n - pos < 10:
                    break
                ln = int.from_bytes(data[pos + 2 : pos + 10], "big")
                p = pos + 10
            end = p + ln
            if end > n:
                break
            op = data[pos] & 15
            if op <= 2:
                if mode == FANOUT and ln >= HEADER_SIZE and data[p] == 66:  # b"B"
                    if int(data[p + 1 : p + 9]) != self.round:
                        self.stale += 1
                    else:
                        g = self.got[fd]
                        if int(data[p + 9 : p + 13]) != g:
                            self.bad += 1
                        g += 1
                        self.got[fd] = g
                        self.lats.append(now - int(data[p + 13 : p + 32]))
                        if g == self.count:
                            self.remaining -= 1
                elif mode == RR:
                    if data[p:end] != self.rr_reply:
                        self.rr_bad += 1
                    replies += 1
                else:
                    self.stray += 1
            elif op == 9:  # ping → pong
                self.send(fd, client_frame(10, data[p:end]))
            elif op == 8:  # close: answer and drop
                self.send(fd, client_frame(8, data[p : p + 2]))
                self.dead(fd)
                return
            pos = end
        self.buf[fd] = data[pos:] if pos < n else b""
        if replies:
            self.rr_replies += replies
            self.rr_outstanding -= replies
            self.rr_last = now
            if self.rr_sending:
                self.send(fd, self.rr_frame * replies)
                self.rr_outstanding += replies

    # -- commands -------------------------------------------------------------

    def on_command(self, cmd: tuple) -> None:
        kind = cmd[0]
        if kind == "connect":
            _, host, port, paths, timeout = cmd
            self.reply(("connected", self.connect(host, port, paths, timeout)))
        elif kind == "round":
            _, rnd, count, size, trigger, timeout = cmd
            self.round, self.count = rnd, count
            self.bad = self.stale = 0
            self.lats = []
            for fd in self.socks:
                self.got[fd] = 0
            self.remaining = len(self.socks)
            self.mode = FANOUT
            self.deadline = time.monotonic() + timeout
            if trigger:
                t_ns = time.time_ns()
                self.send(
                    self.order[0], client_frame(1, f"BCAST {count} {size} {rnd} {t_ns}".encode())
                )
            else:
                self.reply(("armed",))
        elif kind == "rr":
            _, window, seconds, body = cmd
            self.rr_frame = envelope_frame(body)
            self.rr_reply = body.encode()
            self.rr_replies = self.rr_bad = 0
            self.rr_outstanding = 0
            self.rr_sending = True
            self.mode = RR
            self.rr_first = time.time_ns()
            self.rr_last = self.rr_first
            self.deadline = time.monotonic() + seconds
            self.rr_drain_deadline = self.deadline + 10.0
            burst = self.rr_frame * window
            for fd in list(self.socks):
                self.send(fd, burst)
                self.rr_outstanding += window
        elif kind == "stats":
            self.reply(
                (
                    "stats",
                    {
                        "open": len(self.socks),
                        "closed_by_server": self.closed_by_server,
                        "stray": self.stray,
                    },
                )
            )
        elif kind == "close":
            for _fd, s in list(self.socks.items()):
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                except OSError:
                    pass
                s.close()
            self.socks.clear()
            self.reply(("closed",))
            self.exit = True

    def check_done(self) -> None:
        if self.mode == FANOUT:
            if self.remaining <= 0 or time.monotonic() >= self.deadline:
                got = sum(self.got[fd] for fd in self.socks)
                missing = sum(1 for fd in self.socks if self.got[fd] < self.count)
                self.mode = IDLE
                self.reply(
                    (
                        "done",
                        {
                            "received": got,
                            "clients": len(self.socks),
                            "incomplete_clients": missing,
                            "bad_order": self.bad,
                            "stale": self.stale,
                            "timed_out": self.remaining > 0,
                            "lats": array("q", self.lats).tobytes(),
                        },
                    )
                )
                self.lats = []
        elif self.mode == RR:
            now = time.monotonic()
            if self.rr_sending and now >= self.deadline:
                self.rr_sending = False
            if not self.rr_sending and (self.rr_outstanding <= 0 or now >= self.rr_drain_deadline):
                self.mode = IDLE
                self.reply(
                    (
                        "rr_done",
                        {
                            "replies": self.rr_replies,
                            "bad": self.rr_bad,
                            "lost": self.rr_outstanding,
                            "first_ns": self.rr_first,
                            "last_ns": self.rr_last,
                        },
                    )
                )

    def run(self, max_seconds: float) -> None:
        pipe_fd = self.pipe.fileno()
        self.ep.register(pipe_fd, EPOLLIN)
        stop_at = time.monotonic() + max_seconds
        while not self.exit:
            if time.monotonic() > stop_at:
                break
            timeout = 1.0
            if self.mode != IDLE:
                timeout = max(0.0, min(1.0, self.deadline - time.monotonic()))
                if self.mode == RR and not self.rr_sending:
                    timeout = 0.05
            for fd, ev in self.ep.poll(timeout):
                if fd == pipe_fd:
                    try:
                        cmd = self.pipe.recv()
                    except EOFError:
                        self.exit = True
                        break
                    self.on_command(cmd)
                    continue
                if ev & (EPOLLIN | EPOLLERR_HUP):
                    self.on_readable(fd)
                if ev & EPOLLOUT:
                    self.flush(fd)
            if self.mode != IDLE:
                self.check_done()


def _worker_main(pipe, wid: int, max_seconds: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    Worker(pipe, wid).run(max_seconds)


# ------------------------------------------------------------- coordinator ---


class ClientPool:
    """N WebSocket clients over ``procs`` worker processes; index 0 of worker 0 is the control."""

    def __init__(
        self,
        host: str,
        port: int,
        n: int,
        procs: int,
        path: str = "/ws",
        ctl_path: str | None = "/ctl",
        max_seconds: float = 3600,
    ) -> None:
        self.host, self.port, self.n = host, port, n
        procs = max(1, min(procs, n))
        ctx = multiprocessing.get_context("fork")
        self.workers = []
        self.shares = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        self.paths = []
        for wid, share in enumerate(self.shares):
            paths = [path] * share
            if wid == 0 and ctl_path:
                paths[0] = ctl_path
            self.paths.append(paths)
        for wid in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, wid, max_seconds), daemon=True)
            proc.start()
            child.close()
            self.workers.append((proc, parent))
        self.connected = 0

    def _recv(self, pipe, timeout: float, what: str):
        if not pipe.poll(timeout):
            raise TimeoutError(f"no '{what}' from a load generator worker in {timeout:.0f} s")
        return pipe.recv()

    def connect(self, timeout: float = 120.0) -> dict:
        for (_proc, pipe), paths in zip(self.workers, self.paths):
            pipe.send(("connect", self.host, self.port, paths, timeout))
        errors: dict[str, int] = {}
        total = 0
        self.control_ok = False
        for wid, (_proc, pipe) in enumerate(self.workers):
            _, res = self._recv(pipe, timeout + 10, "connected")
            total += res["connected"]
            if wid == 0:
                self.control_ok = res["first_ok"]
            for k, v in res["errors"].items():
                errors[k] = errors.get(k, 0) + v
        self.connected = total
        return {"connected": total, "errors": errors}

    def fanout_round(self, rnd: int, count: int, size: int, pid: int, timeout: float) -> dict:
        for _proc, pipe in self.workers[1:]:
            pipe.send(("round", rnd, count, size, False, timeout))
        for _proc, pipe in self.workers[1:]:
            self._recv(pipe, 10, "armed")
        before = cpu_ns(pid)
        t0 = time.monotonic()
        self.workers[0][1].send(("round", rnd, count, size, True, timeout))
        results = [self._recv(pipe, timeout + 10, "done")[1] for proc, pipe in self.workers]
        wall = time.monotonic() - t0
        after = cpu_ns(pid)
        lats = array("q")
        for r in results:
            lats.frombytes(r.pop("lats"))
        received = sum(r["received"] for r in results)
        return {
            "cpu_ns": after - before,
            "wall_s": wall,
            "received": received,
            "expected": self.connected * count,
            "incomplete_clients": sum(r["incomplete_clients"] for r in results),
            "bad_order": sum(r["bad_order"] for r in results),
            "stale": sum(r["stale"] for r in results),
            "timed_out": any(r["timed_out"] for r in results),
            "lats": lats,
        }

    def rr(self, window: int, seconds: float, body: str, pid: int) -> dict:
        before = cpu_ns(pid)
        for _proc, pipe in self.workers:
            pipe.send(("rr", window, seconds, body))
        results = [self._recv(pipe, seconds + 30, "rr_done")[1] for proc, pipe in self.workers]
        after = cpu_ns(pid)
        replies = sum(r["replies"] for r in results)
        span = (max(r["last_ns"] for r in results) - min(r["first_ns"] for r in results)) / 1e9
        return {
            "cpu_ns": after - before,
            "replies": replies,
            "seconds": span,
            "bad": sum(r["bad"] for r in results),
            "lost": sum(r["lost"] for r in results),
        }

    def stats(self) -> dict:
        out: dict[str, int] = {}
        for _proc, pipe in self.workers:
            pipe.send(("stats",))
        for _proc, pipe in self.workers:
            for k, v in self._recv(pipe, 10, "stats")[1].items():
                out[k] = out.get(k, 0) + v
        return out

    def close(self) -> None:
        for _proc, pipe in self.workers:
            try:
                pipe.send(("close",))
            except (OSError, BrokenPipeError):
                pass
        for proc, pipe in self.workers:
            try:
                if pipe.poll(10):
                    pipe.recv()
            except (EOFError, OSError):
                pass
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
            pipe.close()
        self.workers = []

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pct(sorted_vals, q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def default_procs(n: int) -> int:
    return 2 if n <= 5000 else 4


def run_fanout(
    host: str,
    port: int,
    pid: int,
    n: int,
    rounds: int,
    procs: int | None = None,
    cases=FANOUT_CASES,
    warmup: int = 2,
    gap: float = 0.05,
    round_timeout: float = 60.0,
    label: str = "",
) -> list[dict]:
    """Connect ``n`` clients and measure every fan-out case; one result dict per case."""
    procs = procs or default_procs(n)
    out = []
    progress(f"[{label}] fan-out: connecting {n} clients over {procs} processes")
    t0 = time.monotonic()
    with ClientPool(host, port, n, procs) as pool:
        conn = pool.connect()
        connect_s = time.monotonic() - t0
        if conn["connected"] < n:
            progress(
                f"[{label}] fan-out: only {conn['connected']}/{n} connected: {conn['errors']}",
                final=True,
            )
        if conn["connected"] == 0 or not pool.control_ok:
            why = "no connection" if conn["connected"] == 0 else "the control connection failed"
            return [
                {
                    "scenario": "fanout",
                    "n": n,
                    "case": c[0],
                    "error": why,
                    "connect_errors": conn["errors"],
                }
                for c in cases
            ]
        rss = rss_kib(pid)
        rnd = 1
        for case, size, count in cases:
            rows = []
            stat_before, sched_before = stat_cpu_ns(pid), cpu_ns(pid)
            for i in range(warmup + rounds):
                res = pool.fanout_round(rnd, count, size, pid, round_timeout)
                rnd += 1
                if i >= warmup:
                    rows.append(res)
                    lats = sorted(res["lats"])
                    res["p50_ms"] = _pct(lats, 0.50) / 1e6
                    res["p99_ms"] = _pct(lats, 0.99) / 1e6
                    res["cpu_us_per_delivery"] = (
                        res["cpu_ns"] / 1e3 / res["received"] if res["received"] else float("nan")
                    )
                    del res["lats"]
                    progress(
                        f"[{label}] fan-out N={n} {case}: round {i - warmup + 1}/{rounds} "
                        f"{res['cpu_us_per_delivery']:.2f} us/delivery, "
                        f"p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, "
                        f"{res['received']}/{res['expected']}"
                    )
                else:
                    progress(f"[{label}] fan-out N={n} {case}: warm-up {i + 1}/{warmup}")
                if gap:
                    time.sleep(gap)
            stat_total, sched_total = stat_cpu_ns(pid) - stat_before, cpu_ns(pid) - sched_before
            received = sum(r["received"] for r in rows)
            expected = sum(r["expected"] for r in rows)
            result = {
                "scenario": "fanout",
                "n": n,
                "connected": pool.connected,
                "case": case,
                "size": size,
                "count": count,
                "rounds": rounds,
                "cpu_us_per_delivery": statistics.median(r["cpu_us_per_delivery"] for r in rows),
                "cpu_us_per_delivery_min": min(r["cpu_us_per_delivery"] for r in rows),
                "p50_ms": statistics.median(r["p50_ms"] for r in rows),
                "p99_ms": statistics.median(r["p99_ms"] for r in rows),
                "round_ms": statistics.median(r["wall_s"] for r in rows) * 1e3,
                "received": received,
                "expected": expected,
                "incomplete_clients": sum(r["incomplete_clients"] for r in rows),
                "bad_order": sum(r["bad_order"] for r in rows),
                "stale": sum(r["stale"] for r in rows),
                "timed_out_rounds": sum(1 for r in rows if r["timed_out"]),
                "all_delivered": received == expected and not any(r["bad_order"] for r in rows),
                # cross-check of the CPU source over the whole case (warm-up and gaps included)
                "case_cpu_ms_schedstat": sched_total / 1e6,
                "case_cpu_ms_stat": stat_total / 1e6,
                "connect_s": connect_s,
                "server_rss_kib": rss,
            }
            out.append(result)
            progress(
                f"[{label}] fan-out N={n} {case}: {result['cpu_us_per_delivery']:.2f} us/delivery "
                f"(median of {rounds}), p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                f"delivered {received}/{expected}",
                final=True,
            )
        stats = pool.stats()
        for r in out:
            r["closed_by_server"] = stats["closed_by_server"]
    return out


def run_rr(
    host: str,
    port: int,
    pid: int,
    conns: int,
    window: int,
    seconds: float,
    procs: int | None = None,
    warmup_s: float = 0.5,
    label: str = "",
    repeats: int = 1,
) -> dict:
    """Pipelined request/response; ``repeats`` measurements of ``seconds``, medians reported."""
    procs = procs or min(2, conns)
    body = "hello-" + "x" * 26
    case = f"{conns} conn x{window} in flight"
    progress(f"[{label}] request/response {case}: connecting")
    runs = []
    with ClientPool(host, port, conns, procs, path="/ws", ctl_path=None) as pool:
        conn = pool.connect()
        if conn["connected"] == 0:
            return {
                "scenario": "rr",
                "case": case,
                "conns": conns,
                "window": window,
                "error": f"no connection: {conn['errors']}",
            }
        if warmup_s:
            pool.rr(window, warmup_s, body, pid)
        for i in range(max(1, repeats)):
            progress(
                f"[{label}] request/response {case}: measuring {seconds:g} s ({i + 1}/{repeats})"
            )
            res = pool.rr(window, seconds, body, pid)
            res["rate"] = res["replies"] / res["seconds"] if res["seconds"] > 0 else float("nan")
            res["cpu_us"] = res["cpu_ns"] / 1e3 / res["replies"] if res["replies"] else float("nan")
            res["util"] = res["cpu_ns"] / 1e9 / res["seconds"] if res["seconds"] > 0 else 0.0
            runs.append(res)
    rate = statistics.median(r["rate"] for r in runs)
    result = {
        "scenario": "rr",
        "case": case,
        "conns": conns,
        "window": window,
        "connected": conn["connected"],
        "repeats": len(runs),
        "msgs_per_s": rate,
        "cpu_us_per_msg": statistics.median(r["cpu_us"] for r in runs),
        "server_cpu_util": statistics.median(r["util"] for r in runs),
        "replies": sum(r["replies"] for r in runs),
        "bad": sum(r["bad"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
    }
    progress(
        f"[{label}] request/response {case}: {rate:,.0f} msg/s, "
        f"{result['cpu_us_per_msg']:.2f} us/msg server CPU (median of {len(runs)})",
        final=True,
    )
    return result


def _wrk_once(cmd: list[str], pid: int, seconds: float) -> dict:
    before = cpu_ns(pid)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"wrk failed: {exc}"}
    after = cpu_ns(pid)
    out: dict[str, Any] = {"requests": 0}
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            out["req_per_s"] = float(line.split()[1])
        elif " requests in " in line:
            out["requests"] = int(line.split()[0])
        elif line.startswith("Non-2xx or 3xx responses:"):
            out["non_2xx"] = int(line.split(":")[1])
        elif line.startswith("Socket errors:"):
            out["socket_errors"] = line.split(":", 1)[1].strip()
    if not out["requests"] or "req_per_s" not in out:
        out["error"] = (proc.stderr or proc.stdout).strip()[-300:] or "wrk made no request"
        return out
    out["cpu_us_per_req"] = (after - before) / 1e3 / out["requests"]
    out["server_cpu_util"] = (after - before) / 1e9 / seconds
    return out


def run_static(
    host: str,
    port: int,
    pid: int,
    path: str,
    seconds: float,
    conns: int = 32,
    label: str = "",
    case: str = "",
    repeats: int = 1,
) -> dict:
    """``wrk`` against one file, ``repeats`` times; medians reported."""
    import shutil

    wrk = shutil.which("wrk") or "/usr/bin/wrk"
    url = f"http://{host}:{port}{path}"
    cmd = [wrk, "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "5s", url]
    result: dict[str, Any] = {
        "scenario": "static",
        "case": case,
        "path": path,
        "conns": conns,
        "wrk": " ".join(cmd),
    }
    runs = []
    for i in range(max(1, repeats)):
        progress(f"[{label}] static {case}: wrk {seconds:g} s ({i + 1}/{repeats})")
        res = _wrk_once(cmd, pid, seconds)
        if "error" in res:
            result["error"] = res["error"]
            return result
        runs.append(res)
    result["repeats"] = len(runs)
    result["req_per_s"] = statistics.median(r["req_per_s"] for r in runs)
    result["cpu_us_per_req"] = statistics.median(r["cpu_us_per_req"] for r in runs)
    result["server_cpu_util"] = statistics.median(r["server_cpu_util"] for r in runs)
    result["requests"] = sum(r["requests"] for r in runs)
    non_2xx = sum(r.get("non_2xx", 0) for r in runs)
    if non_2xx:
        result["non_2xx"] = non_2xx
    errors = [r["socket_errors"] for r in runs if r.get("socket_errors")]
    if errors:
        result["socket_errors"] = errors[-1] + (
            f" (last of {len(runs)} runs)" if len(runs) > 1 else ""
        )
    progress(
        f"[{label}] static {case}: {result['req_per_s']:,.0f} req/s, "
        f"{result['cpu_us_per_req']:.1f} us/req server CPU (median of {len(runs)})",
        final=True,
    )
    return result


# ----------------------------------------------------------- peer servers ---

_LIVE_SERVERS: set[PeerServer] = set()


def stop_all_servers() -> None:
    """Stop every peer server still running (atexit, signals)."""
    for server in list(_LIVE_SERVERS):
        server.stop()


atexit.register(stop_all_servers)


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP unwind like Ctrl+C, so finally blocks stop servers and workers."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)


def _die_with_parent() -> None:
    """In the server child: get SIGTERM if the harness dies without cleaning up (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class PeerServer:
    """A peer server from bench/servers/, started in its own process group."""

    def __init__(
        self,
        peer: str,
        port: int,
        static_dir: str | None,
        log_dir: str,
        host: str = "127.0.0.1",
        start_timeout: float = 30.0,
    ) -> None:
        self.peer = peer
        script = SERVERS_DIR / f"{peer}_server.py"
        cmd = [sys.executable, str(script), "--host", host, "--port", str(port)]
        if static_dir:
            cmd += ["--static-dir", static_dir]
        self.log_path = os.path.join(log_dir, f"{peer}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.proc.pid
        self.port = port
        _LIVE_SERVERS.add(self)
        deadline = time.monotonic() + start_timeout
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("READY") or not line:
                    break
            if self.proc.poll() is not None:
                break
        if not line.startswith("READY"):
            self.stop()
            with open(self.log_path) as f:
                tail = f.read()[-800:]
            raise RuntimeError(f"{peer} server did not start: {tail.strip() or 'no output'}")
        parts = line.split()
        self.port = int(parts[1])
        if len(parts) > 2:
            self.pid = int(parts[2])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        _LIVE_SERVERS.discard(self)
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        if self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()
        if not self.log.closed:
            self.log.close()


def peer_available(peer: str) -> tuple[bool, str]:
    """Whether the peer's package imports here (checked in a subprocess)."""
    module = {
        "simplew": "simplew",
        "picows": "picows",
        "websockets": "websockets.asyncio.server",
        "aiohttp": "aiohttp",
        "socketify": "socketify",
    }[peer]
    try:
        proc = subprocess.run(
            [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return False, "import timed out"
    if proc.returncode != 0:
        return False, (proc.stderr.strip().splitlines() or ["import failed"])[-1]
    return True, ""


def make_static_dir() -> str:
    """A directory with small.txt (13 B) and large.bin (100 KiB)."""
    d = tempfile.mkdtemp(prefix="simplew-bench-static-")
    with open(os.path.join(d, "small.txt"), "wb") as f:
        f.write(b"Hello, World!")
    with open(os.path.join(d, "large.bin"), "wb") as f:
        f.write(os.urandom(100 * 1024))
    return d


STATIC_CASES = [("small file (13 B)", "/static/small.txt"), ("100 KiB file", "/static/large.bin")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_peer(peer: str, opts: argparse.Namespace, static_dir: str, log_dir: str) -> list[dict]:
    """Every selected scenario against one peer, each N with a fresh server process."""
    results: list[dict] = []
    scenarios = opts.scenarios

    def start(pin: bool) -> PeerServer:
        server = PeerServer(peer, free_port(), static_dir, log_dir)
        if pin:
            apply_pinning(server.pid)
        else:
            unpin(server.pid)
        return server

    def tag(rows: list[dict]) -> list[dict]:
        for r in rows:
            r["peer"] = peer
        return rows

    if "fanout" in scenarios:
        for n in opts.n:
            server = start(opts.pin)
            try:
                results += tag(
                    run_fanout(
                        "127.0.0.1",
                        server.port,
                        server.pid,
                        n,
                        opts.rounds,
                        opts.procs,
                        warmup=opts.warmup,
                        label=peer,
                        round_timeout=opts.round_timeout,
                    )
                )
            except Exception as exc:  # noqa: BLE001 - keep the run going
                progress(f"[{peer}] fan-out N={n} failed: {exc!r}", final=True)
                results += tag(
                    [
                        {"scenario": "fanout", "n": n, "case": c[0], "error": repr(exc)}
                        for c in FANOUT_CASES
                    ]
                )
            finally:
                if not server.alive():
                    progress(f"[{peer}] server died; see {server.log_path}", final=True)
                server.stop()
    if "rr" in scenarios:
        server = start(opts.pin and opts.rr_pin)
        try:
            for conns in opts.rr_conns:
                try:
                    results += tag(
                        [
                            run_rr(
                                "127.0.0.1",
                                server.port,
                                server.pid,
                                conns,
                                opts.rr_window,
                                opts.rr_seconds,
                                label=peer,
                                repeats=opts.repeats,
                            )
                        ]
                    )
                except Exception as exc:  # noqa: BLE001
                    progress(f"[{peer}] request/response {conns} conns failed: {exc!r}", final=True)
                    results += tag(
                        [
                            {
                                "scenario": "rr",
                                "conns": conns,
                                "window": opts.rr_window,
                                "case": f"{conns} conn x{opts.rr_window} in flight",
                                "error": repr(exc),
                            }
                        ]
                    )
        finally:
            server.stop()
    if "static" in scenarios:
        server = start(opts.pin)
        try:
            for case, path in STATIC_CASES:
                results += tag(
                    [
                        run_static(
                            "127.0.0.1",
                            server.port,
                            server.pid,
                            path,
                            opts.wrk_seconds,
                            opts.wrk_conns,
                            label=peer,
                            case=case,
                            repeats=opts.repeats,
                        )
                    ]
                )
        finally:
            server.stop()
    return results


# -------------------------------------------------------------------- table ---


def markdown_table(results: list[dict]) -> str:
    """Plain per-peer tables of the raw results (run_all.py adds the ratios)."""
    lines = []
    fan = [r for r in results if r["scenario"] == "fanout"]
    if fan:
        lines += [
            "| peer | N | case | CPU µs/delivery | p50 ms | p99 ms | delivered |",
            "|---|---:|---|---:|---:|---:|---|",
        ]
        for r in fan:
            if "error" in r:
                lines.append(
                    f"| {r['peer']} | {r['n']} | {r['case']} | error: {r['error']} | | | |"
                )
                continue
            lines.append(
                f"| {r['peer']} | {r['n']} | {r['case']} | {r['cpu_us_per_delivery']:.2f} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{'all' if r['all_delivered'] else 'MISSING'} {r['received']}/{r['expected']} |"
            )
        lines.append("")
    rr = [r for r in results if r["scenario"] == "rr"]
    if rr:
        lines += ["| peer | case | msg/s | CPU µs/msg |", "|---|---|---:|---:|"]
        for r in rr:
            if "error" in r:
                lines.append(f"| {r['peer']} | {r['case']} | error: {r['error']} | |")
                continue
            lines.append(
                f"| {r['peer']} | {r['case']} | {r['msgs_per_s']:,.0f} | {r['cpu_us_per_msg']:.2f} |"
            )
        lines.append("")
    st = [r for r in results if r["scenario"] == "static"]
    if st:
        lines += ["| peer | file | req/s | CPU µs/req |", "|---|---|---:|---:|"]
        for r in st:
            if "error" in r:
                lines.append(f"| {r['peer']} | {r['case']} | error: {r['error']} | |")
                continue
            lines.append(
                f"| {r['peer']} | {r['case']} | {r['req_per_s']:,.0f} | {r['cpu_us_per_req']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------- CLI ---


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenarios",
        default="fanout,rr,static",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help="comma list of fanout, rr, static",
    )
    parser.add_argument(
        "--n", type=int_list, default=[1000, 10000], help="fan-out client counts, comma list"
    )
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds per fan-out case")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds before each case")
    parser.add_argument(
        "--procs",
        type=int,
        default=None,
        help="client processes for fan-out (None: 2, or 4 above 5000 clients)",
    )
    parser.add_argument(
        "--round-timeout",
        type=float,
        default=60.0,
        help="seconds a fan-out round may take before it counts as failed",
    )
    parser.add_argument(
        "--rr-conns",
        type=int_list,
        default=[1, 100],
        help="request/response connection counts, comma list",
    )
    parser.add_argument(
        "--rr-window",
        type=int,
        default=32,
        help="request/response messages in flight per connection",
    )
    parser.add_argument(
        "--rr-seconds", type=float, default=3.0, help="measured seconds per request/response run"
    )
    parser.add_argument("--wrk-seconds", type=float, default=3.0, help="wrk duration per run")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="request/response and wrk runs per case (medians reported)",
    )
    parser.add_argument("--wrk-conns", type=int, default=32, help="wrk connections (one thread)")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the server to the first CPU and the load generator "
        "(workers, wrk) to the others (pinned by default)",
    )
    parser.add_argument(
        "--rr-pin",
        action="store_true",
        help="pin during request/response too (by default it runs unpinned: the "
        "Python client needs more than one CPU to keep a server busy)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="WebSocket fan-out / request-response / static-file load generator "
        "(loopback only). Measures server CPU from /proc/PID.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--peer",
        choices=PEERS,
        help="start bench/servers/<peer>_server.py (a fresh process per fan-out N, "
        "one for request/response, one for static)",
    )
    target.add_argument("--port", type=int, help="a running server on 127.0.0.1:PORT (needs --pid)")
    parser.add_argument("--pid", type=int, help="PID of the running server (for its CPU time)")
    parser.add_argument("--json", help="also write the raw results to this JSON file")
    add_common_options(parser)
    opts = parser.parse_args(argv)
    install_signal_handlers()
    if opts.port and not opts.pid:
        parser.error("--port needs --pid (the server's CPU time is read from /proc/PID)")
    static_dir = make_static_dir()
    log_dir = tempfile.mkdtemp(prefix="simplew-bench-logs-")
    if opts.pin and opts.pid:
        progress(apply_pinning(opts.pid), final=True)
    try:
        if opts.peer:
            results = run_peer(opts.peer, opts, static_dir, log_dir)
        else:
            results = []
            label = f"port {opts.port}"
            if "fanout" in opts.scenarios:
                for n in opts.n:
                    results += run_fanout(
                        "127.0.0.1",
                        opts.port,
                        opts.pid,
                        n,
                        opts.rounds,
                        opts.procs,
                        warmup=opts.warmup,
                        label=label,
                        round_timeout=opts.round_timeout,
                    )
            if "rr" in opts.scenarios:
                for conns in opts.rr_conns:
                    results.append(
                        run_rr(
                            "127.0.0.1",
                            opts.port,
                            opts.pid,
                            conns,
                            opts.rr_window,
                            opts.rr_seconds,
                            label=label,
                            repeats=opts.repeats,
                        )
                    )
            if "static" in opts.scenarios:
                progress(
                    "static: against an external server, files must be served at "
                    "/static/small.txt and /static/large.bin",
                    final=True,
                )
                for case, path in STATIC_CASES:
                    results.append(
                        run_static(
                            "127.0.0.1",
                            opts.port,
                            opts.pid,
                            path,
                            opts.wrk_seconds,
                            opts.wrk_conns,
                            label=label,
                            case=case,
                            repeats=opts.repeats,
                        )
                    )
            for r in results:
                r["peer"] = label
    finally:
        import shutil

        shutil.rmtree(static_dir, ignore_errors=True)
    print(markdown_table(results))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
