"""/healthz, Prometheus /metrics and the access log, against a real server."""

from __future__ import annotations

import json
import logging
import re
import socket
from http.client import HTTPConnection
from typing import Any

import pytest
from websockets.sync.client import connect

from helpers import wait_until
from rawclient import RawClient
from simplew import Controller, WebSocketMessage, route

TIMEOUT = 5.0


def get(
    port: int,
    path: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
):
    conn = HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("content-type"), response.read()
    finally:
        conn.close()


def scrape(port: int, path: str = "/metrics") -> dict[str, float]:
    """The samples of a Prometheus text page: {"name" or 'name{labels}': value}."""
    status, content_type, body = get(port, path)
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    samples = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


@route("/metrics-ctl")
class MetricsController(Controller):
    @route("WEBSOCKET", "/echo")
    def echo(self, message: WebSocketMessage) -> Any:
        return message.body

    @route("WEBSOCKET", "/boom")
    def boom(self, message: WebSocketMessage) -> None:
        raise RuntimeError("boom")

    @route("GET", "/boom")
    def http_boom(self) -> None:
        raise RuntimeError("http boom")


# -- healthz ----------------------------------------------------------------------


def test_healthz_is_on_by_default(make_server):
    server = make_server()
    status, content_type, body = get(server.port, "/healthz")
    assert (status, content_type, json.loads(body)) == (200, "application/json", {"status": "ok"})
    assert get(server.port, "/healthz", "HEAD")[0] == 200
    assert get(server.port, "/metrics")[0] == 404  # metrics are opt-in


def test_healthz_and_metrics_are_switchable(make_server):
    server = make_server(healthz=False, metrics=True)
    assert get(server.port, "/healthz")[0] == 404
    assert "simplew_connections" in scrape(server.port)
    other = make_server(
        lambda s: (s.enable_metrics("/internal/metrics"), s.enable_healthz("/live")), healthz=False
    )
    assert get(other.port, "/live")[0] == 200
    assert get(other.port, "/metrics")[0] == 404
    assert "simplew_http_requests_total" in scrape(other.port, "/internal/metrics")


# -- metrics ----------------------------------------------------------------------


EXPECTED = {
    "simplew_connections",
    "simplew_http_connections",
    "simplew_http_requests_total",
    "simplew_messages_in_total",
    "simplew_messages_out_total",
    'simplew_bytes_in_total{protocol="websocket"}',
    'simplew_bytes_in_total{protocol="http"}',
    'simplew_bytes_out_total{protocol="websocket"}',
    'simplew_bytes_out_total{protocol="http"}',
    "simplew_multicasts_total",
    "simplew_multicast_compressions_total",
    "simplew_resumes_refused_total",
    "simplew_tokens_expired_total",
    "simplew_token_refreshes_total",
    "simplew_token_refreshes_refused_total",
    "simplew_dropped_slow_clients_total",
    "simplew_dropped_messages_total",
    "simplew_handler_errors_total",
    "simplew_open_connections",
    "simplew_rejected_connections_total",
    "simplew_rejected_connections_per_ip_total",
    "simplew_rejected_origins_total",
    "simplew_proxy_refused_total",
    "simplew_ping_timeouts_total",
    "simplew_streams",
    "simplew_history_publications",
    "simplew_history_bytes",
    "simplew_sessions_recovered_total",
    "simplew_sessions_reset_total",
    "simplew_sessions_expired_total",
    "simplew_rooms_refused_total",
    "simplew_streams_followed",
    "simplew_stream_received_total",
    "simplew_streams_recovered_total",
    "simplew_streams_lost_total",
    "simplew_stream_resets_total",
}


