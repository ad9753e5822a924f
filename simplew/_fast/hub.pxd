from simplew._fast.connection cimport WebSocketConnection


cdef class Hub:
    cdef list _connections
    cdef dict _by_id
    cdef dict _rooms           # room name -> list of its connections (same swap-removal)
    cdef public long long compressions   # multicast payloads compressed (once per window size)
    cdef public long long multicasts     # multicast calls (to all or to a room), for /metrics
    cdef public Py_ssize_t max_rooms     # rooms a session may be in (0: no limit)
    cdef public long long rooms_refused  # joins refused: the session was in max_rooms rooms
    cdef public object on_room_open      # callable(room): the room's first member joined, or None
    cdef public object on_room_close     # callable(room): its last member left, or None

    cpdef add(self, WebSocketConnection conn)
    cpdef remove(self, WebSocketConnection conn)
    cpdef Py_ssize_t multicast(self, int opcode, bytes payload, bytes v2=*, str epoch=*,
                               long long offset=*) except -1
    cpdef Py_ssize_t multicast_room(self, str room, int opcode, bytes payload, bytes v2=*,
                                    str epoch=*, long long offset=*) except -1
    cdef Py_ssize_t _fanout(self, list conns, int opcode, bytes payload, bytes v2, object room,
                            str epoch, long long offset) except -1
    cpdef bint join(self, WebSocketConnection conn, str room) except -1
    cpdef bint leave(self, WebSocketConnection conn, str room) except -1
