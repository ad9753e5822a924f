"""simplew._fast.streams: every stream's position and history, checked against a
pure-Python model of the same rules."""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections import OrderedDict, deque

import pytest

from simplew._fast.streams import Streams

INF = float("inf")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def filled(streams: Streams, room: str | None, n: int, size: int = 1) -> str:
    """Publish ``n`` messages of ``size`` bytes to ``room``; its epoch."""
    for _ in range(n):
        epoch, offset = streams.next(room)
        streams.append(room, epoch, offset, bytes([offset % 256]) * size)
    return streams.position(room)[0]


# ---------------------------------------------------------------- positions ---


def test_an_unknown_stream_starts_in_a_fresh_epoch_at_zero():
    s = Streams(10, 1000, INF)
    epoch, top = s.position("lobby")
    assert top == 0 and len(epoch) == 12
    assert epoch.replace("-", "").replace("_", "").isalnum()
    assert s.position(None)[0] != epoch  # one epoch per stream
    assert s.next("lobby") == (epoch, 1)
    assert s.position("lobby") == (epoch, 0)  # next stores nothing
    assert len(s) == 2 and "lobby" in s and None in s and "other" not in s


def test_append_moves_top_and_since_replays_from_any_held_offset():
    s = Streams(10, 1000, INF)
    epoch = filled(s, "a", 4)
    assert s.position("a") == (epoch, 4)
    assert s.since("a", epoch, 0) == [b"\x01", b"\x02", b"\x03", b"\x04"]
    assert s.since("a", epoch, 2) == [b"\x03", b"\x04"]
    assert s.since("a", epoch, 4) == []
    assert s.held("a") == 4 and s.entries == 4 and s.bytes == 4


def test_the_broadcast_stream_and_rooms_are_separate():
    s = Streams(10, 1000, INF)
    e_all = filled(s, None, 3)
    e_room = filled(s, "r", 1)
    assert s.position(None) == (e_all, 3) and s.position("r") == (e_room, 1)
    assert s.since(None, e_all, 1) == [b"\x02", b"\x03"]
    assert s.since("r", e_room, 0) == [b"\x01"]
    assert s.since("r", e_all, 0) is None


def test_an_append_that_does_not_follow_raises():
    s = Streams(10, 1000, INF)
    epoch = filled(s, "a", 2)
    with pytest.raises(ValueError):
        s.append("a", epoch, 4, b"gap")
    with pytest.raises(ValueError):
        s.append("a", epoch, 2, b"again")
    with pytest.raises(ValueError):
        s.append("a", "another-epoch", 3, b"other epoch")
    with pytest.raises(ValueError):
        s.append("new", epoch, 0, b"offset 0")
    assert "new" not in s
    assert s.position("a") == (epoch, 2) and s.since("a", epoch, 0) == [b"\x01", b"\x02"]
    s.append("a", epoch, 3, b"x")
    assert s.position("a") == (epoch, 3)


def test_a_stream_unknown_to_append_is_created_before_the_offset():
    s = Streams(10, 1000, INF)
    s.append("mirror", "Zk2mQ0aa9Hx1", 42, b"m42")
    assert s.position("mirror") == ("Zk2mQ0aa9Hx1", 42)
    assert s.since("mirror", "Zk2mQ0aa9Hx1", 41) == [b"m42"]
    assert s.since("mirror", "Zk2mQ0aa9Hx1", 40) is None


def test_append_and_since_across_epochs():
    s = Streams(10, 1000, INF)
    old = filled(s, "a", 3)
    s.restart("a", "NewEpoch0001", 0)
    assert s.position("a") == ("NewEpoch0001", 0) and s.held("a") == 0
    assert s.since("a", old, 3) is None and s.since("a", old, 0) is None
    assert s.bytes == 0 and s.entries == 0
    s.append("a", "NewEpoch0001", 1, b"n1")
    s.append("a", "NewEpoch0001", 2, b"n2")
    assert s.since("a", "NewEpoch0001", 0) == [b"n1", b"n2"]
    with pytest.raises(ValueError):
        s.append("a", old, 4, b"the old epoch goes on")


