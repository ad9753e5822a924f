"""``GET /healthz`` and Prometheus text metrics at ``GET /metrics``.

The counters live as C integers on the objects that see the events (the Hub
for multicasts, each WebSocket Endpoint for messages, bytes, slow clients and
handler errors, :class:`simplew._fast.http.HttpStats` for HTTP requests,
:class:`simplew._fast.admission.Admission` for open and refused connections): the
per-message cost is one integer increment. They are read, and summed over the
endpoints, only when ``/metrics`` is scraped.
"""

from __future__ import annotations

from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEALTHY = (
    200,
    [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
    b'{"status":"ok"}',
)

# name, type, help
_METRICS = (
    ("simplew_connections", "gauge", "Connected sessions: WebSocket and event streams."),
    ("simplew_http_connections", "gauge", "Open HTTP/1.1 connections (not yet upgraded)."),
    ("simplew_http_requests_total", "counter", "HTTP requests answered (upgrades included)."),
    ("simplew_messages_in_total", "counter", "WebSocket messages received."),
    (
        "simplew_messages_out_total",
        "counter",
        "WebSocket messages queued to clients (a multicast counts once per client).",
    ),
    (
        "simplew_bytes_in_total",
        "counter",
        "Bytes received: WebSocket frame payloads, HTTP request bytes.",
    ),
    ("simplew_bytes_out_total", "counter", "Bytes sent: WebSocket frames, HTTP responses."),
    ("simplew_multicasts_total", "counter", "Multicasts (to every client or to a room)."),
    (
        "simplew_multicast_compressions_total",
        "counter",
        "Multicast payloads compressed (once per window size in use).",
    ),
    (
        "simplew_dropped_slow_clients_total",
        "counter",
        "WebSocket clients closed (1008) for lagging over max_write_buffer.",
    ),
    (
        "simplew_dropped_messages_total",
        "counter",
        "Messages not sent to slow clients (slow_client_policy 'skip', or the one that closed them).",
    ),
    ("simplew_handler_errors_total", "counter", "HTTP and WebSocket handlers that raised."),
    (
        "simplew_open_connections",
        "gauge",
        "Open client connections, HTTP and WebSocket, counted against max_connections.",
    ),
    (
        "simplew_rejected_connections_total",
        "counter",
        "Connections answered 503 for exceeding max_connections.",
    ),
    (
        "simplew_rejected_connections_per_ip_total",
        "counter",
        "Connections answered 503 for exceeding max_connections_per_ip.",
    ),
    (
        "simplew_rejected_origins_total",
        "counter",
        "WebSocket upgrades refused (403) for an Origin not allowed.",
    ),
    (
        "simplew_proxy_refused_total",
        "counter",
        "Connections closed for a PROXY protocol header missing, malformed or from an "
        "untrusted peer.",
    ),
    (
        "simplew_ping_timeouts_total",
        "counter",
        "WebSocket clients closed (1011) for not answering a ping within ping_timeout.",
    ),
    ("simplew_streams", "gauge", "Streams (rooms, and the broadcast stream) this process knows."),
    ("simplew_history_publications", "gauge", "Publications held for recovery, all streams."),
    ("simplew_history_bytes", "gauge", "Bytes of the publications held for recovery, all streams."),
    (
        "simplew_rooms_refused_total",
        "counter",
        "Room joins refused: the session was in max_rooms_per_session rooms already.",
    ),
    (
        "simplew_streams_followed",
        "gauge",
        "Streams this process receives from Redis now (rooms with a local session, and the "
        "broadcast stream).",
    ),
    (
        "simplew_stream_received_total",
        "counter",
        "Publications this process received from Redis (rate() of it: per second).",
    ),
    (
        "simplew_streams_recovered_total",
        "counter",
        "Streams of resumed sessions continued with what they missed.",
    ),
    (
        "simplew_streams_lost_total",
        "counter",
        "Streams of resumed sessions that could not be continued (the client reloads that room).",
    ),
    (
        "simplew_stream_resets_total",
        "counter",
        "Streams moved to a new epoch while clients were in them (a reset sent to each).",
    ),
    ("simplew_sessions_recovered_total", "counter", "simplew.v2 sessions resumed."),
    (
        "simplew_sessions_reset_total",
        "counter",
        "simplew.v2 clients that asked to resume and got a fresh session.",
    ),
    (
        "simplew_sessions_expired_total",
        "counter",
        "simplew.v2 sessions ended for good (the recovery window passed; without Redis).",
    ),
    (
        "simplew_resumes_refused_total",
        "counter",
        "Resumes refused: the connection did not prove the session's user.",
    ),
    (
        "simplew_tokens_expired_total",
        "counter",
        "WebSocket connections closed (4001) because their JWT expired without a refresh.",
    ),
    (
        "simplew_token_refreshes_total",
        "counter",
        "Valid token refreshes of simplew.v2 connections.",
    ),
    (
        "simplew_token_refreshes_refused_total",
        "counter",
        "Token refreshes refused (invalid, or another user's token): closed with 4003.",
    ),
)


def collect(server: Any) -> dict[str, Any]:
    """The current values: an int, or a dict of label value → int for ``protocol``."""
    ws = {
        "messages_in": 0,
        "messages_out": 0,
        "bytes_in": 0,
        "bytes_out": 0,
        "dropped_slow_clients": 0,
        "dropped_messages": 0,
        "handler_errors": 0,
    }
    context = server.context
    for endpoint in [*context.endpoints.values(), *server.sse_endpoints]:
        for key in ws:
            ws[key] += getattr(endpoint, key, 0)
    http = server.http_stats
    hub = server.hub
    admission = server.admission
    recovery = getattr(server, "recovery", None)
    store = None if recovery is None else recovery.store
    return {
        "simplew_connections": len(hub),
        "simplew_http_connections": len(context.http_connections),
        "simplew_http_requests_total": http.requests,
        "simplew_messages_in_total": ws["messages_in"],
        "simplew_messages_out_total": ws["messages_out"],
        "simplew_bytes_in_total": {"websocket": ws["bytes_in"], "http": http.bytes_in},
        "simplew_bytes_out_total": {"websocket": ws["bytes_out"], "http": http.bytes_out},
        "simplew_multicasts_total": getattr(hub, "multicasts", 0),
        "simplew_multicast_compressions_total": getattr(hub, "compressions", 0),
        "simplew_dropped_slow_clients_total": ws["dropped_slow_clients"],
        "simplew_dropped_messages_total": ws["dropped_messages"],
        "simplew_handler_errors_total": ws["handler_errors"] + http.handler_errors,
        "simplew_open_connections": admission.open_connections,
        "simplew_rejected_connections_total": admission.rejected_total,
        "simplew_rejected_connections_per_ip_total": admission.rejected_per_ip,
        "simplew_rejected_origins_total": admission.rejected_origins,
        "simplew_proxy_refused_total": 0 if context.proxies is None else context.proxies.refused,
        "simplew_ping_timeouts_total": getattr(server.heartbeat, "dropped", 0),
        "simplew_streams": 0 if recovery is None else len(recovery.streams),
        "simplew_history_publications": 0 if recovery is None else recovery.streams.entries,
        "simplew_history_bytes": 0 if recovery is None else recovery.streams.bytes,
        "simplew_rooms_refused_total": hub.rooms_refused,
        "simplew_streams_followed": 0 if store is None else store.followed,
        "simplew_stream_received_total": 0 if store is None else store.received,
        "simplew_streams_recovered_total": 0 if recovery is None else recovery.streams_recovered,
        "simplew_streams_lost_total": 0 if recovery is None else recovery.streams_lost,
        "simplew_stream_resets_total": 0 if recovery is None else recovery.stream_resets,
        "simplew_sessions_recovered_total": 0 if recovery is None else recovery.sessions_recovered,
        "simplew_sessions_reset_total": 0 if recovery is None else recovery.sessions_reset,
        "simplew_sessions_expired_total": 0 if recovery is None else recovery.sessions_expired,
        "simplew_resumes_refused_total": 0 if recovery is None else recovery.resumes_refused,
        "simplew_tokens_expired_total": server.credentials.expired,
        "simplew_token_refreshes_total": server.credentials.refreshed,
        "simplew_token_refreshes_refused_total": server.credentials.refused,
    }


def render(server: Any) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of :func:`collect`."""
    values = collect(server)
    lines = []
    for name, kind, text in _METRICS:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        value = values[name]
        if isinstance(value, dict):
            for label, v in value.items():
                lines.append(f'{name}{{protocol="{label}"}} {v}')
        else:
            lines.append(f"{name} {value}")
    lines.append("")
    return "\n".join(lines).encode("utf-8")


def metrics_response(server: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    return 200, [("Content-Type", CONTENT_TYPE), ("Cache-Control", "no-store")], render(server)
