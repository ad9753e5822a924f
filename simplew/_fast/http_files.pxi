# Response bodies read from files, for simplew._fast.http (included there).
#
# ``FileBody`` is ``length`` bytes of an open file, which the connection streams
# after the response head with ``_FileStream`` (sendfile on a plain TCP socket,
# reads otherwise); ``PreparedBody`` is a body whose whole response is encoded
# once per Date second.
import os

cdef extern from *:
    """
    #include <errno.h>
    #if defined(__linux__)
    #include <sys/sendfile.h>
    #include <sys/socket.h>
    #define SIMPLEW_SENDFILE 1
    /* bytes of buf sent without blocking, the kernel told more follows; -1 and errno */
    static Py_ssize_t simplew_send_more(int fd, const char *buf, Py_ssize_t size) {
        return send(fd, buf, (size_t)size, MSG_MORE | MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    /* bytes of in_fd from offset sent to the socket out_fd; -1 and errno */
    static Py_ssize_t simplew_sendfile(int out_fd, int in_fd, Py_ssize_t offset,
                                       Py_ssize_t count) {
        off_t at = (off_t)offset;
        return sendfile(out_fd, in_fd, &at, (size_t)count);
    }
    #else
    #define SIMPLEW_SENDFILE 0
    static Py_ssize_t simplew_send_more(int fd, const char *buf, Py_ssize_t size) {
        errno = ENOSYS;
        return -1;
    }
    static Py_ssize_t simplew_sendfile(int out_fd, int in_fd, Py_ssize_t offset,
                                       Py_ssize_t count) {
        errno = ENOSYS;
        return -1;
    }
    #endif
    """
    const int SIMPLEW_SENDFILE
    Py_ssize_t simplew_send_more(int fd, const char *buf, Py_ssize_t size)
    Py_ssize_t simplew_sendfile(int out_fd, int in_fd, Py_ssize_t offset, Py_ssize_t count)

cdef object _sendfile = os.sendfile
cdef object _pread = os.pread
cdef long long SENDFILE_CHUNK = 1 << 20     # bytes per sendfile call
cdef long long SENDFILE_TURN = 4 << 20      # bytes one connection sends before others' turn
cdef long long READ_CHUNK = 1 << 16         # bytes per read where sendfile cannot be used