def test_wrong_types_are_refused():
    s = Streams(10, 1000, INF)
    with pytest.raises(TypeError):
        s.position(b"bytes room")
    with pytest.raises(TypeError):
        s.position(3)
    assert len(s) == 0
    epoch = s.position("a")[0]
    with pytest.raises(TypeError):
        s.append("a", epoch, 1, "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.append("a", epoch, 1, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.append("a", None, 1, b"x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "args",
    [(-1, 10, 1.0), (1, -1, 1.0), (1, 1, 0.0), (1, 1, -5.0), (1, 1, float("nan")), (1, 1, 1.0, 0)],
)
def test_bad_bounds_are_refused(args):
    with pytest.raises(ValueError):
        Streams(*args)


def test_bounds_are_readable():
    s = Streams(5, 100, 30.0, max_streams=7)
    assert (s.history_size, s.history_bytes, s.history_ttl, s.max_streams) == (5, 100, 30.0, 7)
    assert Streams(5, 100, 30.0).max_streams == 1_000_000


# ------------------------------------------------------- since() gives None ---


def test_since_is_none_for_an_unknown_stream_and_does_not_create_it():
    s = Streams(10, 1000, INF)
    assert s.since("nowhere", "p7Cq0tT1Gv4x", 0) is None
    assert s.since(None, "p7Cq0tT1Gv4x", 0) is None
    assert len(s) == 0 and s.held("nowhere") == 0


def test_since_is_none_for_another_epoch():
    s = Streams(10, 1000, INF)
    epoch = filled(s, "a", 2)
    assert s.since("a", epoch + "x", 2) is None
    assert s.since("a", "p7Cq0tT1Gv4x", 0) is None


def test_since_is_none_beyond_top_and_below_zero():
    s = Streams(10, 1000, INF)
    epoch = filled(s, "a", 2)
    assert s.since("a", epoch, 3) is None
    assert s.since("a", epoch, -1) is None


def test_since_is_none_when_the_count_bound_dropped_the_entries():
    s = Streams(3, 1000, INF)
    epoch = filled(s, "a", 5)
    assert s.held("a") == 3
    assert s.since("a", epoch, 2) == [b"\x03", b"\x04", b"\x05"]
    assert s.since("a", epoch, 1) is None
    assert s.entries == 3 and s.bytes == 3


def test_since_is_none_when_the_byte_budget_dropped_the_entries():
    s = Streams(100, 10, INF)
    epoch = filled(s, "a", 4, size=3)  # 12 bytes: the first goes
    assert s.bytes == 9 and s.held("a") == 3
    assert s.since("a", epoch, 0) is None
    assert s.since("a", epoch, 1) == [b"\x02" * 3, b"\x03" * 3, b"\x04" * 3]


def test_since_is_none_once_the_ttl_passed():
    clock = FakeClock()
    s = Streams(100, 1000, 10.0, clock=clock)
    epoch = filled(s, "a", 1)
    clock.now += 5
    filled(s, "a", 1)
    assert s.since("a", epoch, 0) == [b"\x01", b"\x02"]
    clock.now += 5  # the first is 10 s old: gone; the second 5 s
    assert s.since("a", epoch, 0) is None
    assert s.since("a", epoch, 1) == [b"\x02"]
    assert s.since("a", epoch, 2) == []
    clock.now += 5
    assert s.since("a", epoch, 1) is None
    assert s.since("a", epoch, 2) == []  # nothing to replay: the position still holds
    assert s.held("a") == 2  # no sweep yet
    s.expire()
    assert s.held("a") == 0 and s.bytes == 0 and s.entries == 0
    assert s.position("a") == (epoch, 2)


def test_the_ttl_drops_the_head_at_the_next_append():
    clock = FakeClock()
    s = Streams(100, 1000, 10.0, clock=clock)
    filled(s, "a", 3)
    clock.now += 10
    epoch = filled(s, "a", 1)
    assert s.held("a") == 1 and s.entries == 1
    assert s.since("a", epoch, 3) == [b"\x04"]


def test_an_infinite_ttl_never_expires():
    clock = FakeClock()
    s = Streams(100, 1000, INF, clock=clock)
    epoch = filled(s, "a", 2)
    clock.now += 1e12
    s.expire()
    assert s.since("a", epoch, 0) == [b"\x01", b"\x02"]


