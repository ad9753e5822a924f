from picows.picows cimport WSListener, WSTransport, WSFrame
from simplew._fast.deflate cimport Inflater, Deflater
from simplew._fast.context cimport ServerContext


cdef class Flusher:
    cdef list _dirty
    cdef bint _scheduled

    cdef int add(self, WebSocketConnection conn, object loop) except -1


cdef class Endpoint:
    """A WebSocket path and what its messages go to; subclasses decide."""
    cdef public str path
    cdef public Py_ssize_t max_message_size
    cdef public double close_timeout   # seconds to wait for the client's CLOSE answer
    cdef public Py_ssize_t max_write_buffer  # unsent bytes a client may lag behind; 0: no limit
    cdef public int slow_client_policy       # SLOW_CLOSE or SLOW_SKIP
    cdef public bint compression             # negotiate permessage-deflate
    cdef public int compression_level        # zlib level, 1 (fast) to 9
    cdef public Flusher flusher
    cdef public ServerContext context  # the server's hub, hooks, recovery and JWT validator
    # counters for /metrics (simplew.metrics reads them on a scrape)
    cdef public long long messages_in       # whole messages received
    cdef public long long bytes_in          # frame payload bytes received
    cdef public long long messages_out      # frames queued to clients (a multicast: one per client)
    cdef public long long bytes_out         # bytes of those frames
    cdef public long long dropped_slow_clients  # clients closed over max_write_buffer
    cdef public long long dropped_messages  # frames skipped for slow clients (policy "skip")
    cdef public long long handler_errors    # handlers or callbacks that raised

    cpdef on_message(self, WebSocketConnection conn, bint is_text, object data)


cdef class WebSocketConnection(WSListener):
    cdef readonly str id
    cdef readonly bint v2                 # speaks simplew.v2 (typed JSON messages, recovery)
    cdef public bint recovered            # simplew.v2: this connection resumed an earlier session
    cdef public object awaiting_resume    # ?resume=1: the timer until its resume message
    cdef public object user               # the JWT "sub" of the upgrade request, or None
    cdef public bint superseded           # a newer connection took this session over
    cdef public object token_timer        # ends access when its JWT expires; cancelled when gone
    cdef readonly object request          # simplew.request.Request of the upgrade
    cdef readonly Endpoint endpoint
    cdef readonly bint closed             # a CLOSE was sent or the socket is gone
    cdef public Py_ssize_t hub_index      # slot in the hub's list, -1 when absent
    cdef dict room_slots                  # room name -> slot in that room's hub list, or None
    cdef public dict state                # free per-session storage for applications
    cdef WSTransport transport
    cdef object _write
    cdef object _loop
    cdef unsigned long _thread_id
    cdef int _msg_opcode                  # opcode of the message being reassembled, -1 if none
    cdef list _parts
    cdef Py_ssize_t _msg_size
    cdef object _decoder
    cdef object _close_timer
    cdef object _peer                     # the client (request.remote or peername), cached
    cdef readonly bint write_paused       # the transport's buffer is above its high-water mark
    cdef object _write_buffer_size        # the transport's get_write_buffer_size
    cdef object _gate                     # the WriteGate picows writes through, or None
    cdef bytes _out_first                 # output queued this turn: first frame
    cdef list _out_more                   # and the frames after it, or None
    cdef Py_ssize_t _out_size             # bytes queued this turn
    cdef Flusher _flusher
    cdef Inflater _inflater               # permessage-deflate, when negotiated
    cdef Deflater _deflater
    cdef readonly int deflate_wbits       # 0 without compression
    cdef bint _msg_compressed
    cdef public Py_ssize_t dropped_messages

    cdef int write_frame(self, bytes frame) except -1
    cdef int _enqueue(self, bytes data) except -1
    cdef bytes _take_output(self)
    cdef int _slow(self, bytes frame) except -1
    cdef int flush_output(self) except -1
    cdef int _write_now(self, bytes data) except -1
    cdef int queue_message(self, int opcode, bytes payload) except -1
    cdef int queue_payload(self, int opcode, bytes payload) except -1
    cdef int send_shared(self, bytes compressed_frame) except -1
    cdef _deliver_compressed(self, bint is_text, WSFrame frame)
    cdef int fail(self, int code, str reason) except -1
    cdef int _send_close(self, int code, str reason) except -1
    cdef int _deliver(self, bint is_text, object data) except -1
    cdef bint _resume_too_big(self, bint compressed) except -1
    cdef _continue(self, WSFrame frame)
    cdef _on_close_frame(self, WSFrame frame)
    cdef _close_now(self, int code, str reason)
