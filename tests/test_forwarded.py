"""``Forwarded`` and ``X-Forwarded-For`` from trusted proxies (``forwarded_allow_ips``).

Two real servers on loopback: one trusts 127.0.0.1 (the tests' own address)
and 10.0.0.0/8, so the headers the tests send are believed; the other trusts
only 10.0.0.0/8, so they are ignored. A request's client is the right-most
address that is not a trusted proxy; what is not an address is never taken.
"""

from __future__ import annotations

import json
import logging

import pytest

from helpers import wait_until
from httpclient import Conn, get, upgrade_request
from simplew import SimpleWServer


def start(**options) -> SimpleWServer:
    server = SimpleWServer("127.0.0.1", 0, **options)
    server.map_get("/fw-who", lambda request: {"remote": list(request.remote)})
    sessions = server.sessions_seen = []
    server.add_websocket_content("/fw-ws", on_message=lambda session, data: None)
    server.add_sse_content("/fw-events")
    server.on_connect(sessions.append)
    server.start()
    return server


@pytest.fixture(scope="module")
def trusted():
    server = start(forwarded_allow_ips=["127.0.0.1", "10.0.0.0/8"], max_connections_per_ip=1)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def untrusted():
    server = start(forwarded_allow_ips="10.0.0.0/8, 192.168.0.0/16")
    yield server
    server.stop()


def who(port: int, headers: str, conn: Conn | None = None) -> tuple[str, int]:
    """The remote of a request with ``headers`` (lines, each ending with CRLF)."""
    own = conn is None
    conn = conn or Conn(port)
    try:
        conn.send(get("/fw-who", headers))
        response = conn.read_response()
        assert response.status == 200, response
        host, remote_port = json.loads(response.body)["remote"]
        return host, remote_port
    finally:
        if own:
            conn.close()


TRUSTED = {
    "one address": ("X-Forwarded-For: 203.0.113.1\r\n", ("203.0.113.1", 0)),
    "a spoofed left part": (
        "X-Forwarded-For: 198.51.100.1, 203.0.113.1, 10.0.0.2\r\n",
        ("203.0.113.1", 0),
    ),
    "every hop trusted": ("X-Forwarded-For: 10.0.0.3,10.0.0.2\r\n", ("10.0.0.3", 0)),
    "two header lines": (
        "X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: 203.0.113.2\r\n",
        ("203.0.113.2", 0),
    ),
    "IPv4 with a port": ("X-Forwarded-For: 203.0.113.3:5678\r\n", ("203.0.113.3", 5678)),
    "IPv6": ("X-Forwarded-For: 2001:DB8::1\r\n", ("2001:db8::1", 0)),
    "IPv6 with a port": ("X-Forwarded-For: [2001:db8::2]:8080\r\n", ("2001:db8::2", 8080)),
    "Forwarded": (
        "Forwarded: for=192.0.2.60;proto=http;by=203.0.113.43\r\n",
        ("192.0.2.60", 0),
    ),
    "Forwarded, quoted IPv6": (
        'Forwarded: For="[2001:db8:cafe::17]:4711"\r\n',
        ("2001:db8:cafe::17", 4711),
    ),
    "Forwarded chain": ("Forwarded: for=198.51.100.7, for=10.0.0.9\r\n", ("198.51.100.7", 0)),
    "Forwarded before X-Forwarded-For": (
        "X-Forwarded-For: 203.0.113.9\r\nForwarded: for=198.51.100.8\r\n",
        ("198.51.100.8", 0),
    ),
    "garbage behind a trusted hop": ("X-Forwarded-For: garbage, 10.0.0.2\r\n", ("10.0.0.2", 0)),
    "obfuscated behind a trusted hop": (
        "Forwarded: for=_hidden, for=10.0.0.5\r\n",
        ("10.0.0.5", 0),
    ),
}

PEER = {
    "no header": "",
    "not an address": "X-Forwarded-For: not-an-ip\r\n",
    "out of range": "X-Forwarded-For: 300.1.1.1\r\n",
    "bad port": "X-Forwarded-For: 203.0.113.4:99999\r\n",
    "unclosed bracket": "X-Forwarded-For: [2001:db8::3\r\n",
    "unknown": "Forwarded: for=unknown\r\n",
    "no for": "Forwarded: proto=https;by=10.0.0.1\r\n",
    "empty": "X-Forwarded-For: \r\n",
    "a long list of garbage": "X-Forwarded-For: " + ",".join(["x"] * 2000) + "\r\n",
}


@pytest.mark.parametrize("case", list(TRUSTED))
def test_a_trusted_peer_names_the_client(trusted, case):
    headers, client = TRUSTED[case]
    assert who(trusted.port, headers) == client


@pytest.mark.parametrize("case", list(PEER))
def test_what_names_no_address_leaves_the_peer(trusted, case):
    conn = Conn(trusted.port)
    try:
        assert who(trusted.port, PEER[case], conn) == conn.sock.getsockname()
    finally:
        conn.close()
    # counted as 127.0.0.1 against max_connections_per_ip=1: gone before the next test
    wait_until(lambda: "127.0.0.1" not in trusted.admission.open_by_host())


@pytest.mark.parametrize("headers", [TRUSTED["one address"][0], TRUSTED["Forwarded"][0]])
def test_an_untrusted_peer_is_not_believed(untrusted, headers):
    conn = Conn(untrusted.port)
    try:
        assert who(untrusted.port, headers, conn) == conn.sock.getsockname()
    finally:
        conn.close()


def test_the_access_log_and_a_session_show_the_client(trusted, caplog):
    caplog.set_level(logging.INFO, logger="simplew.access")
    request, _ = upgrade_request("/fw-ws")
    request = request.replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 203.0.113.5\r\n\r\n")
    conn = Conn(trusted.port)
    try:
        conn.send(request)
        assert conn.read_response().status == 101
        session = wait_until(lambda: trusted.sessions_seen and trusted.sessions_seen[-1])
        assert session.remote_address == ("203.0.113.5", 0)
    finally:
        conn.close()

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "simplew.access"]

    wait_until(lambda: any(line.startswith('203.0.113.5:0 "GET /fw-ws"') for line in lines()))
    wait_until(lambda: any(line.startswith("203.0.113.5:0 WebSocket connect") for line in lines()))


def test_an_event_stream_has_the_client_address(trusted):
    conn = Conn(trusted.port)
    try:
        conn.send(get("/fw-events", "X-Forwarded-For: 203.0.113.6\r\n"))
        while b"\r\n\r\n" not in conn.buf:
            conn._fill()
        assert conn.buf.startswith(b"HTTP/1.1 200"), conn.buf
        wait_until(
            lambda: any(s.remote_address == ("203.0.113.6", 0) for s in trusted.sessions),
            what="an event stream from 203.0.113.6",
        )
    finally:
        conn.close()


def test_the_per_ip_limit_counts_the_first_requests_client(trusted):
    first = Conn(trusted.port)
    try:
        assert who(trusted.port, "X-Forwarded-For: 203.0.113.60\r\n", first)[0] == "203.0.113.60"
        second = Conn(trusted.port)
        try:
            second.send(get("/fw-who", "X-Forwarded-For: 203.0.113.60\r\n"))
            assert second.read_response().status == 503
        finally:
            second.close()
        assert who(trusted.port, "X-Forwarded-For: 203.0.113.61\r\n")[0] == "203.0.113.61"
    finally:
        first.close()
    wait_until(lambda: "203.0.113.60" not in trusted.admission.open_by_host())