def test_a_message_larger_than_the_budget_is_not_kept_and_ends_the_replay():
    s = Streams(100, 10, INF)
    epoch = filled(s, "a", 2, size=2)
    other = filled(s, "b", 1, size=2)
    s.append("a", epoch, 3, b"x" * 11)
    assert s.position("a") == (epoch, 3) and s.held("a") == 0
    assert s.since("a", epoch, 2) is None and s.since("a", epoch, 3) == []
    assert s.since("b", other, 0) == [b"\x01\x01"]
    assert s.bytes == 2 and s.entries == 1
    s.append("a", epoch, 4, b"y")
    assert s.since("a", epoch, 3) == [b"y"]


def test_history_size_zero_keeps_positions_only():
    s = Streams(0, 1000, INF)
    epoch = filled(s, "a", 3)
    assert s.position("a") == (epoch, 3) and s.entries == 0
    assert s.since("a", epoch, 3) == [] and s.since("a", epoch, 2) is None


# ------------------------------------------------------------- the budgets ---


def test_the_byte_budget_drops_the_least_recently_used_stream_first():
    s = Streams(100, 12, INF)
    ea = filled(s, "a", 2, size=3)
    eb = filled(s, "b", 2, size=3)
    ec = filled(s, "c", 1, size=3)  # 15 > 12: a, the least recently used, loses its oldest
    assert s.since("a", ea, 0) is None and s.since("a", ea, 1) == [b"\x02" * 3]
    assert s.held("b") == 2 and s.held("c") == 1 and s.bytes == 12
    filled(s, "a", 1, size=3)  # a is the most recently used now: b loses its oldest
    assert s.since("b", eb, 0) is None and s.since("b", eb, 1) == [b"\x02" * 3]
    assert s.since("a", ea, 1) == [b"\x02" * 3, b"\x03" * 3]
    filled(s, "c", 1, size=3)  # b's last entry goes; b keeps its record
    assert s.held("b") == 0 and "b" in s and s.position("b") == (eb, 2)
    assert s.since("b", eb, 2) == [] and s.since("b", eb, 1) is None
    filled(s, "c", 1, size=3)  # b holds nothing: a, the next one, loses its oldest
    assert s.since("a", ea, 1) is None and s.since("a", ea, 2) == [b"\x03" * 3]
    assert s.since("c", ec, 0) == [b"\x01" * 3, b"\x02" * 3, b"\x03" * 3]
    assert s.bytes == 12 and s.entries == 4 and len(s) == 3


def test_the_byte_budget_drops_a_streams_own_oldest_when_it_is_alone():
    s = Streams(100, 5, INF)
    epoch = filled(s, "a", 3, size=2)
    assert s.since("a", epoch, 1) == [b"\x02\x02", b"\x03\x03"] and s.bytes == 4


def test_max_streams_drops_the_least_recently_used_record_and_calls_on_drop():
    dropped: list[str | None] = []
    s = Streams(10, 1000, INF, max_streams=3, on_drop=dropped.append)
    filled(s, "a", 1)
    filled(s, None, 1)
    filled(s, "c", 1)
    filled(s, "a", 1)  # order: None, c, a
    s.position("d")
    assert dropped == [None] and None not in s and len(s) == 3
    s.restart("c", "Restarted001", 9)  # order: a, d, c
    s.position("e")
    s.since("d", "whatever", 0)  # reads do not count as use
    s.position("f")
    assert dropped == [None, "a", "d"]
    assert all(room in s for room in ["c", "e", "f"]) and len(s) == 3
    assert s.entries == 0 and s.bytes == 0  # a and None dropped, c restarted: nothing held


def test_max_streams_on_append_of_an_unknown_stream():
    dropped: list[str | None] = []
    s = Streams(10, 1000, INF, max_streams=2, on_drop=dropped.append)
    filled(s, "a", 2)
    filled(s, "b", 2)
    s.append("c", "Mirrored0001", 5, b"five")
    assert dropped == ["a"] and s.entries == 3 and s.bytes == 2 + 4
    assert s.since("c", "Mirrored0001", 4) == [b"five"]