def test_metrics_page_is_valid_prometheus_text(make_server):
    server = make_server(metrics=True)
    status, _, body = get(server.port, "/metrics")
    text = body.decode()
    assert text.endswith("\n")
    for line in text.splitlines():
        assert re.fullmatch(
            r"# (HELP|TYPE) simplew_\w+ .+|simplew_\w+(\{protocol=\"\w+\"\})? \d+", line
        ), line
    samples = scrape(server.port)
    assert set(samples) == EXPECTED
    assert "# TYPE simplew_connections gauge" in text
    assert "# TYPE simplew_messages_in_total counter" in text


def test_counters_follow_websocket_and_http_traffic(make_server, caplog):
    caplog.set_level(logging.CRITICAL, logger="simplew.websocket")
    caplog.set_level(logging.CRITICAL, logger="simplew.rest")
    server = make_server(
        lambda s: (
            s.add_websocket_content(MetricsController, "/ws"),
            s.add_dynamic_content(MetricsController, "/api"),
        ),
        metrics=True,
    )
    before = scrape(server.port)
    assert before["simplew_connections"] == 0
    assert before["simplew_messages_in_total"] == 0
    url = f"ws://127.0.0.1:{server.port}/ws"
    with connect(url, open_timeout=TIMEOUT) as a, connect(url, open_timeout=TIMEOUT) as b:
        wait_until(lambda: len(server.hub) == 2)
        for i in range(3):
            a.send(json.dumps({"url": "/ws/metrics-ctl/echo", "body": i}))
            assert a.recv(timeout=TIMEOUT) == str(i)
        b.send(json.dumps({"url": "/ws/metrics-ctl/boom"}))
        assert json.loads(b.recv(timeout=TIMEOUT))["error"] == "handler_error"
        server.multicast_text("x" * 100)
        server.multicast_binary(b"y" * 10)
        for ws in (a, b):
            assert ws.recv(timeout=TIMEOUT) == "x" * 100
            assert ws.recv(timeout=TIMEOUT) == b"y" * 10
        assert get(server.port, "/api/metrics-ctl/boom")[0] == 500
        during = scrape(server.port)
    assert during["simplew_connections"] == 2
    assert during["simplew_messages_in_total"] == 4
    # 3 echoes + 1 error reply + 2 multicasts x 2 clients
    assert during["simplew_messages_out_total"] == 8
    assert during["simplew_multicasts_total"] == 2
    assert during["simplew_handler_errors_total"] == 2  # one WebSocket, one HTTP
    sent = sum(len(json.dumps({"url": "/ws/metrics-ctl/echo", "body": i})) for i in range(3))
    assert during['simplew_bytes_in_total{protocol="websocket"}'] == sent + len(
        json.dumps({"url": "/ws/metrics-ctl/boom"})
    )
    # frames: "0" "1" "2" (3 bytes each), the error reply, 2 x (102 + 12)
    assert during['simplew_bytes_out_total{protocol="websocket"}'] > 2 * (102 + 12) + 9
    # the scrape before, 2 upgrades, 1 /api request and the scrape in progress
    assert during["simplew_http_requests_total"] == 5
    assert during['simplew_bytes_in_total{protocol="http"}'] > 0
    assert during['simplew_bytes_out_total{protocol="http"}'] > 0
    wait_until(lambda: len(server.hub) == 0)
    assert scrape(server.port)["simplew_connections"] == 0


def test_dropped_slow_clients_are_counted(make_server):
    server = make_server(
        lambda s: s.add_websocket_content("/quiet", on_message=lambda *a: None),
        metrics=True,
        max_write_buffer=64 * 1024,
    )
    sleeper = RawClient(server.port, "/quiet")  # never reads
    try:
        wait_until(lambda: len(server.hub) == 1)
        chunk = "s" * 65536
        for _ in range(200):  # 13 MB: more than socket buffers
            server.multicast_text(chunk)
            if len(server.hub) == 0:
                break
        wait_until(lambda: scrape(server.port)["simplew_dropped_slow_clients_total"] == 1)
    finally:
        sleeper.close()


# -- access log -------------------------------------------------------------------

LINE = re.compile(r'127\.0\.0\.1:\d+ "(\S+) (\S+)" (\d{3}) (\d+) (\d+\.\d\d)ms')


