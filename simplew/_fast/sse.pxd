from simplew._fast.admission cimport Admission
from simplew._fast.connection cimport Endpoint, WebSocketConnection


cdef class SseEndpoint(Endpoint):
    cdef public double heartbeat          # seconds between ": ping" comments
    cdef public Py_ssize_t max_rooms      # rooms one connection may ask for (max_sse_rooms)
    cdef set _open                        # connected streams (heartbeat)
    cdef object _ticker                   # the next heartbeat, or None


cdef class SseConnection(WebSocketConnection):
    cdef readonly list wanted             # the rooms it follows (allowed, within the cap)
    cdef readonly list left               # the rooms it asked for and does not get
    cdef dict _held                       # stream -> (epoch, offset) to resume from, until used
    cdef dict _ids                        # stream -> its [room, epoch, offset] JSON, in order
    cdef dict _live                       # without recovery: stream -> events sent
    cdef bint _started                    # admitted: joins from now on send their id at once
    cdef object _socket                   # the asyncio transport
    cdef Admission _admission             # the connection slot it holds, or None
    cdef object _host

    cdef int publish(self, object room, str epoch, long long offset, bytes body) except -1
    cdef int _open_stream(self, object room, str epoch, long long top) except -1
    cdef int _event(self, bytes body) except -1
    cdef int _queue(self, bytes data) except -1
    cdef int _ping(self) except -1
    # the output of a WebSocketConnection, written as event-stream text
    cdef int write_frame(self, bytes frame) except -1
    cdef int _slow(self, bytes frame) except -1
    cdef int flush_output(self) except -1
    cdef int queue_message(self, int opcode, bytes payload) except -1
    cdef int queue_payload(self, int opcode, bytes payload) except -1


cpdef bytes event_body(int opcode, bytes payload)