def test_on_drop_is_called_once_the_state_is_whole_and_may_use_the_streams():
    seen: list = []
    s: Streams

    def on_drop(room):
        seen.append((room, room in s, "c" in s, len(s), s.entries))
        if room == "a":
            s.forget("c")  # the record being made
            s.position("a")  # back: b goes in turn

    s = Streams(10, 1000, INF, max_streams=2, on_drop=on_drop)
    filled(s, "a", 2)
    filled(s, "b", 1)
    s.append("c", "Mirrored0001", 1, b"c")
    assert seen == [("a", False, True, 2, 2)]
    assert len(s) == 2 and "a" in s and "b" in s and s.entries == 1 and s.bytes == 1
    filled(s, "d", 3)  # b, then a, are the least recently used
    assert seen[1:] == [("b", False, False, 2, 0)]
    assert s.entries == 3 and s.bytes == 3 and "a" in s


def test_restart_creates_and_empties():
    s = Streams(10, 1000, INF)
    s.restart("a", "Restarted001", 7)
    assert s.position("a") == ("Restarted001", 7) and s.since("a", "Restarted001", 7) == []
    s.append("a", "Restarted001", 8, b"8")
    assert s.since("a", "Restarted001", 7) == [b"8"]
    with pytest.raises(ValueError):
        s.restart("a", "Restarted002", -1)


def test_forget_drops_the_record_without_on_drop():
    dropped: list[str | None] = []
    s = Streams(10, 1000, INF, on_drop=dropped.append)
    epoch = filled(s, "a", 3)
    filled(s, "b", 1)
    s.forget("a")
    s.forget("never-seen")
    assert "a" not in s and len(s) == 1 and dropped == []
    assert s.entries == 1 and s.bytes == 1
    assert s.since("a", epoch, 3) is None
    assert s.position("a")[0] != epoch  # known again: a fresh epoch


def test_expire_sweeps_every_stream():
    clock = FakeClock()
    s = Streams(100, 1000, 10.0, clock=clock)
    for room in ["a", "b", "c"]:
        filled(s, room, 2)
    clock.now += 6
    filled(s, "b", 1)
    clock.now += 4
    s.expire()
    assert [s.held(r) for r in ["a", "b", "c"]] == [0, 1, 0]
    assert s.entries == 1 and s.bytes == 1 and len(s) == 3


def test_the_ring_grows_and_shrinks():
    s = Streams(1000, 10**9, INF)
    epoch = filled(s, "a", 1000)
    assert s.since("a", epoch, 0) == [bytes([i % 256]) for i in range(1, 1001)]
    filled(s, "a", 500)  # wraps around
    assert s.since("a", epoch, 500) == [bytes([i % 256]) for i in range(501, 1501)]
    # a budget forces the stream down to a few entries, the ring shrinking under them
    small = Streams(1000, 4, INF)
    e = filled(small, "a", 1000)
    assert small.since("a", e, 996) == [bytes([i % 256]) for i in range(997, 1001)]


# ------------------------------------------------------- against the model ---


class Model:
    """The rules of Streams, written plainly."""

    def __init__(self, size, budget, ttl, max_streams, clock):
        self.size, self.budget, self.ttl, self.max_streams = size, budget, ttl, max_streams
        self.clock = clock
        self.streams: OrderedDict = OrderedDict()  # room -> [epoch, top, deque[(msg, t)]]
        self.dropped: list = []
        self.bytes = 0  # checked against a recount by check()

    def create(self, room, epoch, top):
        self.streams[room] = [epoch, top, deque()]
        while len(self.streams) > self.max_streams:
            oldest, st = self.streams.popitem(last=False)
            self.empty(st)
            self.dropped.append(oldest)

    def empty(self, st):
        self.bytes -= sum(len(m) for m, _ in st[2])
        st[2].clear()

    def drop_oldest(self, st):
        self.bytes -= len(st[2].popleft()[0])

    def drop_expired(self, st, now):
        while st[2] and now - st[2][0][1] >= self.ttl:
            self.drop_oldest(st)

    def append(self, room, epoch, offset, msg):
        if room not in self.streams:
            self.create(room, epoch, offset - 1)
        st = self.streams[room]
        assert st[0] == epoch and st[1] + 1 == offset
        self.streams.move_to_end(room)
        st[1] = offset
        if self.size == 0 or len(msg) > self.budget:
            self.empty(st)
            return
        now = self.clock()
        self.drop_expired(st, now)
        if len(st[2]) == self.size:
            self.drop_oldest(st)
        st[2].append((msg, now))
        self.bytes += len(msg)
        while self.bytes > self.budget:
            self.drop_oldest(next(s for s in self.streams.values() if s[2]))

    def restart(self, room, epoch, top):
        if room not in self.streams:
            self.create(room, epoch, top)
        else:
            st = self.streams[room]
            self.empty(st)
            st[0], st[1] = epoch, top
            self.streams.move_to_end(room)

    def forget(self, room):
        if room in self.streams:
            self.empty(self.streams.pop(room))

    def expire(self):
        now = self.clock()
        for st in self.streams.values():
            self.drop_expired(st, now)


