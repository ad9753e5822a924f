# cython: language_level=3
"""The set of connected WebSocket clients of a server, and multicast to them.

A multicast builds its frame once and queues that same ``bytes`` object on
every client (each client's queue goes out in one write at the end of the
loop turn). Clients that negotiated permessage-deflate get a frame
compressed once per distinct window size, not once per client. Connections
live in a list (O(1) removal by swapping the last one into the freed slot)
so the fan-out loop is a plain C loop. Rooms are more such lists (room name
to members, each member keeping its slot per room in ``room_slots``): a room
multicast runs the same loop over the room's list.

A ``simplew.v2`` client gets the publication's ``pub`` message (``v2``,
encoded once by simplew.recovery) instead of the raw payload: a second
shared frame, built on the first such client of the loop. An event-stream
client (simplew._fast.sse) gets the publication's event, formatted on the
first such client, with its position (``epoch``, ``offset``).

The loop runs over a snapshot of the list, so a client dropped (and the
last one swapped into its slot) while the loop writes skips nobody.
"""
from simplew._fast.connection cimport WebSocketConnection
from simplew._fast.frames cimport build_frame
from simplew._fast.deflate cimport deflate_standalone
from simplew._fast.sse cimport SseConnection, event_body


cdef class Hub:
    def __init__(self, Py_ssize_t max_rooms=128):
        if max_rooms < 0:
            raise ValueError("max_rooms must be >= 0")
        self.max_rooms = max_rooms
        self.on_room_open = None
        self.on_room_close = None
        self._connections = []
        self._by_id = {}
        self._rooms = {}

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
        if conn.room_slots is not None:
            for room in list(conn.room_slots):
                self.leave(conn, room)
            conn.room_slots = None

    # -- rooms ----------------------------------------------------------------

    cpdef bint join(self, WebSocketConnection conn, str room) except -1:
        """Put ``conn`` in ``room``; False if it already is, is not in the hub
        (gone), or is in ``max_rooms`` rooms already (counted in
        ``rooms_refused``). Loop thread only."""
        cdef list members
        if conn.hub_index < 0:
            return False
        if conn.room_slots is None:
            conn.room_slots = {}
        elif room in conn.room_slots:
            return False
        if self.max_rooms and len(conn.room_slots) >= self.max_rooms:
            self.rooms_refused += 1
            return False
        members = self._rooms.get(room)
        if members is None:
            members = []
            self._rooms[room] = members
            if self.on_room_open is not None:
                self.on_room_open(room)
        conn.room_slots[room] = len(members)
        members.append(conn)
        return True

    def in_room(self, WebSocketConnection conn, str room):
        """Whether ``conn`` is in ``room``."""
        return conn.room_slots is not None and room in conn.room_slots

    cpdef bint leave(self, WebSocketConnection conn, str room) except -1:
        """Take ``conn`` out of ``room`` in O(1) (the room's last member takes its
        slot); False if it was not in it. Loop thread only."""
        cdef list members
        cdef WebSocketConnection last
        cdef Py_ssize_t i
        if conn.room_slots is None:
            return False
        slot = conn.room_slots.pop(room, None)
        if slot is None:
            return False
        i = slot
        members = <list>self._rooms[room]
        last = <WebSocketConnection>members.pop()
        if last is not conn:
            members[i] = last
            last.room_slots[room] = i
        if not members:
            del self._rooms[room]
            if self.on_room_close is not None:
                self.on_room_close(room)
        return True

    cpdef Py_ssize_t multicast_room(self, str room, int opcode, bytes payload,
                                    bytes v2=None, str epoch=None,
                                    long long offset=0) except -1:
        """``multicast`` to the members of ``room`` only; returns how many."""
        cdef list members = self._rooms.get(room)
        if members is None:
            return 0
        return self._fanout(members, opcode, payload, v2, room, epoch, offset)

    def room_sessions(self, str room):
        """The connections in ``room`` (a new list)."""
        return list(self._rooms.get(room, ()))

    def room_size(self, str room):
        cdef list members = self._rooms.get(room)
        return 0 if members is None else len(members)

    def rooms(self):
        """{room name: member count} of the rooms with members."""
        return {name: len(<list>members) for name, members in self._rooms.items()}

    cpdef Py_ssize_t multicast(self, int opcode, bytes payload, bytes v2=None, str epoch=None,
                               long long offset=0) except -1:
        """Send one message to every client: one frame built once, plus one
        compressed frame per window size in use; returns how many clients.
        ``v2``: the ``pub`` message simplew.v2 clients get instead; ``epoch``,
        ``offset``: its position (event-stream clients put it in their ids)."""
        return self._fanout(self._connections, opcode, payload, v2, None, epoch, offset)

    cdef Py_ssize_t _fanout(self, list conns, int opcode, bytes payload, bytes v2, object room,
                            str epoch, long long offset) except -1:
        """The multicast loop over ``conns`` (every client, or a room)."""
        cdef list snapshot = list(conns)
        cdef Py_ssize_t i, n = len(snapshot)
        cdef bytes frame = build_frame(opcode, payload, len(payload))
        cdef bytes v2_frame = None
        cdef dict compressed = None
        cdef bytes event = None
        cdef int key
        self.multicasts += 1
        cdef WebSocketConnection conn
        cdef bytes shared, body, source
        for i in range(n):
            conn = <WebSocketConnection>snapshot[i]
            if type(conn) is SseConnection:
                if event is None:
                    event = event_body(opcode, payload)
                (<SseConnection>conn).publish(room, epoch, offset, event)
                continue
            if conn.v2:
                if v2 is None:
                    continue        # no offset for it: not a publication of the stream
                if conn.deflate_wbits == 0:
                    if v2_frame is None:
                        v2_frame = build_frame(1, v2, len(v2))
                    conn.write_frame(v2_frame)
                    continue
                key = -conn.deflate_wbits
            elif conn.deflate_wbits == 0:
                conn.write_frame(frame)
                continue
            else:
                key = conn.deflate_wbits
            if compressed is None:
                compressed = {}
            shared = compressed.get(key)
            if shared is None:
                source = v2 if key < 0 else payload
                body = deflate_standalone(source, conn.deflate_wbits,
                                          conn.endpoint.compression_level)
                shared = build_frame(1 if key < 0 else opcode, body, len(body), True)
                compressed[key] = shared
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
