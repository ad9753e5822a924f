# cython: language_level=3
"""Who gets in: connection limits and the Origin check of WebSocket upgrades.

One :class:`Admission` per server, read by every :class:`simplew._fast.http.HttpProtocol`.

Connection limits: each accepted socket asks :meth:`Admission.admit` once, as
it is accepted. An admitted connection holds its slot until its socket is
closed, whichever way it closes, and whether it is still HTTP or was handed
to picows as a WebSocket (:class:`CountedWSProtocol` gives the slot back
then). A connection over a limit holds no slot: it is answered 503 and
closed (see http.pyx).

Origins: an entry is ``scheme://host[:port]`` (scheme and host compared
without regard to case, the scheme's default port implied), ``scheme://*.domain[:port]``
(any subdomain of domain, at any depth, but not domain itself), or ``*``
(every origin).
"""
from urllib.parse import urlsplit

from picows.picows import WSProtocol

cdef dict _DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


cdef tuple _parse_origin(str text):
    """(scheme, host, port) of an origin, port None when the scheme has no default;
    None when ``text`` is no ``scheme://host[:port]``."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if (not parts.scheme or not host or parts.path or parts.query or parts.fragment
            or parts.username is not None or parts.password is not None):
        return None
    scheme = parts.scheme.lower()
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    return scheme, host, port


cdef class OriginPolicy:
    """The origins allowed to open a WebSocket (see the module docstring for the entries)."""

    def __init__(self, entries):
        if isinstance(entries, str):
            entries = [entries]
        exact = set()
        wildcards = []
        cdef bint any_origin = False
        self.entries = tuple(entries)
        for entry in self.entries:
            if not isinstance(entry, str):
                raise TypeError(f"an allowed origin is a str, not {type(entry).__name__}")
            if entry.strip() == "*":
                any_origin = True
                continue
            parsed = _parse_origin(entry)
            if parsed is None:
                raise ValueError(f"an allowed origin looks like https://example.com[:port] or "
                                 f"https://*.example.com, not {entry!r}")
            scheme, host, port = parsed
            if host.startswith("*."):
                suffix = host[1:]               # ".example.com"
                if "*" in suffix or len(suffix) < 2:
                    raise ValueError(f"a wildcard origin is https://*.domain, not {entry!r}")
                wildcards.append((scheme, suffix, port))
            elif "*" in host:
                raise ValueError(f"'*' may only start the host of an allowed origin: {entry!r}")
            else:
                exact.add(f"{scheme}://{host}:{port}")
        self._exact = frozenset(exact)
        self._wildcards = None if any_origin else tuple(wildcards)

    cpdef bint allows(self, str origin):
        """True when ``origin`` (an ``Origin`` header value) matches an entry."""
        if self._wildcards is None:
            return True
        parsed = _parse_origin(origin)
        if parsed is None:
            return False
        scheme, host, port = parsed
        if f"{scheme}://{host}:{port}" in self._exact:
            return True
        for w_scheme, suffix, w_port in self._wildcards:
            if scheme == w_scheme and port == w_port and host.endswith(suffix):
                return True                     # suffix starts with "." and host is longer
        return False

    def __repr__(self):
        return f"OriginPolicy({list(self.entries)!r})"


cdef Py_ssize_t _limit(value, str name) except -1:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, not {value!r}")
    return value


cdef class Admission:
    """Connection limits, allowed origins and their counters, for one server.

    ``max_connections`` bounds the open connections (HTTP and WebSocket
    together), ``max_connections_per_ip`` those of one peer address; None
    means no limit. Both may be changed while serving: connections already
    admitted keep their slots.
    """

    def __init__(self, max_connections=None, max_connections_per_ip=None, allowed_origins=None):
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self._per_ip = {}
        self.origins = None if allowed_origins is None else OriginPolicy(allowed_origins)
        self.endpoint_origins = {}

    @property
    def max_connections(self):
        return self._max_total or None

    @max_connections.setter
    def max_connections(self, value):
        self._max_total = _limit(value, "max_connections")

    @property
    def max_connections_per_ip(self):
        return self._max_per_ip or None

    @max_connections_per_ip.setter
    def max_connections_per_ip(self, value):
        self._max_per_ip = _limit(value, "max_connections_per_ip")
        self.tracks_hosts = self._max_per_ip > 0

    cdef bint admit(self, object host) except -1:
        """Take a slot for a new connection from ``host`` (None unless ``tracks_hosts``);
        False, and counted as a rejection, when a limit is reached."""
        if self._max_total and self.open_connections >= self._max_total:
            self.rejected_total += 1
            return False
        if host is not None:
            n = self._per_ip.get(host, 0)
            if self._max_per_ip and n >= self._max_per_ip:
                self.rejected_per_ip += 1
                return False
            self._per_ip[host] = n + 1
        self.open_connections += 1
        return True

    cpdef release(self, object host):
        """Give back the slot :meth:`admit` gave for ``host``."""
        self.open_connections -= 1
        if host is not None:
            n = self._per_ip.pop(host, 0) - 1
            if n > 0:
                self._per_ip[host] = n

    def open_by_host(self):
        """{host: open connections} of the peers counted against ``max_connections_per_ip``."""
        return dict(self._per_ip)

    cdef OriginPolicy origin_policy(self, str endpoint_path):
        policy = self.endpoint_origins.get(endpoint_path)
        return self.origins if policy is None else policy

    def allows_origin(self, str endpoint_path, origin):
        """True when a WebSocket upgrade on ``endpoint_path`` with this ``Origin``
        header (None: absent) may proceed."""
        if origin is None:
            return True
        policy = self.origin_policy(endpoint_path)
        return policy is None or policy.allows(origin)


class CountedWSProtocol(WSProtocol):
    """picows's server protocol that gives its admission slot back when its socket closes."""
    __slots__ = ("admission", "host")

    def connection_lost(self, exc):
        admission = self.admission
        if admission is not None:
            self.admission = None
            admission.release(self.host)
        WSProtocol.connection_lost(self, exc)
