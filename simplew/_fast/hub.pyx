# cython: language_level=3
"""The set of connected WebSocket clients of a server, and multicast to them.

A multicast builds its frame once and queues that same ``bytes`` object on
every client (each client's queue goes out in one write at the end of the
loop turn). Clients that negotiated permessage-deflate get a frame
compressed once per distinct window size, not once per client. Connections
live in a list (O(1) removal by swapping the last one into the freed slot)
so the fan-out loop is a plain C loop.
"""
from simplew._fast.connection cimport WebSocketConnection, COMPRESS_MIN_SIZE_C
from simplew._fast.frames cimport build_frame, text_frame, binary_frame
from simplew._fast.deflate cimport deflate_standalone


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
        """Queue a prebuilt uncompressed ``frame`` on every client; returns how many."""
        cdef list conns = self._connections
        cdef Py_ssize_t i, n = len(conns)
        for i in range(n):
            (<WebSocketConnection>conns[i]).write_frame(frame)
        return n

    cpdef Py_ssize_t multicast(self, int opcode, bytes payload) except -1:
        """Send one message to every client: one frame built once, plus one
        compressed frame per window size in use; returns how many clients."""
        cdef list conns = self._connections
        cdef Py_ssize_t i, n = len(conns)
        cdef bytes frame = build_frame(opcode, payload, len(payload))
        cdef bint compress = len(payload) >= COMPRESS_MIN_SIZE_C
        cdef dict compressed = None
        cdef WebSocketConnection conn
        cdef bytes shared, body
        for i in range(n):
            conn = <WebSocketConnection>conns[i]
            if conn.deflate_wbits == 0 or not compress:
                conn.write_frame(frame)
                continue
            if compressed is None:
                compressed = {}
            shared = compressed.get(conn.deflate_wbits)
            if shared is None:
                body = deflate_standalone(payload, conn.deflate_wbits, conn.endpoint.compression_level)
                shared = build_frame(opcode, body, len(body), True)
                compressed[conn.deflate_wbits] = shared
                self.compressions += 1
            conn.send_shared(shared)
        return n

    def multicast_text(self, str text):
        return self.multicast(1, text.encode("utf-8"))

    def multicast_binary(self, data):
        return self.multicast(2, bytes(data))

    def find(self, str session_id):
        return self._by_id.get(session_id)

    def sessions(self):
        return list(self._connections)

    def __len__(self):
        return len(self._connections)
