# cython: language_level=3
"""The set of connected WebSocket clients of a server, and multicast to them.

A multicast builds its frame once and writes that same ``bytes`` object to
every client. Connections live in a list (O(1) removal by swapping the last
one into the freed slot) so the fan-out loop is a plain C loop.
"""
from simplew._fast.connection cimport WebSocketConnection
from simplew._fast.frames cimport text_frame, binary_frame


cdef class Hub:
    def __init__(self):
        self._connections = []
        self._by_id = {}

    cpdef add(self, WebSocketConnection conn):
        if conn.hub_index >= 0:
            return
        conn.hub_index = len(self._connections)
        self._connections.append(conn)
        self._by_id[conn.id] = conn

    cpdef remove(self, WebSocketConnection conn):
        cdef Py_ssize_t i = conn.hub_index
        cdef WebSocketConnection last
        if i < 0:
            return
        last = <WebSocketConnection>self._connections.pop()
        if last is not conn:
            self._connections[i] = last
            last.hub_index = i
        conn.hub_index = -1
        self._by_id.pop(conn.id, None)

    cpdef Py_ssize_t multicast_frame(self, bytes frame) except -1:
        """Write ``frame`` to every connected client; returns how many."""
        cdef list conns = self._connections
        cdef Py_ssize_t i, n = len(conns)
        for i in range(n):
            (<WebSocketConnection>conns[i]).write_frame(frame)
        return n

    def multicast_text(self, str text):
        return self.multicast_frame(text_frame(text))

    def multicast_binary(self, data):
        return self.multicast_frame(binary_frame(data))

    def find(self, str session_id):
        return self._by_id.get(session_id)

    def sessions(self):
        return list(self._connections)

    def __len__(self):
        return len(self._connections)
