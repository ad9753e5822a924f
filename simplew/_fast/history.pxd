cdef class History:
    cdef readonly Py_ssize_t max_count    # entries held at most
    cdef readonly Py_ssize_t max_bytes    # payload bytes held at most
    cdef readonly Py_ssize_t count
    cdef readonly Py_ssize_t bytes
    cdef readonly long long top           # the last offset appended (0: none yet)
    cdef list _rooms
    cdef list _payloads
    cdef Py_ssize_t _head

    cpdef int append(self, long long offset, object room, bytes payload) except -1
    cdef int _drop_oldest(self) except -1
    cpdef bint covers(self, long long offset)
    cpdef list since(self, long long offset, object rooms)
    cpdef clear(self, long long top=*)
