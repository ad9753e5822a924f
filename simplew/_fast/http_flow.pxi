# Flow control of simplew._fast.http (included there): one pause each way.
#
# Writing: the transport calls pause_writing when its buffer passes the
# high-water mark (a client that does not read) and resume_writing when it has
# drained; meanwhile answers wait in the connection's queue. Reading: the
# connection pauses the transport's reading while answers pile up (the client
# does not read, or requests pipelined behind an async answer), so a client
# cannot make the server hold unbounded work, and resumes it once they catch
# up (HttpProtocol._read_again holds the condition, in one place).
cimport cython


@cython.final
cdef class _FlowControl:
    """The two pauses of one connection; pausing and resuming reading are idempotent."""
    cdef object transport         # the connection's transport (None once it let go of it)
    cdef bint write_paused        # the transport's buffer is above its high-water mark
    cdef bint read_paused         # this side paused the transport's reading

    cdef pause_reading(self):
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    cdef resume_reading(self):
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