cdef class FileBody:
    """A response body: ``length`` bytes of the open file ``fd`` from ``offset``.

    The connection that writes it owns ``fd``: it streams the bytes under the
    transport's flow control (``os.sendfile`` on a plain TCP socket, reads of
    64 KiB otherwise, e.g. TLS) and closes ``fd`` when the body is out, when
    the client goes away, or at once for HEAD. A FileBody that is never
    written closes ``fd`` when it is freed.
    """
    cdef readonly int fd
    cdef readonly long long offset
    cdef readonly long long length

    def __init__(self, int fd, long long offset, long long length):
        self.fd = fd
        self.offset = offset
        self.length = length

    def __len__(self):
        return self.length

    def read(self):
        """The bytes of the body (for callers that want them in memory)."""
        cdef list parts = []
        cdef long long pos = self.offset, end = self.offset + self.length
        while pos < end:
            chunk = _pread(self.fd, min(end - pos, SENDFILE_CHUNK), pos)
            if not chunk:
                break
            parts.append(chunk)
            pos += len(chunk)
        return b"".join(parts)

    cpdef close(self):
        if self.fd >= 0:
            fd = self.fd
            self.fd = -1
            os.close(fd)

    def __dealloc__(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PreparedBody(bytes):
    """The body of a 200 answer whose header list stays the same between requests.

    While a handler answers with ``(200, body.headers, body)`` and that list is
    unchanged, a keep-alive GET gets the response bytes encoded once per Date
    second. ``headers`` is shared by every such answer: copy it to change it.
    """

    def __new__(cls, list headers, body):
        self = bytes.__new__(cls, body)
        self.headers = headers
        self.nheaders = len(headers)
        self.wire_date = None
        self.wire = None
        self.file = None
        return self

    def keep_in(self, FileBody file):
        """Send the body with sendfile from ``file`` (a sealed copy of these
        bytes, e.g. a memfd) where the connection is a plain socket; ``wire`` is
        then the head alone. The body keeps ``file`` open while it lives."""
        if file.offset != 0 or file.length != len(self):
            raise ValueError("the file must hold exactly the body")
        self.file = file
        self.wire_date = None
        self.wire = None


cdef bint sendfile_prepared(int sock_fd, bytes head, object body, transport):
    """Write a prepared answer on a socket whose transport holds nothing: the
    head (with MSG_MORE) and the body by sendfile from ``body.file``, both
    without blocking. What the socket does not take now goes through the
    transport, in order. False when nothing could be sent this way (the caller
    writes the answer itself)."""
    cdef FileBody file = <FileBody>body.file
    cdef Py_ssize_t size = PyBytes_GET_SIZE(head), n
    n = simplew_send_more(sock_fd, PyBytes_AS_STRING(head), size)
    if n <= 0:
        return False                # EAGAIN, or an error the transport will meet
    if n < size:
        transport.write(head[n:])
        transport.write(body)
        return True
    size = file.length
    n = simplew_sendfile(sock_fd, file.fd, 0, size)
    if n < size:                    # the socket is full (or failing): the rest from memory
        transport.write(memoryview(body)[n if n > 0 else 0:])
    return True


cdef class _FileStream:
    """Writes one FileBody to a transport after the response head.

    With sendfile, the bytes go to a duplicate of the socket's descriptor (a
    transport refuses a writer on its own one) once the transport has written
    everything it holds, so the order on the wire stays head, then body.
    ``done(ok)`` is called once: ok is False when the body could not be
    written in full (the connection must then be closed).
    """
    cdef object transport
    cdef object loop
    cdef FileBody body
    cdef HttpStats stats
    cdef object done
    cdef long long pos
    cdef long long end
    cdef readonly long long sent
    cdef int sock_fd
    cdef bint paused
    cdef bint finished

    def __init__(self, transport, loop, FileBody body, HttpStats stats, done):
        self.transport = transport
        self.loop = loop
        self.body = body
        self.stats = stats
        self.done = done
        self.pos = body.offset
        self.end = body.offset + body.length
        self.sock_fd = -1

    cdef start(self):
        sock = None
        if self.transport.get_extra_info("sslcontext") is None:
            sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                self.sock_fd = os.dup(sock.fileno())
                self.loop.add_writer(self.sock_fd, self._on_writable)
                return
            except Exception:
                if self.sock_fd >= 0:
                    os.close(self.sock_fd)
                    self.sock_fd = -1
        self.pump()

    def _on_writable(self):
        if self.finished:
            return
        if self.transport.get_write_buffer_size() > 0:
            return                  # the head (or an earlier answer) is still going out
        cdef long long turn = SENDFILE_TURN, n
        while self.pos < self.end:
            try:
                n = _sendfile(self.sock_fd, self.body.fd, self.pos,
                              min(self.end - self.pos, SENDFILE_CHUNK))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.finish(False)
                return
            if n == 0:              # the file shrank under us
                self.finish(False)
                return
            self.pos += n
            self.sent += n
            self.stats.bytes_out += n
            turn -= n
            if turn <= 0:
                return              # called again while the socket takes more
        self.finish(True)

    cdef pump(self):
        """Read and write chunks until the transport pauses or the body is out."""
        cdef Py_ssize_t n
        while self.pos < self.end and not self.paused and not self.finished:
            try:
                chunk = _pread(self.body.fd, min(self.end - self.pos, READ_CHUNK), self.pos)
            except OSError:
                self.finish(False)
                return
            n = len(chunk)
            if n == 0:
                self.finish(False)
                return
            self.pos += n
            self.sent += n
            self.stats.bytes_out += n
            self.transport.write(chunk)
        if self.pos >= self.end and not self.finished:
            self.finish(True)

    cdef pause(self):
        self.paused = True

    cdef resume(self):
        self.paused = False
        if self.sock_fd < 0 and not self.finished:
            self.pump()

    cdef finish(self, bint ok):
        if self.finished:
            return
        self.cancel()
        self.done(ok)

    cdef cancel(self):
        """Stop writing and free the descriptors; ``done`` is not called."""
        self.finished = True
        if self.sock_fd >= 0:
            fd = self.sock_fd
            self.sock_fd = -1
            try:
                self.loop.remove_writer(fd)
            finally:
                os.close(fd)
        self.body.close()
