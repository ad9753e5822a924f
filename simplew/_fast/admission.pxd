cdef class OriginPolicy:
    cdef frozenset _exact        # "scheme://host:port" of the exact entries
    cdef tuple _wildcards        # (scheme, ".suffix", port) of the "*." entries
    cdef readonly tuple entries  # the entries as given
    cpdef bint allows(self, str origin)


cdef class Admission:
    cdef Py_ssize_t _max_total                  # 0: no limit
    cdef Py_ssize_t _max_per_ip                 # 0: no limit
    cdef dict _per_ip                           # host -> admitted connections (per-IP limit only)
    cdef public OriginPolicy origins            # server-wide, or None: every origin
    cdef public dict endpoint_origins           # endpoint path -> OriginPolicy
    cdef readonly long long open_connections
    cdef readonly long long rejected_total
    cdef readonly long long rejected_per_ip
    cdef public long long rejected_origins
    cdef readonly bint tracks_hosts             # admit() needs the peer's host

    cdef bint admit(self, object host) except -1
    cpdef release(self, object host)
    cdef OriginPolicy origin_policy(self, str endpoint_path)
