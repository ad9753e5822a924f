from simplew._fast.admission cimport Admission
from simplew._fast.proxy cimport ProxyPolicy


cdef class HttpLimits:
    cdef public Admission admission
    cdef public Py_ssize_t max_body_size
    cdef public Py_ssize_t max_header_size
    cdef public Py_ssize_t max_url_size
    cdef double _idle_timeout
    cdef double _header_timeout
    cdef double _linger_timeout


cdef class HttpStats:
    cdef public long long requests        # requests answered, upgrades and rejections included
    cdef public long long bytes_in        # bytes received on HTTP connections
    cdef public long long bytes_out       # bytes of the responses written
    cdef public long long handler_errors  # HTTP handlers that raised (counted by simplew.rest)


cdef class ServerContext:
    cdef readonly object app              # the facade: handed to controllers, never called
    cdef public object hub                # simplew._fast.hub.Hub
    cdef public dict endpoints            # WebSocket path -> simplew._fast.connection.Endpoint
    cdef public object http_handler       # request -> (status, headers, body) or an awaitable
    cdef public object session_opened     # callable(session): admitted to the hub
    cdef public object session_closed     # callable(session): gone from the hub
    cdef public object identify           # callable(session): its user, from its credentials
    cdef public object protocol_message   # callable(session, text): a simplew.v2 client message
    cdef public object recovery           # simplew.recovery.Recovery, or None
    cdef public object jwt_auth           # simplew.auth.JwtAuth, or None
    cdef public HttpLimits limits
    cdef public HttpStats http_stats
    cdef public object access_log         # the simplew.access logger, or None: off
    cdef public dict picows_options       # keyword arguments of picows's WSProtocol
    cdef public set http_connections      # open HttpProtocol connections
    cdef public ProxyPolicy proxies       # trusted proxies and the PROXY protocol, or None

    cpdef object endpoint_for(self, str path)
