# cython: language_level=3
"""Dead peers: one sweep per server pings every WebSocket client.

Every ``interval`` seconds the sweep sends a PING to each connected client
and, ``timeout`` seconds later, closes with 1011 those that sent no PONG
since (the socket is dropped right after the CLOSE, so a client that does not
read is gone too; its session ends as for any other close). A client is
therefore dropped at most ``interval + timeout`` after it stops answering.

No state or task is kept per connection between sweeps: while a PING waits,
a small mark sits in picows's ``WSTransport.pong_received_at_future`` slot,
which picows resolves when the PONG arrives (picows's own round-trip
measurement uses the same slot; simplew does not).

The sweep runs while the server has clients: :meth:`Heartbeat.wake` starts it
(at each WebSocket hand-off) and it stops by itself when no client is left.
"""
import logging

from picows.picows cimport WSTransport

from simplew._fast.connection cimport WebSocketConnection

log = logging.getLogger("simplew.websocket")

# how long after its CLOSE a silent client's socket is dropped
cdef double DROP_DELAY = 0.01
# clients pinged per loop turn
cdef Py_ssize_t SLICE = 1000


cdef class _PongWait:
    """Stands for a PING's answer in ``pong_received_at_future`` (picows calls set_result)."""
    cdef WebSocketConnection conn
    cdef bint answered

    def set_result(self, value):
        self.answered = True

    def set_exception(self, exc):          # the connection was lost while waiting
        pass


cdef class Heartbeat:
    """Pings the clients of ``hub`` every ``interval`` s; drops those silent for ``timeout`` s."""
    cdef readonly double interval
    cdef readonly double timeout
    cdef readonly long long dropped         # clients closed for not answering
    cdef object hub
    cdef object _loop
    cdef object _handle                     # the next sweep or check, or None: not running
    cdef list _waiting                      # _PongWait of the PINGs of the last sweep
    cdef long long _sweep                   # number of the current sweep

    def __init__(self, hub, double interval, double timeout):
        if interval <= 0 or timeout <= 0:
            raise ValueError("ping_interval and ping_timeout must be positive")
        self.hub = hub
        self.interval = interval
        self.timeout = min(timeout, interval)
        self._waiting = []

    def wake(self, loop):
        """Make sure the sweep runs on ``loop`` (cheap when it already does)."""
        if self._handle is not None and self._loop is loop:
            return
        if self._handle is not None:       # left on a loop that has stopped (a server restart)
            try:
                self._handle.cancel()
            except Exception:
                pass
        self._loop = loop
        self._waiting = []
        self._sweep += 1
        self._handle = loop.call_later(self.interval, self._ping)

    def _ping(self):
        sessions = self.hub.sessions()
        if not sessions:
            self._handle = None             # woken again by the next client
            return
        self._sweep += 1
        self._waiting = []
        self._handle = self._loop.call_later(self.timeout, self._check)
        self._ping_slice(sessions, 0, self._sweep)

    def _ping_slice(self, list sessions, Py_ssize_t start, long long sweep):
        """Ping ``sessions[start:start + SLICE]``; the rest in later loop turns, so that a
        sweep over many clients does not hold the loop up."""
        cdef WebSocketConnection conn
        cdef WSTransport transport
        cdef _PongWait wait
        cdef Py_ssize_t i, end = min(start + SLICE, len(sessions))
        if sweep != self._sweep:
            return                          # a later sweep (or a restart) took over
        cdef list waiting = self._waiting
        for i in range(start, end):
            conn = <WebSocketConnection>sessions[i]
            transport = conn.transport
            if (conn.closed or transport is None or transport.is_disconnected
                    or transport.pong_received_at_future is not None):
                continue
            wait = _PongWait.__new__(_PongWait)
            wait.conn = conn
            try:
                transport.send_ping()
            except Exception as exc:        # a socket going away; its close is under way
                log.debug("cannot ping %s: %r", conn.id, exc)
                continue
            transport.pong_received_at_future = wait
            waiting.append(wait)
        if end < len(sessions):
            self._loop.call_soon(self._ping_slice, sessions, end, sweep)

    def _check(self):
        cdef _PongWait wait
        cdef WebSocketConnection conn
        cdef WSTransport transport
        cdef list waiting = self._waiting
        self._waiting = []
        self._sweep += 1                    # slices of the sweep still to run are dropped
        self._handle = self._loop.call_later(self.interval - self.timeout, self._ping)
        for item in waiting:
            wait = <_PongWait>item
            conn = wait.conn
            transport = conn.transport
            if transport is not None and transport.pong_received_at_future is wait:
                transport.pong_received_at_future = None
            if wait.answered or conn.closed or transport is None or transport.is_disconnected:
                continue
            self.dropped += 1
            log.debug("closing %s: no answer to a ping", conn.id)
            try:
                conn.close(1011, f"no answer to a ping within {self.timeout:g} s")
            finally:
                self._loop.call_later(DROP_DELAY, conn.abort)
