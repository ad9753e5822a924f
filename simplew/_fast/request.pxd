cdef class Request:
    # untyped, as the Python class they replace: any values a caller gives are kept
    cdef public object method
    cdef public object path
    cdef public object query_string
    cdef public object headers
    cdef public object body
    cdef public object remote     # the client's (host, port), or None when unknown
    cdef object _query


cdef Request new_request(str method, str path, str query_string, dict headers, body)