def access_lines(caplog) -> list[logging.LogRecord]:
    """The HTTP request lines of the access log."""
    return [
        r
        for r in caplog.records
        if r.name == "simplew.access" and "WebSocket" not in r.getMessage()
    ]


def test_one_access_line_per_websocket_connect_and_disconnect(make_server, caplog):
    caplog.set_level(logging.INFO, logger="simplew.access")
    server = make_server(
        lambda s: s.add_websocket_content("/echo", on_message=lambda c, d: c.send(d))
    )
    with connect(f"ws://127.0.0.1:{server.port}/echo", open_timeout=TIMEOUT) as ws:
        session_id = server.sessions[0].id if server.sessions else None
        for i in range(5):
            ws.send(str(i))
            assert ws.recv(timeout=TIMEOUT) == str(i)
    wait_until(lambda: len(server.hub) == 0)
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "simplew.access" and "WebSocket" in r.getMessage()
    ]
    assert len(lines) == 2, lines
    assert "WebSocket connect /echo" in lines[0] and "WebSocket disconnect /echo" in lines[1]
    assert lines[0].startswith("127.0.0.1:") and session_id in lines[0]


def test_one_access_log_line_per_http_request(make_server, caplog):
    caplog.set_level(logging.INFO, logger="simplew.access")
    server = make_server(
        lambda s: (
            s.add_websocket_content("/echo", on_message=lambda c, d: c.send(d)),
            s.map_post("/items", lambda body: {"n": len(body)}),
        )
    )
    get(server.port, "/healthz")
    get(server.port, "/items?x=1", "POST", b"[1,2,3]", {"Content-Type": "application/json"})
    get(server.port, "/nowhere")
    with connect(f"ws://127.0.0.1:{server.port}/echo", open_timeout=TIMEOUT) as ws:
        for i in range(5):
            ws.send(str(i))
            assert ws.recv(timeout=TIMEOUT) == str(i)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"BROKEN\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    wait_until(lambda: len(access_lines(caplog)) >= 5)
    records = access_lines(caplog)
    parsed = [LINE.fullmatch(r.getMessage()) for r in records]
    assert all(parsed), [r.getMessage() for r in records]
    assert [m.group(1, 2, 3, 4) for m in parsed[:4]] == [
        ("GET", "/healthz", "200", "15"),
        ("POST", "/items?x=1", "200", "7"),
        ("GET", "/nowhere", "404", "10"),
        ("GET", "/echo", "101", "0"),  # the upgrade, never the messages
    ]
    assert parsed[4].group(1, 2, 3) == ("-", "-", "400")  # a request that did not parse
    assert len(records) == 5
    assert all(r.levelno == logging.INFO for r in records)
    first = records[1]
    assert (first.method, first.path, first.status, first.bytes) == ("POST", "/items?x=1", 200, 7)
    assert first.client.startswith("127.0.0.1:") and first.duration_ms >= 0


def test_access_log_can_be_switched_off(make_server, caplog):
    caplog.set_level(logging.INFO, logger="simplew.access")
    server = make_server(access_log=False)
    assert get(server.port, "/healthz")[0] == 200
    assert access_lines(caplog) == []
    assert server.http_stats.requests == 1  # still counted


def test_async_request_durations_are_measured(make_server, caplog):
    import asyncio

    caplog.set_level(logging.INFO, logger="simplew.access")

    async def slow() -> str:
        await asyncio.sleep(0.05)
        return "done"

    server = make_server(lambda s: s.map_get("/slow", slow))
    assert get(server.port, "/slow")[2] == b"done"
    wait_until(lambda: len(access_lines(caplog)) == 1)
    assert access_lines(caplog)[0].duration_ms >= 45


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_ops_paths_leave_other_methods_alone(make_server, path):
    server = make_server(metrics=True)
    assert get(server.port, path, "POST", b"")[0] == 404
