# permessage-deflate (RFC 7692): negotiated settings, per-connection codecs.

cdef class DeflateSettings:
    cdef readonly bint server_no_context_takeover
    cdef readonly bint client_no_context_takeover
    cdef readonly int server_max_window_bits
    cdef readonly int client_max_window_bits
    cdef readonly tuple key


cdef class Inflater:
    cdef readonly DeflateSettings settings
    cdef readonly Py_ssize_t max_size
    cdef object _decoder
    cdef Py_ssize_t _size
    cdef int _wbits
    cdef bint _fresh_per_message

    cpdef bytes inflate(self, object data, bint fin)
    cpdef reset(self)


cdef class Deflater:
    cdef readonly DeflateSettings settings
    cdef readonly int level
    cdef readonly int mem_level
    cdef object _encoder
    cdef bint _stale

    cpdef bytes deflate(self, object payload)
    cpdef reset(self)


cpdef bytes deflate_standalone(object payload, int wbits=*, int level=*, int mem_level=*)
cpdef bytes deflate_once(object settings, object payload)
