# The WebSocket upgrade of simplew._fast.http (included there): the checks an
# upgrade request must pass, and the hand-off of the socket to picows.

cdef _feed(protocol, bytes data):
    """Give ``data`` to a BufferedProtocol as if it had come from the socket."""
    cdef Py_ssize_t pos = 0, n
    cdef Py_ssize_t total = len(data)
    while pos < total:
        buf = protocol.get_buffer(total - pos)
        n = min(len(buf), total - pos)
        buf[:n] = data[pos:pos + n]
        protocol.buffer_updated(n)
        pos += n
