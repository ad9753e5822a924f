# cython: language_level=3
"""Every stream's position and recent history, in memory.

A stream is named by its room: a ``str``, or ``None`` for the broadcast
stream. Its position is ``(epoch, top)``: the epoch it is in and the offset
of its last publication (0 before the first one). :class:`Streams` keeps one
record per stream (:class:`Stream`) and, in each, the last publications as
their encoded messages, so that a client coming back from ``(epoch, offset)``
is sent stored bytes (:meth:`Streams.since`).

Bounds, all kept by :meth:`Streams.append`:

- ``history_size`` entries per stream, the oldest dropped first;
- ``history_ttl`` seconds: an older entry is no longer recoverable (dropped
  from the head at the stream's next append, or by :meth:`Streams.expire`);
- ``history_bytes`` of messages over all streams: while over, the oldest entry
  of the least recently used stream that holds any goes. Its record (epoch and
  top) stays, so a client that comes back learns that it missed publications;
- ``max_streams`` records: past it, the least recently used record is dropped
  whole and ``on_drop(room)`` is called.

The held entries of a stream are always the offsets ``top - count + 1`` to
``top``: an entry that cannot be stored (a message larger than the whole byte
budget) takes the older ones with it, as they could no longer be replayed up
to ``top``. Each ring grows on demand (doubling up to ``history_size``),
shrinks as it empties and is freed when it holds nothing: an idle record is
one small object.

The two use orders (every record; the records holding entries, a subsequence
of the first) are doubly linked lists threaded through the records, with
borrowed pointers: the dict room -> Stream owns the records, and a record
leaves both lists before it leaves the dict.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject

import secrets
import time

from libc.math cimport isfinite, isnan


cdef extern from "Python.h":
    void _incref "Py_INCREF"(PyObject *o)
    void _decref "Py_XDECREF"(PyObject *o)
    Py_ssize_t _size "PyBytes_GET_SIZE"(PyObject *o)


cdef extern from *:
    """
    /* time.monotonic() without a call through Python: the same clock, read in C */
    static double simplew_streams_monotonic(void) {
    #if PY_VERSION_HEX >= 0x030D0000
        PyTime_t t;
        if (PyTime_Monotonic(&t) < 0) {
            return -1.0;
        }
        return PyTime_AsSecondsDouble(t);
    #else
        return _PyTime_AsSecondsDouble(_PyTime_GetMonotonicClock());
    #endif
    }
    """
    double _monotonic "simplew_streams_monotonic"() except? -1.0


cdef object _token = secrets.token_urlsafe


cdef inline str _new_epoch():
    return _token(9)


cdef int _resize(Stream stream, Py_ssize_t capacity) except -1:
    """Move the entries held to a ring of ``capacity`` slots (>= count, > 0),
    the oldest in slot 0."""
    cdef Entry *ring = <Entry *>PyMem_Malloc(capacity * sizeof(Entry))
    cdef Py_ssize_t i, slot = stream._head
    if ring is NULL:
        raise MemoryError()
    for i in range(stream.count):
        ring[i] = stream._ring[slot]
        slot += 1
        if slot == stream._capacity:
            slot = 0
    PyMem_Free(stream._ring)
    stream._ring = ring
    stream._head = 0
    stream._capacity = capacity
    return 0


cdef void _release(Stream stream) noexcept:
    """Drop every entry and free the ring (the totals of Streams are the
    caller's)."""
    cdef Py_ssize_t _i, slot = stream._head
    for _i in range(stream.count):
        _decref(stream._ring[slot].message)
        slot += 1
        if slot == stream._capacity:
            slot = 0
    PyMem_Free(stream._ring)
    stream._ring = NULL
    stream._head = 0
    stream._capacity = 0
    stream.count = 0
    stream.bytes = 0


@cython.final
@cython.no_gc
@cython.auto_pickle(False)
cdef class Stream:
    """The record of one stream: its position and the entries it holds.

    Made by :class:`Streams` only. It refers to str objects and to bytes it
    owns through C pointers, never to a container: it takes no part in the
    garbage collector.
    """

    def __dealloc__(self):
        _release(self)

    def __repr__(self):
        return (
            f"<Stream {self.room!r} {self.epoch} top={self.top} "
            f"count={self.count} bytes={self.bytes}>"
        )


@cython.final
@cython.no_gc_clear
@cython.auto_pickle(False)
cdef class Streams:
    """The position and recent history of every stream of a process."""

    def __init__(
        self,
        Py_ssize_t history_size,
        Py_ssize_t history_bytes,
        double history_ttl,
        Py_ssize_t max_streams=1_000_000,
        object clock=None,
        object on_drop=None,
    ):
        if history_size < 0 or history_bytes < 0:
            raise ValueError("history_size and history_bytes must be >= 0")
        if isnan(history_ttl) or history_ttl <= 0:
            raise ValueError("history_ttl must be > 0")
        if max_streams < 1:
            raise ValueError("max_streams must be >= 1")
        if clock is not None and not callable(clock):
            raise TypeError("clock must be callable")
        if on_drop is not None and not callable(on_drop):
            raise TypeError("on_drop must be callable")
        if self._streams is not None:
            raise RuntimeError("Streams is already initialised")
        self.history_size = history_size
        self.history_bytes = history_bytes
        self.history_ttl = history_ttl
        self.max_streams = max_streams
        self._timed = isfinite(history_ttl)
        self._clock = time.monotonic if clock is None else clock
        self._monotonic = clock is None
        self._on_drop = on_drop
        self._streams = {}

    # ------------------------------------------------------------ positions ---

    cpdef tuple position(self, object room):
        """``(epoch, top)`` of the stream now; an unknown stream is created in a
        fresh epoch at 0."""
        cdef object found = self._streams.get(room)
        cdef Stream stream
        if found is None:
            stream = self._create(room, _new_epoch(), 0)
            if self._dropped is not None:
                self._report_drops()
        else:
            stream = <Stream>found
        return (stream.epoch, stream.top)

    cpdef tuple next(self, object room):
        """``(epoch, offset)`` of this process's next publication to the stream
        (stores nothing: :meth:`append` it)."""
        cdef object found = self._streams.get(room)
        cdef Stream stream
        if found is None:
            stream = self._create(room, _new_epoch(), 0)
            if self._dropped is not None:
                self._report_drops()
        else:
            stream = <Stream>found
        return (stream.epoch, stream.top + 1)

    # --------------------------------------------------------------- append ---

    cpdef int append(
        self, object room, str epoch, long long offset, bytes message
    ) except -1:
        """Store publication ``(epoch, offset)`` of the stream, whose encoded
        message is ``message``: it must be the stream's epoch and ``top + 1``
        (ValueError otherwise). An unknown stream is created at
        ``(epoch, offset - 1)``."""
        cdef object found
        cdef Stream stream
        cdef Py_ssize_t size, slot, capacity
        cdef double now = 0.0
        cdef Entry *entry
        cdef bint created = False
        if epoch is None or message is None:
            raise TypeError("epoch must be a str and message bytes")
        found = self._streams.get(room)
        if found is None:
            if offset < 1:
                raise ValueError(f"offset {offset} is not >= 1")
            stream = self._create(room, epoch, offset - 1)
            created = True
        else:
            stream = <Stream>found
            if offset != stream.top + 1 or (
                stream.epoch is not epoch and stream.epoch != epoch
            ):
                raise ValueError(
                    f"({epoch}, {offset}) does not follow ({stream.epoch}, {stream.top})"
                    f" in stream {room!r}"
                )
            self._use(stream)
        stream.top = offset
        size = len(message)
        if self.history_size == 0 or size > self.history_bytes:
            # not kept, and the entries before it could not be replayed up to top
            if stream.count:
                self._clear(stream)
            if created and self._dropped is not None:
                self._report_drops()
            return 0
        if self._timed:
            now = self._now()
            if stream.count:
                self._expire(stream, now)
        if stream.count == self.history_size:
            # full: the new entry takes the oldest one's slot
            entry = &stream._ring[stream._head]
            self.bytes -= _size(entry.message)
            stream.bytes -= _size(entry.message)
            _decref(entry.message)
            stream._head += 1
            if stream._head == stream._capacity:
                stream._head = 0
            self.entries -= 1
            stream.count -= 1
        elif stream.count == stream._capacity:
            capacity = 2 * stream._capacity if stream._capacity else 1
            _resize(stream, capacity if capacity < self.history_size else self.history_size)
        slot = stream._head + stream.count
        if slot >= stream._capacity:
            slot -= stream._capacity
        entry = &stream._ring[slot]
        _incref(<PyObject *>message)
        entry.message = <PyObject *>message
        entry.time = now
        stream.count += 1
        stream.bytes += size
        self.entries += 1
        self.bytes += size
        self._hold(stream)
        while self.bytes > self.history_bytes:
            self._drop_oldest(<Stream>self._oldest_held)
        if created and self._dropped is not None:
            self._report_drops()
        return 0

    # ----------------------------------------------------------------- read ---

    cpdef list since(self, object room, str epoch, long long offset):
        """The stored messages after ``offset``, oldest first, when the stream
        continues from ``(epoch, offset)`` with all of them held and younger
        than ``history_ttl``; ``[]`` at ``top``; else None (unknown streams
        included: they are not created)."""
        cdef object found = self._streams.get(room)
        cdef Stream stream
        cdef Py_ssize_t i, n, slot
        cdef list out
        if found is None:
            return None
        stream = <Stream>found
        if epoch is None or (stream.epoch is not epoch and stream.epoch != epoch):
            return None
        if offset > stream.top or offset < stream.top - stream.count:
            return None
        n = <Py_ssize_t>(stream.top - offset)
        if n == 0:
            return []
        slot = stream._head + (stream.count - n)
        if slot >= stream._capacity:
            slot -= stream._capacity
        if self._timed and self._now() - stream._ring[slot].time >= self.history_ttl:
            return None
        out = [None] * n
        for i in range(n):
            out[i] = <object>stream._ring[slot].message
            slot += 1
            if slot == stream._capacity:
                slot = 0
        return out

    def held(self, object room):
        """Entries held for the stream (0 for an unknown one)."""
        cdef object found = self._streams.get(room)
        return 0 if found is None else (<Stream>found).count

    def __contains__(self, object room):
        return room in self._streams

    def __len__(self):
        return len(self._streams)

    # -------------------------------------------------------------- changes ---

    cpdef int restart(self, object room, str epoch, long long top) except -1:
        """The stream continues at ``(epoch, top)`` holding nothing."""
        cdef object found
        cdef Stream stream
        if epoch is None:
            raise TypeError("epoch must be a str")
        if top < 0:
            raise ValueError(f"top {top} is not >= 0")
        found = self._streams.get(room)
        if found is None:
            self._create(room, epoch, top)
            if self._dropped is not None:
                self._report_drops()
            return 0
        stream = <Stream>found
        if stream.count:
            self._clear(stream)
        stream.epoch = epoch
        stream.top = top
        self._use(stream)
        return 0

    cpdef int forget(self, object room) except -1:
        """Drop the stream's record (on_drop is not called)."""
        cdef object found = self._streams.get(room)
        cdef Stream stream
        if found is None:
            return 0
        stream = <Stream>found
        if stream.count:
            self._clear(stream)
        self._unlink(stream)
        del self._streams[room]
        return 0

    cpdef int expire(self) except -1:
        """Drop the entries older than ``history_ttl`` in every stream."""
        cdef PyObject *p
        cdef PyObject *following
        cdef double now
        if not self._timed:
            return 0
        now = self._now()
        p = self._oldest_held
        while p is not NULL:
            following = (<Stream>p)._newer_held
            self._expire(<Stream>p, now)
            p = following
        return 0

    # ------------------------------------------------------------ internals ---

    cdef Stream _create(self, object room, str epoch, long long top):
        """A new record, the most recently used; past max_streams the least
        recently used is dropped and its room kept for _report_drops (which
        the caller calls once it is done with the new record)."""
        cdef Stream stream, oldest
        if room is not None and not isinstance(room, str):
            raise TypeError(f"a room is a str or None, not {type(room).__name__}")
        stream = Stream.__new__(Stream)
        stream.room = room
        stream.epoch = epoch
        stream.top = top
        self._streams[room] = stream
        self._use(stream)
        while len(self._streams) > self.max_streams:
            oldest = <Stream>self._oldest
            if oldest.count:
                self._clear(oldest)
            self._unlink(oldest)
            del self._streams[oldest.room]
            if self._on_drop is not None:
                if self._dropped is None:
                    self._dropped = []
                self._dropped.append(oldest.room)
        return stream

    cdef int _report_drops(self) except -1:
        """Call on_drop for the records dropped by the operation that ends,
        once the state is whole again (on_drop may use this object)."""
        cdef list rooms = self._dropped
        self._dropped = None
        for room in rooms:
            self._on_drop(room)
        return 0

    cdef int _use(self, Stream stream) noexcept:
        """Make ``stream`` the most recently used record (linking it if new)."""
        cdef PyObject *me = <PyObject *>stream
        if self._newest == me:
            return 0
        if stream._newer is not NULL or self._oldest == me:
            self._unlink(stream)
        stream._older = self._newest
        stream._newer = NULL
        if self._newest is NULL:
            self._oldest = me
        else:
            (<Stream>self._newest)._newer = me
        self._newest = me
        return 0

    cdef int _unlink(self, Stream stream) noexcept:
        """Take ``stream`` out of the order of records."""
        if stream._older is NULL:
            self._oldest = stream._newer
        else:
            (<Stream>stream._older)._newer = stream._newer
        if stream._newer is NULL:
            self._newest = stream._older
        else:
            (<Stream>stream._newer)._older = stream._older
        stream._older = NULL
        stream._newer = NULL
        return 0

    cdef int _hold(self, Stream stream) noexcept:
        """Make ``stream`` the most recently used of those holding entries."""
        cdef PyObject *me = <PyObject *>stream
        if self._newest_held == me:
            return 0
        if stream._newer_held is not NULL or self._oldest_held == me:
            self._unhold(stream)
        stream._older_held = self._newest_held
        stream._newer_held = NULL
        if self._newest_held is NULL:
            self._oldest_held = me
        else:
            (<Stream>self._newest_held)._newer_held = me
        self._newest_held = me
        return 0

    cdef int _unhold(self, Stream stream) noexcept:
        """Take ``stream`` out of the order of those holding entries."""
        if stream._older_held is NULL:
            self._oldest_held = stream._newer_held
        else:
            (<Stream>stream._older_held)._newer_held = stream._newer_held
        if stream._newer_held is NULL:
            self._newest_held = stream._older_held
        else:
            (<Stream>stream._newer_held)._older_held = stream._older_held
        stream._older_held = NULL
        stream._newer_held = NULL
        return 0

    cdef int _drop_oldest(self, Stream stream) except -1:
        """Drop the oldest entry of ``stream`` (which holds some)."""
        cdef Entry *entry = &stream._ring[stream._head]
        cdef Py_ssize_t size = _size(entry.message)
        _decref(entry.message)
        entry.message = NULL
        stream._head += 1
        if stream._head == stream._capacity:
            stream._head = 0
        stream.count -= 1
        stream.bytes -= size
        self.entries -= 1
        self.bytes -= size
        if stream.count == 0:
            _release(stream)
            self._unhold(stream)
        elif stream._capacity >= 16 and stream.count * 4 <= stream._capacity:
            _resize(stream, stream._capacity // 2)
        return 0

    cdef int _clear(self, Stream stream) except -1:
        """Drop every entry of ``stream`` (which holds some)."""
        self.entries -= stream.count
        self.bytes -= stream.bytes
        _release(stream)
        self._unhold(stream)
        return 0

    cdef int _expire(self, Stream stream, double now) except -1:
        """Drop the entries of ``stream`` older than ``history_ttl``."""
        while stream.count and now - stream._ring[stream._head].time >= self.history_ttl:
            self._drop_oldest(stream)
        return 0

    cdef double _now(self) except? -1.0:
        if self._monotonic:
            return _monotonic()
        return self._clock()
