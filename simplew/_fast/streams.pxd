from cpython.object cimport PyObject


cdef struct Entry:
    PyObject *message       # owned reference to the encoded publication (bytes)
    double time             # when it was stored, on the clock of Streams


cdef class Stream:
    cdef readonly object room         # None: the broadcast stream
    cdef readonly str epoch
    cdef readonly long long top       # the last offset of the epoch (0: none yet)
    cdef readonly Py_ssize_t count    # entries held: offsets top - count + 1 .. top
    cdef readonly Py_ssize_t bytes    # message bytes held
    cdef Entry *_ring                 # NULL while nothing is held
    cdef Py_ssize_t _head             # slot of the oldest entry held
    cdef Py_ssize_t _capacity         # slots of _ring
    # the two use orders of Streams, linked through the streams themselves; borrowed
    # pointers (the dict of Streams owns every Stream)
    cdef PyObject *_older             # every record, least recently used first
    cdef PyObject *_newer
    cdef PyObject *_older_held        # the records that hold entries, in the same order
    cdef PyObject *_newer_held


cdef class Streams:
    cdef readonly Py_ssize_t history_size     # entries held per stream at most
    cdef readonly Py_ssize_t history_bytes    # message bytes held over all streams at most
    cdef readonly double history_ttl          # seconds an entry stays recoverable
    cdef readonly Py_ssize_t max_streams      # stream records kept at most
    cdef readonly Py_ssize_t bytes            # message bytes held over all streams
    cdef readonly Py_ssize_t entries          # entries held over all streams
    cdef dict _streams                        # room -> Stream
    cdef object _clock
    cdef bint _monotonic                      # _clock is time.monotonic: read it in C
    cdef object _on_drop
    cdef list _dropped                        # rooms dropped, on_drop not called yet
    cdef bint _timed                          # history_ttl is finite
    cdef PyObject *_oldest                    # the ends of the two use orders (borrowed)
    cdef PyObject *_newest
    cdef PyObject *_oldest_held
    cdef PyObject *_newest_held

    cpdef tuple position(self, object room)
    cpdef tuple next(self, object room)
    cpdef int append(self, object room, str epoch, long long offset, bytes message) except -1
    cpdef list since(self, object room, str epoch, long long offset)
    cpdef int restart(self, object room, str epoch, long long top) except -1
    cpdef int forget(self, object room) except -1
    cpdef int expire(self) except -1

    cdef Stream _create(self, object room, str epoch, long long top)
    cdef int _report_drops(self) except -1
    cdef int _use(self, Stream stream) noexcept
    cdef int _unlink(self, Stream stream) noexcept
    cdef int _hold(self, Stream stream) noexcept
    cdef int _unhold(self, Stream stream) noexcept
    cdef int _drop_oldest(self, Stream stream) except -1
    cdef int _clear(self, Stream stream) except -1
    cdef int _expire(self, Stream stream, double now) except -1
    cdef double _now(self) except? -1.0
