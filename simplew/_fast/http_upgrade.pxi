# The WebSocket upgrade of simplew._fast.http (included there): which upgrade
# requests are WebSocket ones, the checks they must pass, and the hand-off of
# the socket to a picows WSProtocol. HttpProtocol decides when (an upgrade
# waits its turn in the answer queue: HttpProtocol._upgrade and _handoff);
# these functions keep no connection state.
from picows.picows import WSAutoPingStrategy

from simplew._fast.admission cimport OriginPolicy
from simplew._fast.admission import CountedWSProtocol
from simplew._fast.gate import WriteGate

picows_log = logging.getLogger("simplew.picows")
picows_adapter = logging.LoggerAdapter(picows_log, {})


cdef bint _asks_websocket(request):
    """A GET whose Upgrade header names websocket (other upgrades are ignored)."""
    tokens = [t.strip() for t in request.headers.get("upgrade", "").lower().split(",")]
    return request.method == "GET" and "websocket" in tokens


cdef tuple _upgrade_refusal(request, endpoint, HttpLimits limits):
    """Check the WebSocket version and the Origin: None when the upgrade may go
    on, else the answer refusing it, ``(status, message, headers)``."""
    headers = request.headers
    version = headers.get("sec-websocket-version")
    if version is None or version.strip(" \t") != "13":
        return (426, "this server speaks WebSocket version 13", [("Sec-WebSocket-Version", "13")])
    origin = headers.get("origin")
    cdef Admission admission = limits.admission
    if origin is None or admission is None:
        return None             # no Origin: not a browser, nothing to check
    cdef OriginPolicy policy = admission.origin_policy(endpoint.path)
    if policy is None or policy.allows(origin):
        return None
    admission.rejected_origins += 1
    return (403, "this origin may not open a WebSocket here", None)


cdef bytes _request_head(request):
    """The upgrade request's line and headers, re-serialised from what httptools parsed."""
    lines = [f"{request.method} {request.url} HTTP/1.1\r\n"]
    for name, value in request.headers.items():
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


cdef object _websocket_protocol(request, endpoint, opts):
    """A picows WSProtocol whose listener ``endpoint`` makes for ``request``."""
    return CountedWSProtocol(
        None, None, False,
        lambda upgrade: endpoint.connect(request),
        picows_adapter,                 # an adapter: picows makes no Logger per connection
        True,                           # disconnect on exception
        opts["handshake_timeout"],
        False, 0.0, 0.0,                # picows's auto-ping: one Heartbeat pings every client
        WSAutoPingStrategy.PING_WHEN_IDLE,
        True,                           # auto pong
        endpoint.max_message_size + 1024,   # a compressed frame may be a bit larger
        None,
        opts["read_buffer_size"])


cdef _start_websocket(protocol, transport, loop, bytes data, opts):
    """Give the socket to ``protocol`` and feed it ``data`` (the request head and
    what the client sent after it): picows answers the handshake."""
    transport.set_protocol(protocol)
    protocol.connection_made(WriteGate(transport, loop))
    _feed(protocol, data)
    heartbeat = opts["heartbeat"]
    if heartbeat is not None:
        heartbeat.wake(loop)


cdef _feed(protocol, bytes data):
    """Give ``data`` to a BufferedProtocol as if it had come from the socket."""
    cdef Py_ssize_t pos = 0, n
    cdef Py_ssize_t total = len(data)
    while pos < total:
        buf = protocol.get_buffer(total - pos)
        n = min(len(buf), total - pos)
        buf[:n] = data[pos:pos + n]
        protocol.buffer_updated(n)
        pos += n
