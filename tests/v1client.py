"""A minimal blocking simplew.v1 client for the multi-process recovery tests:
it records every ``pub`` offset, can be cut with a TCP reset, and resumes.

Also runnable, for the network-namespace test (one host per process)::

    python tests/v1client.py URL STATE.json SECONDS
    python tests/v1client.py --publish PORT RATE SECONDS

The first connects (resuming from STATE.json when it holds a session), collects
pubs for SECONDS, and writes the session, the offsets received and the
welcomes to STATE.json; the second POSTs /publish RATE times a second.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import sys
import threading
import time
from typing import Any

from websockets.sync.client import connect

TIMEOUT = 5.0


class V1Client:
    def __init__(self) -> None:
        self.session: str | None = None
        self.epoch: str | None = None
        self.offset = 0
        self.offsets: list[int] = []
        self.texts: list[str] = []
        self.pubs: list[tuple[str | None, int, str]] = []  # (epoch, offset, text)
        self.welcomes: list[dict[str, Any]] = []
        self.ws: Any = None

    def connect(self, url: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        query = ""
        if self.session is not None:
            query = f"?session={self.session}&epoch={self.epoch}&offset={self.offset}"
        self.ws = connect(
            url + query,
            subprotocols=["simplew.v1"],
            proxy=None,
            compression=None,
            open_timeout=timeout,
            close_timeout=1,
            max_size=None,
        ).__enter__()
        welcome = self._recv_json(timeout)
        assert welcome["type"] == "welcome", welcome
        self.welcomes.append(welcome)
        self.session, self.epoch, self.offset = (
            welcome["session"],
            welcome["epoch"],
            welcome["offset"],
        )
        return welcome

    def connect_any(self, urls: list[str], deadline: float) -> dict[str, Any]:
        """Connect to the first of ``urls`` that answers, retrying until ``deadline``."""
        while True:
            for url in urls:
                try:
                    return self.connect(url, timeout=1.0)
                except (OSError, TimeoutError, Exception):
                    if time.monotonic() > deadline:
                        raise
            time.sleep(0.05)

    def _recv_json(self, timeout: float) -> dict[str, Any]:
        return json.loads(self.ws.recv(timeout=timeout))

    def request(self, url: str, body: Any = None) -> Any:
        """Send a routed message and return the next ``msg`` reply (pubs are recorded)."""
        self.ws.send(json.dumps({"url": url, "body": body}))
        deadline = time.monotonic() + TIMEOUT
        while True:
            message = self._recv_json(max(0.01, deadline - time.monotonic()))
            if message["type"] == "pub":
                self._record(message)
            elif message["type"] == "msg":
                text = message["text"]
                try:
                    return json.loads(text)
                except ValueError:
                    return text

    def _record(self, message: dict[str, Any]) -> None:
        self.offsets.append(message["offset"])
        self.texts.append(message.get("text", ""))
        self.pubs.append((self.epoch, message["offset"], message.get("text", "")))
        self.offset = message["offset"]

    def collect(self, seconds: float | None = None, until_offset: int | None = None) -> bool:
        """Record pubs for ``seconds``, or until ``until_offset`` arrived; False when
        the connection ended first."""
        deadline = time.monotonic() + (seconds if seconds is not None else TIMEOUT * 2)
        while True:
            if until_offset is not None and self.offset >= until_offset:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                if seconds is None:
                    raise AssertionError(f"offset {until_offset} not reached (at {self.offset})")
                return True
            try:
                message = self._recv_json(left)
            except TimeoutError:
                continue
            except Exception:
                return False  # closed
            if message["type"] == "pub":
                self._record(message)

    def reset(self) -> None:
        """Cut the connection with a TCP reset."""
        sock = self.ws.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        try:
            self.ws.close()
        except Exception:
            pass

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass

    def state(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "epoch": self.epoch,
            "offset": self.offset,
            "offsets": self.offsets,
            "welcomes": self.welcomes,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.session, self.epoch, self.offset = state["session"], state["epoch"], state["offset"]
        self.offsets = list(state["offsets"])
        self.welcomes = list(state["welcomes"])


class HttpPublisher(threading.Thread):
    """POSTs ``/publish`` to the first server of ``ports`` that answers, ``rate``
    times a second, until stopped; rooms round-robin."""

    def __init__(
        self,
        ports: list[int],
        rate: float,
        rooms: list[str | None] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.host = host
        self.period = 1.0 / rate
        self.rooms = rooms or [None]
        self.sent = 0
        self.failed = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        conn = None
        start = time.monotonic()
        i = 0
        while not self.stopped.is_set():
            room = self.rooms[i % len(self.rooms)]
            path = "/publish" + (f"?room={room}" if room else "")
            for port in self.ports:
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(self.host, port, timeout=2)
                    conn.request("POST", path, body=str(i).encode())
                    response = conn.getresponse()
                    response.read()
                    if response.status == 200:
                        self.sent += 1
                        break
                except (OSError, http.client.HTTPException):
                    pass
                if conn is not None:
                    conn.close()
                    conn = None
                self.failed += 1
            i += 1
            delay = start + i * self.period - time.monotonic()
            if delay > 0:
                self.stopped.wait(delay)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def main() -> None:
    if sys.argv[1] == "--publish":
        publisher = HttpPublisher([int(sys.argv[2])], float(sys.argv[3]))
        publisher.start()
        time.sleep(float(sys.argv[4]))
        publisher.stop()
        print(f"sent {publisher.sent} failed {publisher.failed}")
        return
    url, state_path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    client = V1Client()
    try:
        with open(state_path) as f:
            client.load(json.load(f))
    except (OSError, ValueError):
        pass
    client.connect_any([url], time.monotonic() + 10)
    client.collect(seconds)
    client.close()
    with open(state_path, "w") as f:
        json.dump(client.state(), f)


if __name__ == "__main__":
    main()
