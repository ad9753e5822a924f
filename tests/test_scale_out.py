"""Scale-out guarantees of the per-room streams (``simplew.v2``) on real Redis
topologies: two ``simplew serve tests.apps.feed:server --recovery`` processes
share one deployment, simplew.v2 clients sit in rooms on both, and a publisher
POSTs ``--publish /ack``, whose answer is the publication's position once Redis
stored it (an *acknowledged* publication), or 503 when its shard cannot store it.

What each test proves:

- ``test_rooms_on_every_topology[single|shards|cluster]``: one instance, two
  client-side shards and a Cluster of 3 masters + 3 replicas all carry a stream
  per room: every client gets exactly the publications of its rooms and of the
  broadcast stream, each once, in offset order per stream, with the positions
  the publisher was given; a room's keys are on the shard
  ``shard_index(room, 2)`` (client-side shards, and on no other), on the master
  owning their slot (Cluster, the rooms spread over the three masters).
- ``test_kill_9[shards|cluster|sentinel]``: a Redis process is killed with
  SIGKILL while acknowledged publications flow to 20 rooms and the broadcast
  stream (shards: one shard, kept down for 3 s, then restarted empty; Cluster:
  the master owning some rooms, a replica takes over; Sentinel: the master, the
  replica is promoted). For every client: every acknowledged publication of its
  rooms is received, or the client was told to ``reset`` that room; only rooms
  whose data was on the killed node are reset (shards: exactly those, as the
  restarted shard is empty); each stream's offsets follow each other by one
  within an epoch; no (room, epoch, offset) names two texts, for any client or
  acknowledgement; and publication and delivery resume by themselves: every
  publication acknowledged once the topology is back reaches every member.
- ``test_one_dead_shard_does_not_stop_the_others``: with two shards and one
  down, the other shard's rooms (and the broadcast stream, which lives there)
  keep flowing: their publications are acknowledged and delivered while the
  shard is down; publications to the dead shard's rooms are refused with 503
  and ``Retry-After``; once it is back its rooms flow again.
- ``test_a_process_receives_only_the_rooms_it_has_clients_in``: interest. With
  process A's client in ``hot`` and B's clients in two other rooms, 2,000
  publications to ``hot`` through A do not reach B (B's
  ``simplew_stream_received_total`` grows only by the publications of its rooms
  and the broadcast stream), B follows its two rooms + the broadcast stream
  (``simplew_streams_followed``), and once B's client of one room is gone and
  the 5 s linger passed, B follows one stream less.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any
from urllib.parse import quote

import pytest

from multiproc import ServerProcess, redis_server_path, wait_until
from simplew.engines import Engine, shard_index
from topology import Cluster, PlainShards, SentinelSetup, ask, redis_cli_path
from v2client import V2Client

pytestmark = pytest.mark.skipif(
    redis_server_path() is None or redis_cli_path() is None,
    reason="redis-server and redis-cli are not installed (apt-get install redis-server)",
)

APP = "tests.apps.feed:server"
ROOMS = 20


# -- topologies (shared by the tests of this module; each test uses its own rooms) ----


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    with PlainShards(tmp_path_factory.mktemp("single"), 1) as shards:
        yield shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    with PlainShards(tmp_path_factory.mktemp("shards"), 2) as shards:
        yield shards


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("cluster"), 3, 1) as cluster:
        yield cluster


@pytest.fixture
def sentinel(tmp_path):
    with SentinelSetup(tmp_path) as setup:
        yield setup


def redis_args(topology: Any) -> list[str]:
    if isinstance(topology, PlainShards):
        return [arg for url in topology.urls for arg in ("--redis", url)]
    return ["--redis", topology.url]


@pytest.fixture
def processes():
    started: list[ServerProcess] = []

    def start(topology: Any) -> ServerProcess:
        proc = ServerProcess(
            "--recovery", "--publish", "/ack", "--metrics", *redis_args(topology), app=APP
        )
        started.append(proc)
        return proc.wait_ready()

    yield start
    for proc in started:
        proc.cleanup()


# -- clients -------------------------------------------------------------------------


class Client(V2Client):
    """A V2Client that also keeps every welcome and message in arrival order, and
    collects in a thread (reconnecting with a resume when the server closes)."""

    def __init__(self, url: str, rooms: list[str]) -> None:
        super().__init__()
        self.url = url
        self.rooms = rooms
        self.events: list[dict[str, Any]] = []
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        self.errors: list[str] = []

    def connect(self, url: str, timeout: float = 5.0) -> dict[str, Any]:
        welcome = super().connect(url, timeout)
        self.events.append(welcome)
        return welcome

    def _record(self, message: dict[str, Any]) -> None:
        super()._record(message)
        self.events.append(message)

    def open(self) -> Client:
        self.connect(self.url)
        for room in self.rooms:
            assert self.request("/ws/feed/join", room) == "joined " + room
        # the join comes once the process follows the room (it may come after the reply)
        deadline = time.monotonic() + 20
        while not set(self.rooms) <= set(self.streams):
            assert time.monotonic() < deadline, f"no join of {set(self.rooms) - set(self.streams)}"
            assert self.collect(0.1)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stopped.is_set():
            if self.collect(0.2):
                continue
            if self.stopped.is_set():
                return
            try:
                self.connect_any([self.url], time.monotonic() + 30)
            except Exception as exc:  # the test fails on what it did not receive
                self.errors.append(repr(exc))
                return

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(10)
        self.close()

    def check(self) -> tuple[set[tuple[str | None, str, int, str]], set[str | None]]:
        """Walk the events: every pub continues the position held for its stream
        by one. Returns the pubs received and the streams the client was told it
        lost (a reset, or a resumed welcome that did not recover the stream)."""
        held: dict[str | None, tuple[str, int]] = {}
        received: set[tuple[str | None, str, int, str]] = set()
        lost: set[str | None] = set()
        for event in list(self.events):
            kind = event["type"]
            room = event.get("room")
            if kind == "welcome":
                positions = {}
                for stream, epoch, offset, recovered, _missed in event["streams"]:
                    if recovered:
                        assert held.get(stream) == (epoch, offset), (stream, event)
                    elif held:
                        lost.add(stream)
                    positions[stream] = (epoch, offset)
                lost.update(r for r in held if r not in positions)
                held = positions
            elif kind in ("join", "reset"):
                held[room] = (event["epoch"], event["offset"])
                if kind == "reset":
                    lost.add(room)
            elif kind == "leave":
                held.pop(room, None)
            elif kind == "pub":
                assert room in held, f"a pub of {room!r}, a stream not held: {event}"
                epoch, offset = held[room]
                assert (event["epoch"], event["offset"]) == (epoch, offset + 1), (
                    f"{room!r} at {(epoch, offset)}: {event}"
                )
                held[room] = (epoch, offset + 1)
                received.add((room, epoch, offset + 1, event["text"]))
        return received, lost


# -- the publisher -------------------------------------------------------------------


class Publisher(threading.Thread):
    """POSTs ``/ack?room=R`` round-robin over ``rooms`` (None: the broadcast stream)
    and over the processes' ports, about ``rate`` times a second; keeps every
    acknowledgement ``(room, epoch, offset, text)`` and counts the 503s per room."""

    def __init__(self, ports: list[int], rooms: list[str | None], rate: float = 150) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.rooms = rooms
        self.period = 1.0 / rate
        self.acked: list[tuple[str | None, str, int, str]] = []
        self.refused: dict[str | None, int] = {}
        self.failed = 0
        self.timeout = 60.0  # an acknowledgement may wait for its shard
        self.stopped = threading.Event()
        self.conns: dict[int, http.client.HTTPConnection] = {}

    def post(self, port: int, room: str | None, text: str) -> tuple[int, Any]:
        conn = self.conns.get(port)
        if conn is None:
            conn = self.conns[port] = http.client.HTTPConnection(
                "127.0.0.1", port, timeout=self.timeout
            )
        path = "/ack" + (f"?room={quote(room)}" if room is not None else "")
        try:
            conn.request("POST", path, body=text.encode())
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self.conns.pop(port, None)
            raise
        return response.status, (json.loads(body) if body else None, response)

    def send(self, i: int) -> None:
        room = self.rooms[i % len(self.rooms)]
        text = f"{room}|{i}"
        try:
            status, (answer, response) = self.post(self.ports[i % len(self.ports)], room, text)
        except (OSError, http.client.HTTPException):
            self.failed += 1
            return
        if status == 200:
            assert answer["room"] == room, answer
            self.acked.append((room, answer["epoch"], answer["offset"], text))
        elif status == 503:
            assert response.getheader("Retry-After") == "1"
            self.refused[room] = self.refused.get(room, 0) + 1
        else:
            self.failed += 1

    def run(self) -> None:
        start = time.monotonic()
        i = 0
        while not self.stopped.is_set():
            self.send(i)
            i += 1
            delay = start + i * self.period - time.monotonic()
            if delay > 0:
                self.stopped.wait(delay)
        for conn in self.conns.values():
            conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(90)
        assert not self.is_alive()

    def acked_rooms(self, since: int = 0) -> set[str | None]:
        return {room for room, *_ in self.acked[since:]}


def metrics(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# -- the checks ----------------------------------------------------------------------


def start_clients(
    procs: list[ServerProcess], rooms: list[str], per_process: int = 3, per_client: int = 7
) -> list[Client]:
    """``per_process`` clients on each process, each in ``per_client`` rooms; every
    room has a member on each process."""
    clients = []
    k = 0
    for proc in procs:
        for _ in range(per_process):
            mine = [rooms[(k + j * per_process) % len(rooms)] for j in range(per_client)]
            try:
                clients.append(Client(proc.url, sorted(set(mine))).open())
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{proc.log()[-4000:]}") from None
            k += 1
    covered = {room for c in clients for room in c.rooms}
    assert covered == set(rooms)
    return clients


def one_text_per_position(
    clients: list[Client], acked: list[tuple[str | None, str, int, str]]
) -> None:
    names: dict[tuple[str | None, str, int], str] = {}
    for room, epoch, offset, text in [*acked, *(p for c in clients for p in c.pubs)]:
        assert names.setdefault((room, epoch, offset), text) == text, (room, epoch, offset)


def missing(
    client: Client, acked: list[tuple[str | None, str, int, str]], excused: bool = True
) -> list[tuple[str | None, str, int, str]]:
    """The acknowledged publications of the client's streams it did not receive,
    but (``excused``) those of streams it was told it lost."""
    received, lost = client.check()
    mine = {None, *client.rooms}
    return [
        pub
        for pub in acked
        if pub[0] in mine and pub not in received and not (excused and pub[0] in lost)
    ]


def wait_delivered(clients: list[Client], publisher: Publisher, since: int = 0) -> None:
    """Until every client has every acknowledged publication (from ``since`` on:
    without excuse), and before it the excused ones."""

    def done() -> bool:
        return all(
            not missing(c, publisher.acked) and not missing(c, publisher.acked[since:], False)
            for c in clients
        )

    try:
        wait_until(done, 30, "every acknowledged publication delivered", interval=0.2)
    except AssertionError:
        report = {
            c.url + str(c.rooms): missing(c, publisher.acked[since:], False)[:5] for c in clients
        }
        rooms = {pub[0] for c in clients for pub in missing(c, publisher.acked[since:], False)}
        events = [
            [e for e in c.events if e["type"] == "welcome" or e.get("room") in rooms][:8]
            for c in clients
            if missing(c, publisher.acked[since:], False)
        ]
        raise AssertionError(f"not delivered: {report}\n{events}") from None


def stop_all(clients: list[Client], *procs: ServerProcess) -> None:
    for client in clients:
        client.stop()
        assert not client.errors, client.errors


# -- 1. every topology carries per-room streams ----------------------------------------


@pytest.mark.parametrize("kind", ["single", "shards", "cluster"])
def test_rooms_on_every_topology(kind, request, processes):
    topology = request.getfixturevalue(kind)
    rooms = [f"t1-{kind}-{i}" for i in range(ROOMS)]
    a, b = processes(topology), processes(topology)
    clients = start_clients([a, b], rooms)
    publisher = Publisher([a.port, b.port], [None, *rooms])
    try:
        for i in range(5 * (ROOMS + 1)):
            publisher.send(i)
        assert len(publisher.acked) == 5 * (ROOMS + 1), (publisher.refused, publisher.failed)
        wait_delivered(clients, publisher)
        for client in clients:
            received, lost = client.check()
            assert not lost, lost
            mine = {None, *client.rooms}
            assert received == {p for p in publisher.acked if p[0] in mine}
            assert len(client.pubs) == len(received)  # each once
        one_text_per_position(clients, publisher.acked)
    finally:
        stop_all(clients)

    engine = Engine  # its key() is static
    if kind == "shards":
        on = {0: 0, 1: 0}
        for room in rooms:
            index = shard_index(room, 2)
            on[index] += 1
            for suffix in ("meta", "stream"):
                key = engine.key(room, suffix)
                assert ask(topology.ports[index], "EXISTS", key) == 1, (room, key)
                assert ask(topology.ports[1 - index], "EXISTS", key) == 0, (room, key)
        assert min(on.values()) > 0, on
    elif kind == "cluster":
        masters = set()
        for room in rooms:
            for suffix in ("meta", "stream"):
                key = engine.key(room, suffix)
                master = topology.master_for_key(key)
                masters.add(master)
                assert ask(master, "EXISTS", key) == 1, (room, key)
        assert len(masters) == 3, masters
    else:
        for room in rooms:
            assert ask(topology.ports[0], "EXISTS", engine.key(room, "stream")) == 1


# -- 2. kill -9 ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["shards", "cluster", "sentinel"])
def test_kill_9(kind, request, processes):
    topology = request.getfixturevalue(kind)
    rooms = [f"t2-{kind}-{i}" for i in range(ROOMS)]
    engine = Engine  # its key() is static
    a, b = processes(topology), processes(topology)
    clients = start_clients([a, b], rooms)
    publisher = Publisher([a.port, b.port], [None, *rooms])
    publisher.start()
    try:
        wait_until(lambda: publisher.acked_rooms() == {None, *rooms}, 20, "a pub per room")
        if kind == "shards":
            victims = {r for r in rooms if shard_index(r, 2) == 0}
            assert shard_index("simplew:all", 2) == 1  # the broadcast stream lives on
            topology.kill(0)
            time.sleep(3)  # down for a while
            topology.restart(0)  # empty
        elif kind == "cluster":
            port = topology.master_for_key(engine.key(rooms[0], "meta"))
            victims = {r for r in rooms if topology.master_for_key(engine.key(r, "meta")) == port}
            if topology.master_for_key(engine.key(None, "meta")) == port:
                victims.add(None)
            topology.kill_master(port)
        else:
            victims = {None, *rooms}
            topology.kill_master()
            wait_until(
                lambda: topology.master_address() == topology.replica_port, 30, "a promotion"
            )
        # back: publications are acknowledged again in every room
        mark = len(publisher.acked)
        wait_until(
            lambda: publisher.acked_rooms(mark) == {None, *rooms}, 40, "every room acknowledged"
        )
        since = len(publisher.acked)
        time.sleep(1.5)
    finally:
        publisher.stop()
    try:
        wait_delivered(clients, publisher, since)
        for client in clients:
            _received, lost = client.check()
            assert lost <= victims, (lost, victims)
            if kind == "shards":  # the restarted shard is empty: every stream on it is lost
                assert lost == victims & set(client.rooms), (lost, client.rooms)
        one_text_per_position(clients, publisher.acked)
    finally:
        stop_all(clients)


# -- 3. containment ------------------------------------------------------------------


def test_one_dead_shard_does_not_stop_the_others(shards, processes):
    rooms = [f"t3-{i}" for i in range(ROOMS)]
    dead = [r for r in rooms if shard_index(r, 2) == 0]
    alive = [None, *(r for r in rooms if shard_index(r, 2) == 1)]
    assert dead and len(alive) > 1 and shard_index("simplew:all", 2) == 1
    a, b = processes(shards), processes(shards)
    clients = start_clients([a, b], rooms)
    # two publishers: one that publishes to the dead shard may wait for it
    flowing = Publisher([a.port, b.port], alive, 100)
    waiting = Publisher([a.port, b.port], dead, 50)
    probe = Publisher([a.port, b.port], dead)
    probe.timeout = 2.0
    flowing.start()
    waiting.start()
    try:
        wait_until(lambda: flowing.acked_rooms() == set(alive), 20, "a pub per alive room")
        wait_until(lambda: waiting.acked_rooms() == set(dead), 20, "a pub per dead room")
        shards.kill(0)

        def refused() -> bool:
            for i, room in enumerate(dead):
                if not probe.refused.get(room):
                    probe.conns.clear()  # a fresh connection: one may wait on
                    probe.send(i)
            return all(probe.refused.get(room) for room in dead)

        wait_until(refused, 20, "503 for every room of the dead shard", interval=0.2)
        mark = len(flowing.acked)
        time.sleep(2)
        # while shard 0 is down: the other rooms are acknowledged and delivered
        during = flowing.acked[mark:]
        assert {pub[0] for pub in during} == set(alive), during[-5:]
        wait_until(
            lambda: all(not missing(c, during, False) for c in clients),
            20,
            "delivery while a shard is down",
            interval=0.2,
        )
        shards.restart(0)
        mark = len(waiting.acked)
        wait_until(lambda: waiting.acked_rooms(mark) == set(dead), 30, "the dead rooms back")
        since = (len(flowing.acked), len(waiting.acked))
        time.sleep(1)
    finally:
        flowing.stop()
        waiting.stop()
    try:
        for publisher, first in zip((flowing, waiting), since):
            wait_delivered(clients, publisher, first)
        for client in clients:
            assert client.check()[1] == set(dead) & set(client.rooms)
        one_text_per_position(clients, flowing.acked + waiting.acked + probe.acked)
    finally:
        stop_all(clients)


# -- 4. interest ---------------------------------------------------------------------


def test_a_process_receives_only_the_rooms_it_has_clients_in(single, processes):
    a, b = processes(single), processes(single)
    hot = Client(a.url, ["hot"]).open()
    cold = [Client(b.url, ["b-1"]).open(), Client(b.url, ["b-2"]).open()]
    clients = [hot, *cold]
    wait_until(lambda: metrics(b.port)["simplew_streams_followed"] == 3, 10, "B follows 3")
    assert metrics(a.port)["simplew_streams_followed"] == 2
    before_a = metrics(a.port)["simplew_stream_received_total"]
    before_b = metrics(b.port)["simplew_stream_received_total"]
    publisher = Publisher([a.port], ["hot"])
    others = Publisher([a.port], [None, "b-1", "b-2"])
    try:
        for i in range(2000):
            publisher.send(i)
        for i in range(30):
            others.send(i)
        assert len(publisher.acked) == 2000 and len(others.acked) == 30
        wait_delivered([hot], publisher)
        wait_delivered(cold, others)
        wait_until(
            lambda: metrics(a.port)["simplew_stream_received_total"] >= before_a + 2010,
            10,
            "A received hot",
        )
        grown = metrics(b.port)["simplew_stream_received_total"] - before_b
        assert 0 < grown <= 30, grown  # the broadcast stream and B's rooms only
        assert metrics(b.port)["simplew_streams_followed"] == 3
        cold[1].stop()  # the last client of b-2 on B
        wait_until(lambda: metrics(b.port)["simplew_streams_followed"] == 2, 20, "b-2 given up")
        for client in clients:
            assert not client.check()[1]
    finally:
        stop_all(clients)
