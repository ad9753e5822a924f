"""Helpers of the simplew.v2 benchmarks: raw-socket v2 clients (own handshake,
minimal frame parser, no JSON for the frames counted), the benchmark server
(``bench/v2app.py``) as a process, Redis with a Unix socket, Redis CPU.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))

from multiproc import _stop_group, free_port, port_open, wait_until  # noqa: E402

PUB = b'{"type":"pub"'
OFFSET = re.compile(rb'"offset":(\d+)')


# -- processes ---------------------------------------------------------------------------


def taskset(cpus: str | None) -> list[str]:
    if cpus is None or sys.platform != "linux" or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", cpus]


def frame_spans(buf: bytes | bytearray) -> tuple[list[tuple[int, int, int]], int]:
    """The whole unmasked frames at the start of ``buf`` (a server's): ``(opcode,
    payload start, payload end)`` each, and where the first incomplete one starts."""
    spans = []
    pos = 0
    while len(buf) - pos >= 2:
        length = buf[pos + 1] & 0x7F
        start = pos + 2
        if length == 126:
            if len(buf) - pos < 4:
                break
            length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            start = pos + 4
        elif length == 127:
            if len(buf) - pos < 10:
                break
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            start = pos + 10
        if len(buf) < start + length:
            break
        spans.append((buf[pos] & 0x0F, start, start + length))
        pos = start + length
    return spans, pos


class App:
    """``bench/v2app.py`` in its own process group (the pid is the server's own)."""

    def __init__(
        self,
        redis: str | list[str] | None,
        recovery: bool = True,
        cpus: str | None = None,
        port: int | None = None,
        max_rooms: int = 128,
        history_size: int = 10_000,
    ) -> None:
        self.port = port or free_port()
        if isinstance(redis, list):
            redis = ",".join(redis)
        argv = [
            *taskset(cpus),
            sys.executable,
            str(BENCH / "v2app.py"),
            str(self.port),
            "--recovery",
            "1" if recovery else "0",
            "--max-rooms",
            str(max_rooms),
            "--history-size",
            str(history_size),
        ]
        if redis:
            argv += ["--redis", redis]
        self.log = Path(f"/tmp/simplew-bench-{self.port}.log")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 20) -> App:
        wait_until(lambda: port_open(self.port) or self.proc.poll() is not None, timeout, "server")
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{self.log.read_text()}")
        return self

    def stop(self) -> None:
        _stop_group(self.proc)

    def http(self, method: str, path: str) -> Any:
        return http_json(self.port, method, path)


_CONNS: dict[int, http.client.HTTPConnection] = {}


def http_json(port: int, method: str, path: str) -> Any:
    """One request on a kept-alive connection to ``port``; the JSON answer."""
    for attempt in range(2):
        conn = _CONNS.get(port)
        if conn is None:
            conn = _CONNS[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request(method, path, body=b"" if method == "POST" else None)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: {response.status} {body[:200]!r}")
            return json.loads(body)
        except (OSError, http.client.HTTPException):
            conn.close()
            _CONNS.pop(port, None)
            if attempt:
                raise
    return None


def start_redis(tmp: Path, unix: bool = False, cpus: str | None = None) -> dict[str, Any]:
    """A redis-server (TCP port, and a Unix socket when ``unix``), no persistence."""
    path = shutil.which("redis-server")
    if path is None:
        raise SystemExit("redis-server is not installed")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    sock = str(tmp / f"redis-{port}.sock")
    argv = [*taskset(cpus), path, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"]
    argv += ["--dir", str(tmp)]
    if unix:
        argv += ["--unixsocket", sock, "--unixsocketperm", "700"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_until(lambda: port_open(port) or proc.poll() is not None, 10, "redis-server")
    if unix:
        wait_until(lambda: os.path.exists(sock), 10, "redis unix socket")
    url = f"unix://{sock}" if unix else f"redis://127.0.0.1:{port}"
    return {"proc": proc, "port": port, "socket": sock if unix else None, "url": url}


def stop_redis(redis: dict[str, Any]) -> None:
    _stop_group(redis["proc"])


def redis_cpu(port: int) -> float:
    """used_cpu_user + used_cpu_sys of the redis on ``port``, seconds."""
    import redis as redis_py

    client = redis_py.Redis(host="127.0.0.1", port=port, socket_timeout=10)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# -- a raw simplew.v2 client -------------------------------------------------------------


class Raw:
    """One blocking simplew.v2 connection on a raw socket: ``send`` masked TEXT frames,
    ``frames()`` the payloads that arrived."""

    def __init__(self, port: int, path: str = "/ws", protocol: str | None = "simplew.v2") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        extra = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"no upgrade: {head[:80]!r}")
        self.buf = bytearray(head.split(b"\r\n\r\n", 1)[1])
        self.queue: list[bytes] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        n = len(data)
        if n < 126:
            head = bytes([0x81, 0x80 | n])
        elif n < 65536:
            head = bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x81, 0xFF]) + n.to_bytes(8, "big")
        mask = b"\0\0\0\0"  # a zero masking key: the payload goes as it is
        masked = data
        self.sock.sendall(head + mask + masked)

    def request(self, url: str, body: Any) -> None:
        self.send(json.dumps({"url": url, "body": body}))

    def read(self, timeout: float | None = None) -> list[bytes]:
        """Wait up to ``timeout`` for data; the complete frames' payloads."""
        if self.queue or self.buf:
            out, self.queue = self.queue + self.frames(), []
            if out:
                return out
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(1 << 20)
        except (TimeoutError, BlockingIOError):
            return []
        if not chunk:
            raise ConnectionError("closed")
        self.buf += chunk
        return self.frames()

    def frames(self) -> list[bytes]:
        buf = self.buf
        spans, pos = frame_spans(buf)
        out = [bytes(buf[start:end]) for opcode, start, end in spans if opcode == 1]  # TEXT
        del buf[:pos]
        return out

    def until(self, predicate: Any, timeout: float = 30) -> bytes:
        """Read until a payload satisfies ``predicate``; return it (those after it stay
        for the next ``read``)."""
        deadline = time.monotonic() + timeout
        while True:
            payloads = self.read(max(0.0, deadline - time.monotonic()))
            for i, payload in enumerate(payloads):
                if predicate(payload):
                    self.queue = payloads[i + 1 :]
                    return payload
            if time.monotonic() > deadline:
                raise TimeoutError("the expected message did not come")

    def close(self) -> None:
        self.sock.close()


def welcome(client: Raw) -> dict[str, Any]:
    return json.loads(client.until(lambda p: p.startswith(b'{"type":"welcome"')))


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; numbers right-aligned."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    align = [
        "---:" if rows and isinstance(rows[0][i], (int, float)) else "---"
        for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
