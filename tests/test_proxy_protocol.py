"""The PROXY protocol on a listener (simplew._fast.proxy, the HTTP front).

A raw socket plays the balancer: it sends a PROXY header (v1 or v2), then an
HTTP request or a WebSocket upgrade; the address the header names is what the
REST request, the access log, ``session.remote_address`` and the per-IP limit
see. A missing, malformed or untrusted header closes the connection, counted
in ``simplew_proxy_refused_total``. With nginx and its stream module, nginx
is the balancer.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from helpers import TIMEOUT, free_port, wait_until
from httpclient import Conn, get
from simplew import SimpleWServer

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def v1(family: str, source: str = "", port: int = 0) -> bytes:
    if family == "UNKNOWN":
        return b"PROXY UNKNOWN\r\n"
    destination = "127.0.0.1" if family == "TCP4" else "::1"
    return f"PROXY {family} {source} {destination} {port} 80\r\n".encode()


def v2(source: str | None, port: int = 0, tlvs: bytes = b"") -> bytes:
    """A v2 header: PROXY from ``source`` (IPv4 or IPv6), or LOCAL when None."""
    if source is None:
        return SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    if ":" in source:
        family, size = socket.AF_INET6, 0x21
        dest = socket.inet_pton(socket.AF_INET6, "::1")
    else:
        family, size = socket.AF_INET, 0x11
        dest = socket.inet_pton(socket.AF_INET, "127.0.0.1")
    block = socket.inet_pton(family, source) + dest + struct.pack("!HH", port, 80) + tlvs
    return SIGNATURE + bytes([0x21, size]) + struct.pack("!H", len(block)) + block


def get_request(path: str = "/pp-who", close: bool = True) -> bytes:
    return get(path, "Connection: close\r\n" if close else "")


def ask(port: int, *pieces: bytes, close: bool = True) -> tuple[int, bytes, Conn]:
    """Send ``pieces`` one by one (each its own segment), then read one answer."""
    conn = Conn(port)
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i, piece in enumerate(pieces):
        if i:
            time.sleep(0.01)  # the header must arrive in pieces: nothing to wait for
        conn.send(piece)
    response = conn.read_response()
    if close:
        conn.close()
    return response.status, response.body, conn


def refused(port: int, data: bytes) -> bool:
    """True when the server closes the connection without answering ``data``."""
    conn = Conn(port)
    try:
        conn.send(data)
        return conn.sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):  # closed before it read everything
        return True
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server():
    sessions = []
    server = SimpleWServer(
        "127.0.0.1",
        0,
        proxy_protocol=True,
        forwarded_allow_ips=["127.0.0.1"],
        max_connections_per_ip=2,
        metrics=True,
    )
    server.map_get("/pp-who", lambda request: {"remote": list(request.remote)})
    server.add_websocket_content("/pp-ws", on_message=lambda session, data: None)
    server.on_connect(sessions.append)
    server.sessions_seen = sessions
    server.start()
    yield server
    server.stop()


def logged(caplog, start: str) -> str:
    """The access log line that starts with ``start`` (it may come just after the answer)."""

    def find() -> str | None:
        lines = [r.getMessage() for r in caplog.records if r.name == "simplew.access"]
        return next((line for line in lines if line.startswith(start)), None)

    return wait_until(find, what=f"an access log line {start!r}")


def refused_total(server: SimpleWServer) -> int:
    return server.context.proxies.refused


CLIENTS = {
    "v1 TCP4": ([v1("TCP4", "203.0.113.7", 40001)], ("203.0.113.7", 40001)),
    "v1 TCP6": ([v1("TCP6", "2001:db8::7", 40002)], ("2001:db8::7", 40002)),
    "v1 UNKNOWN": ([v1("UNKNOWN")], None),
    "v2 TCP4": ([v2("198.51.100.4", 40003)], ("198.51.100.4", 40003)),
    "v2 TCP6 with TLVs": ([v2("2001:db8::8", 40004, b"\x04\x00\x03abc")], ("2001:db8::8", 40004)),
    "v2 LOCAL": ([v2(None)], None),
    "v1 in pieces": (
        [b"PRO", b"XY TCP4 203.0.113.9 127.0", b".0.1 40005 80\r"],
        ("203.0.113.9", 40005),
    ),
    "v2 in pieces": (
        [
            v2("198.51.100.5", 40006)[:7],
            v2("198.51.100.5", 40006)[7:15],
            v2("198.51.100.5", 40006)[15:],
        ],
        ("198.51.100.5", 40006),
    ),
}


@pytest.mark.parametrize("case", list(CLIENTS))
def test_the_header_names_the_client(server, caplog, case):
    caplog.set_level(logging.INFO, logger="simplew.access")
    pieces, client = CLIENTS[case]
    pieces = list(pieces)
    if case.endswith("in pieces") and case.startswith("v1"):
        pieces.append(b"\n" + get_request())  # the header's last byte with the request
    else:
        pieces.append(get_request())
    status, body, conn = ask(server.port, *pieces, close=False)
    local_port = conn.sock.getsockname()[1]
    conn.close()
    assert status == 200
    host, port = json.loads(body)["remote"]
    if client is None:  # UNKNOWN, LOCAL: the balancer's own connection
        assert host == "127.0.0.1" and port == local_port
    else:
        assert (host, port) == client
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        logged(caplog, f'{shown} "GET /pp-who"')


def test_a_websocket_session_has_the_client_address(server, caplog):
    caplog.set_level(logging.INFO, logger="simplew.access")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    sock.sendall(v2("2001:db8::42", 41000))
    with connect(f"ws://127.0.0.1:{server.port}/pp-ws", sock=sock, open_timeout=TIMEOUT):
        session = wait_until(lambda: server.sessions_seen and server.sessions_seen[-1])
        assert session.remote_address == ("2001:db8::42", 41000)
    logged(caplog, "[2001:db8::42]:41000 WebSocket connect /pp-ws")
    logged(caplog, '[2001:db8::42]:41000 "GET /pp-ws"')


def test_the_per_ip_limit_counts_the_client_not_the_balancer(server):
    header = v1("TCP4", "192.0.2.50", 42000)
    held = [ask(server.port, header, get_request(close=False), close=False)[2] for _ in range(2)]
    try:
        assert ask(server.port, header, get_request())[0] == 503  # a third from 192.0.2.50
        status, body, _ = ask(server.port, v1("TCP4", "192.0.2.51", 42001), get_request())
        assert status == 200 and json.loads(body)["remote"] == ["192.0.2.51", 42001]
        assert server.admission.open_by_host().get("192.0.2.50") == 2
    finally:
        for conn in held:
            conn.close()
    wait_until(lambda: "192.0.2.50" not in server.admission.open_by_host())


BAD = {
    "missing": get_request(),
    "not PROXY": b"PROXY? TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
    "bad v1 address": b"PROXY TCP4 203.0.113.999 127.0.0.1 1 80\r\n" + get_request(),
    "bad v1 port": b"PROXY TCP4 203.0.113.9 127.0.0.1 65536 80\r\n",
    "v1 without CRLF": b"PROXY TCP4 203.0.113.9 127.0.0.1 1 80\n",
    "v1 too long": b"PROXY UNKNOWN " + b"x" * 120,
    "v2 version 1": SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),
    "v2 datagram": SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12),
    "v2 short block": SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),
    "v2 too long": SIGNATURE + b"\x21\x11\xff\xff",
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_header_closes_the_connection(server, case):
    before = refused_total(server)
    assert refused(server.port, BAD[case])
    assert refused_total(server) == before + 1
    status, _, _ = ask(server.port, v1("TCP4", "203.0.113.20", 43000), get_request())
    assert status == 200  # others are still served
    status, body, _ = ask(server.port, v1("UNKNOWN"), get_request("/metrics"))
    assert f"simplew_proxy_refused_total {before + 1}" in body.decode()


def test_an_untrusted_peer_is_refused_even_with_a_good_header():
    server = SimpleWServer(
        "127.0.0.1", 0, proxy_protocol=True, forwarded_allow_ips=["10.0.0.0/8"], healthz=True
    )
    server.start()
    try:
        assert refused(server.port, v1("TCP4", "203.0.113.7", 40001) + get_request("/healthz"))
        assert server.context.proxies.refused == 1
    finally:
        server.stop()


def test_settings_that_cannot_work():
    with pytest.raises(ValueError, match="proxy_protocol needs forwarded_allow_ips"):
        SimpleWServer("127.0.0.1", 0, proxy_protocol=True)
    with pytest.raises(ValueError, match="proxy_protocol is for plain TCP"):
        SimpleWServer("127.0.0.1", 0, proxy_protocol=True, forwarded_allow_ips="*", ssl=object())
    with pytest.raises(ValueError, match="a trusted proxy is an address"):
        SimpleWServer("127.0.0.1", 0, forwarded_allow_ips=["10.0.0.0/33"])


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.mark.skipif(
    not Path(NGINX).exists() or not STREAM_MODULE.exists(), reason="nginx's stream module"
)
def test_behind_nginx_as_a_proxy_protocol_balancer(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="simplew.access")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"load_module {STREAM_MODULE};\n"
        f"pid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\n"
        "events { worker_connections 64; }\n"
        "stream { server {\n"
        f"  listen 127.0.0.2:{port};\n"
        f"  proxy_pass 127.0.0.1:{server.port};\n"
        "  proxy_protocol on;\n"
        "} }\n"
    )
    nginx = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off; master_process off;"],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and nginx.poll() is None:
            try:
                socket.create_connection(("127.0.0.2", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        assert nginx.poll() is None, nginx.stderr.read() if nginx.stderr else ""
        # the client connects to nginx from 127.0.0.3; nginx connects from 127.0.0.1
        client = http.client.HTTPConnection(
            "127.0.0.2", port, timeout=TIMEOUT, source_address=("127.0.0.3", 0)
        )
        try:
            client.request("GET", "/pp-who")
            client_port = client.sock.getsockname()[1]
            response = client.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["remote"] == ["127.0.0.3", client_port]
        finally:
            client.close()
        logged(caplog, f'127.0.0.3:{client_port} "GET /pp-who"')
    finally:
        nginx.terminate()
        nginx.wait(10)


def test_the_serve_options(monkeypatch):
    from simplew.cli import UsageError, configure, parse_args

    args = ["serve", "--ws", "/ws", "--forwarded-allow-ips", "10.0.0.0/8, ::1", "--proxy-protocol"]
    options = configure(parse_args(args)).options
    assert options.forwarded_allow_ips == ["10.0.0.0/8", "::1"] and options.proxy_protocol
    monkeypatch.setenv("SIMPLEW_FORWARDED_ALLOW_IPS", "*")
    monkeypatch.setenv("SIMPLEW_PROXY_PROTOCOL", "yes")
    options = configure(parse_args(["serve", "--ws", "/ws"])).options
    assert options.forwarded_allow_ips == ["*"] and options.proxy_protocol
    monkeypatch.delenv("SIMPLEW_FORWARDED_ALLOW_IPS")
    with pytest.raises(UsageError, match="proxy_protocol needs forwarded_allow_ips"):
        configure(parse_args(["serve", "--ws", "/ws"]))
    with pytest.raises(UsageError, match="a trusted proxy is an address"):
        configure(parse_args(["serve", "--ws", "/ws", "--forwarded-allow-ips", "10.0.0.300"]))
