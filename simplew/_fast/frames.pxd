# Server-side WebSocket frame building (RFC 6455 section 5.2).

cdef bytes build_frame(int opcode, const char* payload, Py_ssize_t size, bint rsv1=*)
cpdef bytes text_frame(str text)
cpdef bytes binary_frame(object data)
cpdef bytes close_frame(int code, str reason=*)
