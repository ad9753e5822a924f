cdef class Request:
    cdef public str method
    cdef public str path
    cdef public str query_string
    cdef public dict headers
    cdef public object body
    cdef object _query


cdef Request new_request(str method, str path, str query_string, dict headers, body)
