# cython: language_level=3
"""The recent publications of a stream, for clients that come back.

A :class:`History` holds the last publications of one stream, each under
its offset. Offsets are consecutive: the entry after offset ``n`` is
``n + 1``, so finding where a returning client resumes is an index, not a
search. The ring is bounded twice: by ``max_count`` entries and by
``max_bytes`` of payload; the oldest entries go first.

Each entry keeps the room it was published to (``None``: everyone) and the
``simplew.v1`` ``pub`` message already encoded, so a replay sends stored
bytes and encodes nothing.
"""


cdef class History:
    """A bounded ring of consecutive publications."""

    def __init__(self, Py_ssize_t max_count, Py_ssize_t max_bytes):
        if max_count < 0 or max_bytes < 0:
            raise ValueError("history limits must be >= 0")
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._rooms = [None] * max_count
        self._payloads = [None] * max_count
        self._head = 0
        self.count = 0
        self.bytes = 0
        self.top = 0

    cpdef int append(self, long long offset, object room, bytes payload) except -1:
        """Store the publication ``offset``, which must be ``top + 1`` (or any
        offset when the ring is empty: a stream mirrored from its middle)."""
        cdef Py_ssize_t slot
        if self.count and offset != self.top + 1:
            raise ValueError(f"offset {offset} does not follow {self.top}")
        self.top = offset
        if self.max_count == 0:
            return 0
        if self.count == self.max_count:
            self._drop_oldest()
        slot = (self._head + self.count) % self.max_count
        self._rooms[slot] = room
        self._payloads[slot] = payload
        self.count += 1
        self.bytes += len(payload)
        while self.bytes > self.max_bytes and self.count > 1:
            self._drop_oldest()
        return 0

    cdef int _drop_oldest(self) except -1:
        cdef bytes payload = <bytes>self._payloads[self._head]
        self.bytes -= len(payload)
        self._rooms[self._head] = None
        self._payloads[self._head] = None
        self._head = (self._head + 1) % self.max_count
        self.count -= 1
        return 0

    @property
    def first(self):
        """The oldest offset held (``top + 1`` when empty)."""
        return self.top - self.count + 1

    cpdef bint covers(self, long long offset):
        """Whether every publication after ``offset`` up to ``top`` is held."""
        return self.top - self.count <= offset <= self.top

    cpdef list since(self, long long offset, object rooms):
        """The payloads published after ``offset`` to everyone or to a room in
        ``rooms`` (a set, or None for no room), oldest first; None when some
        of them are no longer held (or ``offset`` is beyond ``top``)."""
        cdef Py_ssize_t i, start, slot
        cdef list out = []
        cdef object room
        if not self.covers(offset):
            return None
        start = <Py_ssize_t>(offset - (self.top - self.count))
        for i in range(start, self.count):
            slot = (self._head + i) % self.max_count
            room = self._rooms[slot]
            if room is None or (rooms is not None and room in rooms):
                out.append(self._payloads[slot])
        return out

    cpdef clear(self, long long top=0):
        """Forget every entry; the next offset expected is ``top + 1``."""
        cdef Py_ssize_t i
        for i in range(self.max_count):
            self._rooms[i] = None
            self._payloads[i] = None
        self._head = 0
        self.count = 0
        self.bytes = 0
        self.top = top

    def __len__(self):
        return self.count
