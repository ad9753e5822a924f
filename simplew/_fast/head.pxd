cdef class RequestScanner:
    # limits (those of HttpLimits): a request over one of them is left to httptools
    cdef public Py_ssize_t max_url_size
    cdef public Py_ssize_t max_header_size
    cdef public Py_ssize_t max_body_size
    # the last request scanned
    cdef readonly str method
    cdef readonly str path
    cdef readonly str query
    cdef readonly dict headers
    cdef readonly bytes body
    cdef readonly bint keep_alive
    cdef readonly bint http10

    cdef Py_ssize_t scan(self, bytes data, Py_ssize_t start) except -1
