from simplew._fast.connection cimport WebSocketConnection


cdef class Hub:
    cdef list _connections
    cdef dict _by_id
    cdef public long long compressions   # multicast payloads compressed (once per window size)

    cpdef add(self, WebSocketConnection conn)
    cpdef remove(self, WebSocketConnection conn)
    cpdef Py_ssize_t multicast_frame(self, bytes frame) except -1
    cpdef Py_ssize_t multicast(self, int opcode, bytes payload) except -1
