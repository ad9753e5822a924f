# cython: language_level=3
"""What the lower layers need of a server, in one typed object.

The facade (:class:`simplew.SimpleWServer`) builds one :class:`ServerContext`
when it starts and hands it to every lower layer: the HTTP front
(:mod:`simplew._fast.http`), the WebSocket endpoints
(:mod:`simplew._fast.connection`, :mod:`simplew._fast.router`), the recovery
code (:mod:`simplew.recovery`) and the REST router (:mod:`simplew.rest`).
None of them holds the server itself: what they call back (the HTTP answer,
the session hooks) is a plain callable set here, and what they read (limits,
counters, the JWT validator) is a typed field.

Imports go one way: ``simplew/*.py`` (the facade) imports ``simplew._fast``;
nothing under ``simplew._fast`` imports a ``simplew/*.py`` module.
"""


cdef class ServerContext:
    """One server's hub, endpoints, callbacks, limits and counters.

    ``app`` is the facade object; the lower layers only hand it to controllers
    as ``self.server`` and never call it. Every other field is a plain value
    or callable the facade sets before it starts serving:

    - ``hub``: the :class:`~simplew._fast.hub.Hub` of connected sessions;
    - ``endpoints``: WebSocket endpoint path -> :class:`~simplew._fast.connection.Endpoint`;
    - ``http_handler(request)``: the answer to a plain HTTP request,
      ``(status, headers, body)`` or an awaitable of it;
    - ``session_opened(session)`` / ``session_closed(session)``: after a
      WebSocket session is admitted to the hub / once it has left it;
    - ``identify(session)``: sets ``session.user`` from the upgrade's
      credentials as the connection opens, before any admission or resume;
    - ``protocol_message(session, text)``: a ``simplew.v2`` client message that
      is for the protocol (it starts with ``{"type":``), such as a token refresh;
    - ``recovery``: the :class:`simplew.recovery.Recovery` that admits
      ``simplew.v2`` sessions, or None;
    - ``jwt_auth``: the :class:`simplew.auth.JwtAuth` of ``set_token``, or None
      (read at each use: ``set_token`` may change it while serving);
    - ``limits`` (:class:`HttpLimits`), ``http_stats`` (:class:`HttpStats`);
    - ``access_log``: the ``simplew.access`` logger, or None when off;
    - ``picows_options``: keyword arguments of picows's ``WSProtocol``;
    - ``http_connections``: the open HTTP connections (for shutdown);
    - ``proxies``: the :class:`~simplew._fast.proxy.ProxyPolicy` of
      ``forwarded_allow_ips`` and ``proxy_protocol``, or None: the peer is the client.
    """

    def __init__(self, app=None, hub=None, HttpLimits limits=None, HttpStats http_stats=None):
        self.app = app
        self.hub = hub
        self.endpoints = {}
        self.http_handler = None
        self.session_opened = None
        self.session_closed = None
        self.identify = None
        self.protocol_message = None
        self.recovery = None
        self.jwt_auth = None
        self.limits = HttpLimits() if limits is None else limits
        self.http_stats = HttpStats() if http_stats is None else http_stats
        self.access_log = None
        self.picows_options = {}
        self.http_connections = set()
        self.proxies = None

    cpdef object endpoint_for(self, str path):
        """The WebSocket endpoint at ``path`` (a trailing ``/`` ignored), or None."""
        return self.endpoints.get(path if path == "/" else path.rstrip("/"))


cdef double _seconds(value):
    """A timeout setting as seconds; None or 0 means none (0.0)."""
    if value is None:
        return 0.0
    cdef double v = float(value)
    if v < 0:
        raise ValueError(f"a timeout cannot be negative: {value!r}")
    return v


cdef class HttpLimits:
    """Size limits and timeouts of the HTTP layer, set by the server facade.

    Sizes are bytes; timeouts are seconds, ``None`` or 0 for none.
    ``max_header_size`` bounds the header fields, and also what a client may
    send without completing a header line (a header that never ends).
    ``admission`` holds the connection limits and allowed origins (None: none).
    """

    def __init__(self, max_body_size=1 << 20, max_header_size=16384, max_url_size=8192,
                 idle_timeout=60.0, header_timeout=30.0, linger_timeout=2.0, admission=None):
        self.admission = admission
        self.max_body_size = max_body_size
        self.max_header_size = max_header_size
        self.max_url_size = max_url_size
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.linger_timeout = linger_timeout

    @property
    def idle_timeout(self):
        """Seconds a keep-alive connection may wait for its next request (a body: next bytes)."""
        return self._idle_timeout or None

    @idle_timeout.setter
    def idle_timeout(self, value):
        self._idle_timeout = _seconds(value)

    @property
    def header_timeout(self):
        """Seconds from the first byte of a request until its headers must be complete."""
        return self._header_timeout or None

    @header_timeout.setter
    def header_timeout(self, value):
        self._header_timeout = _seconds(value)

    @property
    def linger_timeout(self):
        """Seconds a connection closed after an error keeps draining what the client sends."""
        return self._linger_timeout or None

    @linger_timeout.setter
    def linger_timeout(self, value):
        self._linger_timeout = _seconds(value)


cdef class HttpStats:
    """Counters of the HTTP layer (one per server), read by ``/metrics``."""
