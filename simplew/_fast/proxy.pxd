cdef class ProxyHeader:
    cdef readonly int version             # 1 or 2
    cdef readonly object source           # the client's (host, port), or None: the peer's
    cdef readonly object destination      # the address the client connected to, or None
    cdef readonly Py_ssize_t length       # bytes the header took


cdef class ProxyReader:
    cdef bytearray _buffer                # the start of a header that came in pieces
    cdef readonly bytes rest              # the bytes after the header, once read

    cpdef ProxyHeader feed(self, data)


cdef class ProxyPolicy:
    cdef readonly bint any                # "*": every peer is trusted
    cdef readonly bint protocol           # every connection starts with a PROXY header
    cdef readonly tuple entries           # forwarded_allow_ips as given
    cdef tuple _networks                  # ipaddress networks of the entries
    cdef public long long refused         # connections closed for their PROXY header

    cpdef bint trusts(self, host) except -1
    cpdef object forwarded_client(self, dict headers)
