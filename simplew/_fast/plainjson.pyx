# cython: language_level=3
"""Which values msgspec writes as JSON byte for byte as the standard library does.

simplew answers with compact JSON, non-ASCII kept (``json.dumps(...,
separators=(",", ":"), ensure_ascii=False)``). msgspec writes that several
times faster, and identically for *plain* values: dicts with ``str`` keys,
lists, ``str``, ``int``, ``bool``, ``None``, and floats both libraries print
without an exponent (finite, 1e-4 <= |x| < 1e16, or 0), nested at most 32
deep. Anything else goes through the standard library encoder.
"""

cdef enum:
    MAX_DEPTH = 32


cdef bint _plain(object value, int depth) except -1:
    cdef type kind = type(value)
    cdef double x
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        x = value
        return -1e16 < x < 1e16 and (x >= 1e-4 or x <= -1e-4 or x == 0)
    if depth > MAX_DEPTH:
        return False
    if kind is dict:
        for k, v in (<dict>value).items():
            if type(k) is not str or not _plain(v, depth + 1):
                return False
        return True
    if kind is list:
        for v in <list>value:
            if not _plain(v, depth + 1):
                return False
        return True
    return False


cpdef bint plain(object value) except -1:
    """Whether msgspec writes ``value`` as the standard library encoder does."""
    return _plain(value, 0)
