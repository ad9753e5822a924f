"""A minimal blocking simplew.v2 client for the multi-process recovery tests:
it records every ``pub`` as ``(room, epoch, offset, text)`` and every welcome,
join, leave and reset, keeps a position per stream, can be cut with a TCP reset,
and resumes (``?resume=1`` and a first ``resume`` message).

Also runnable, for the network-namespace test (one host per process)::

    python tests/v2client.py URL STATE.json SECONDS
    python tests/v2client.py --publish PORT RATE SECONDS

The first connects (resuming from STATE.json when it holds a session), collects
pubs for SECONDS, and writes the session, the positions, the pubs, the offsets of
the broadcast stream and the welcomes to STATE.json; the second POSTs /publish
RATE times a second.
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
PROTOCOL = "simplew.v2"


class V2Client:
    """Records everything as it comes; checks nothing but the welcome's type (the
    tests assert on what it recorded). ``streams`` is the position per stream
    held: room (None for the broadcast stream) -> (epoch, offset)."""

    def __init__(self) -> None:
        self.session: str | None = None
        self.streams: dict[str | None, tuple[str, int]] = {}
        self.pubs: list[tuple[str | None, str, int, str]] = []  # (room, epoch, offset, text)
        self.welcomes: list[dict[str, Any]] = []
        self.joins: list[dict[str, Any]] = []
        self.leaves: list[dict[str, Any]] = []
        self.resets: list[dict[str, Any]] = []
        self.ws: Any = None

    # the broadcast stream (room None), as the single stream of simplew.v1 was
    @property
    def epoch(self) -> str | None:
        position = self.streams.get(None)
        return position[0] if position is not None else None

    @property
    def offset(self) -> int:
        position = self.streams.get(None)
        return position[1] if position is not None else 0

    @property
    def offsets(self) -> list[int]:
        """The offsets of the broadcast stream's pubs, in arrival order."""
        return [offset for room, _epoch, offset, _text in self.pubs if room is None]

    @property
    def texts(self) -> list[str]:
        """The texts of every pub, in arrival order."""
        return [text for _room, _epoch, _offset, text in self.pubs]

    def room_pubs(self, room: str | None) -> list[tuple[str, int, str]]:
        """(epoch, offset, text) of the pubs of one stream, in arrival order."""
        return [(e, o, t) for r, e, o, t in self.pubs if r == room]

    def connect(
        self, url: str, timeout: float = TIMEOUT, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        resume = self.session is not None
        if resume:
            url += ("&" if "?" in url else "?") + "resume=1"
        self.ws = connect(
            url,
            subprotocols=[PROTOCOL],
            proxy=None,
            compression=None,
            open_timeout=timeout,
            close_timeout=1,
            max_size=None,
            additional_headers=headers,
        ).__enter__()
        if resume:
            self.ws.send(json.dumps(self.resume_message(), separators=(",", ":")))
        welcome = self._recv_json(timeout)
        assert welcome["type"] == "welcome", welcome
        self.welcomes.append(welcome)
        self.session = welcome["session"]
        self.streams = {room: (epoch, offset) for room, epoch, offset, *_ in welcome["streams"]}
        return welcome

    def resume_message(self) -> dict[str, Any]:
        rooms = sorted((r for r in self.streams if r is not None), key=lambda r: r.encode())
        streams = [[r, *self.streams[r]] for r in [None, *rooms] if r in self.streams]
        return {"type": "resume", "session": self.session, "streams": streams}

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
        """Send a routed message and return the next ``msg`` reply (the rest is recorded)."""
        self.ws.send(json.dumps({"url": url, "body": body}))
        deadline = time.monotonic() + TIMEOUT
        while True:
            message = self._recv_json(max(0.01, deadline - time.monotonic()))
            if message["type"] == "msg":
                text = message["text"]
                try:
                    return json.loads(text)
                except ValueError:
                    return text
            self._record(message)

    def _record(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        room = message.get("room")
        if kind == "pub":
            epoch, offset = message["epoch"], message["offset"]
            self.pubs.append((room, epoch, offset, message.get("text", "")))
            held = self.streams.get(room)  # recorded anyway: the tests look for strays
            if held is not None and held[0] == epoch and offset > held[1]:
                self.streams[room] = (epoch, offset)
        elif kind == "join":
            self.joins.append(message)
            self.streams[room] = (message["epoch"], message["offset"])
        elif kind == "leave":
            self.leaves.append(message)
            self.streams.pop(room, None)
        elif kind == "reset":
            self.resets.append(message)
            self.streams[room] = (message["epoch"], message["offset"])

    def collect(
        self,
        seconds: float | None = None,
        until_offset: int | None = None,
        room: str | None = None,
    ) -> bool:
        """Record messages for ``seconds``, or until the stream of ``room`` reached
        ``until_offset``; False when the connection ended first."""
        deadline = time.monotonic() + (seconds if seconds is not None else TIMEOUT * 2)
        while True:
            held = self.streams.get(room, ("", 0))[1]
            if until_offset is not None and held >= until_offset:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                if seconds is None:
                    raise AssertionError(f"offset {until_offset} of {room!r} not reached ({held})")
                return True
            try:
                message = self._recv_json(left)
            except TimeoutError:
                continue
            except Exception:
                return False  # closed
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
            "streams": [[room, *position] for room, position in self.streams.items()],
            "pubs": self.pubs,
            "offsets": self.offsets,
            "welcomes": self.welcomes,
            "joins": self.joins,
            "leaves": self.leaves,
            "resets": self.resets,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.session = state["session"]
        self.streams = {room: (epoch, offset) for room, epoch, offset in state["streams"]}
        self.pubs = [(room, epoch, offset, text) for room, epoch, offset, text in state["pubs"]]
        self.welcomes = list(state["welcomes"])
        self.joins = list(state["joins"])
        self.leaves = list(state["leaves"])
        self.resets = list(state["resets"])


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
    client = V2Client()
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