def test_randomized_against_the_model():
    rnd = random.Random(20260509)
    clock = FakeClock()
    dropped: list = []
    s = Streams(8, 6000, 50.0, max_streams=1500, clock=clock, on_drop=dropped.append)
    model = Model(8, 6000, 50.0, 1500, clock)
    rooms = [None] + [f"room-{i}" for i in range(1999)]
    hot = rooms[:50]
    for step in range(30_000):
        room = rnd.choice(hot) if rnd.random() < 0.5 else rnd.choice(rooms)
        r = rnd.random()
        if r < 0.9:
            if room in model.streams:
                epoch, offset = s.next(room)
                assert (epoch, offset) == (model.streams[room][0], model.streams[room][1] + 1)
            else:
                epoch, offset = f"E{step:011d}", rnd.randrange(1, 10**6)
            msg = rnd.randbytes(rnd.choice([0, 1, 10, 100, 500, 7000]))
            s.append(room, epoch, offset, msg)
            model.append(room, epoch, offset, msg)
        elif r < 0.95:
            epoch, top = f"R{step:011d}", rnd.randrange(0, 100)
            s.restart(room, epoch, top)
            model.restart(room, epoch, top)
        elif r < 0.97:
            s.forget(room)
            model.forget(room)
        else:
            clock.now += rnd.random() * 5
        if step % 3000 == 0 or step == 29_999:
            s.expire()
            model.expire()
            check(s, model)
        assert dropped == model.dropped
    assert model.dropped and 0 < s.bytes <= 6000


def check(s: Streams, model: Model) -> None:
    assert len(s) == len(model.streams)
    total = entries = 0
    for room, (epoch, top, held) in model.streams.items():
        assert s.position(room) == (epoch, top)
        assert s.held(room) == len(held)
        got = s.since(room, epoch, top - len(held))
        assert got == [m for m, _ in held]
        if len(held) < top:
            assert s.since(room, epoch, top - len(held) - 1) is None
        total += sum(map(len, got))
        entries += len(got)
    assert (s.bytes, s.entries) == (total, entries)
    assert model.bytes == total


# ------------------------------------------------------------------ memory ---


def measure(n: int, history_size: int, history_bytes: int) -> tuple[float, Streams]:
    """Bytes per record of ``n`` streams after one small message each."""
    rooms = [f"room-{i:06d}" for i in range(n)]
    message = b"x" * 20
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        s = Streams(history_size, history_bytes, 300.0)
        for room in rooms:
            epoch, offset = s.next(room)
            s.append(room, epoch, offset, message)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(s) == n
    return used / n, s


def test_an_idle_record_costs_little():
    # the budget holds 100 messages: the other 99,900 streams are records only
    per_record, s = measure(100_000, 10, 100 * 20)
    assert s.entries == 100
    print(f"\n{per_record:.0f} bytes per idle stream record")
    assert per_record < 300


def test_rings_are_not_preallocated():
    # a history_size of 10,000 must not cost 10,000 slots per stream
    per_record, s = measure(20_000, 10_000, 10**9)
    assert s.entries == 20_000
    print(f"\n{per_record:.0f} bytes per stream holding one entry")
    assert per_record < 400
