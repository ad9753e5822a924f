# cython: language_level=3
"""The transport as picows sees it: a gate that can hold back picows's CLOSE.

picows parses the frame after the current one before it delivers the current
one. When a client sends two CLOSE frames in one packet (Autobahn 7.1.2),
picows answers the second with CLOSE 1002 before the listener has seen the
first and could answer it with 1000. picows writes through this gate, which
holds a CLOSE frame until the end of the current loop turn; the listener may
take it back and answer the client's first CLOSE instead.

picows sends straight to the socket while the transport reports an empty
write buffer; the gate reports one byte more than is buffered so that every
picows write passes through it. simplew's own frames bypass the gate.
"""


cdef class WriteGate:
    cdef readonly object real        # the asyncio/aiofastnet transport
    cdef readonly bytes held_close   # a CLOSE frame picows wrote this turn
    cdef object _loop

    def __init__(self, real, loop):
        self.real = real
        self.held_close = None
        self._loop = loop

    def write(self, data):
        if len(data) >= 2 and data[0] == 0x88 and self.held_close is None:
            self.held_close = bytes(data)
            self._loop.call_soon(self.release)
            return
        self.real.write(data)

    def writelines(self, list_of_data):
        self.real.writelines(list_of_data)

    def release(self):
        """Write the held CLOSE, if any (end of turn, or before closing)."""
        data = self.held_close
        if data is not None:
            self.held_close = None
            if not self.real.is_closing():
                self.real.write(data)

    def take_close(self):
        """Drop the held CLOSE; True if there was one."""
        held = self.held_close is not None
        self.held_close = None
        return held

    def get_write_buffer_size(self):
        return self.real.get_write_buffer_size() + 1

    def get_extra_info(self, name, default=None):
        return self.real.get_extra_info(name, default)

    def close(self):
        self.release()
        self.real.close()

    def abort(self):
        self.held_close = None
        self.real.abort()

    def is_closing(self):
        return self.real.is_closing()

    def __getattr__(self, name):
        return getattr(self.real, name)
