"""Hardening for the open internet: request framing, WebSocket upgrade checks
(version, Origin), connection limits and dead-peer pings, against a real server.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import ExitStack

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from helpers import wait_until
from httpclient import Conn, assert_rejected, assert_serving, get, upgrade_request
from rawclient import RawClient
from simplew import SimpleWServer
from simplew._fast.admission import OriginPolicy
from simplew.cli import UsageError, build_parser, configure

TIMEOUT = 5.0


@pytest.fixture
def ws_connect():
    """``ws_connect(url, **options)`` → an open websockets client, closed at the end of the test."""
    with ExitStack() as stack:
        yield lambda url, **options: stack.enter_context(
            connect(url, open_timeout=TIMEOUT, **options)
        )


def echo(session, data) -> None:
    session.send(data)


@pytest.fixture
def serve(make_server, site):
    """``serve(**options)`` → a started server with ``site`` at / and an echo endpoint at /ws;
    ``endpoints={path: allowed_origins}`` adds more echo endpoints."""

    def start(endpoints=None, on_disconnect=None, **options):
        def configure(s):
            s.add_static_content(str(site), "/")
            s.add_websocket_content("/ws", on_message=echo)
            for path, origins in (endpoints or {}).items():
                s.add_websocket_content(path, on_message=echo, allowed_origins=origins)
            if on_disconnect is not None:
                s.on_disconnect(on_disconnect)

        return make_server(configure, **options)

    return start


@pytest.fixture
def server(serve):
    return serve()


# -- request framing ------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET /hello.txt HTTP/1.1\r\n\r\n",
        b"GET /hello.txt HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET /hello.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /hello.txt HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ],
    ids=["no-host", "two-equal-hosts", "two-hosts", "http10-two-hosts", "upgrade-no-host"],
)
def test_host_header_missing_or_repeated_gets_400(server, data):
    response = assert_rejected(server.port, data, 400)
    assert b"Host" in response.body


def test_http10_without_host_is_served(server):
    conn = Conn(server.port)
    conn.send(b"GET /hello.txt HTTP/1.0\r\n\r\n")
    assert conn.read_response().body == b"hello\n"
    conn.close()


def test_empty_host_is_one_host(server):
    conn = Conn(server.port)
    conn.send(b"GET /hello.txt HTTP/1.1\r\nHost:\r\n\r\n")
    assert conn.read_response().status == 200
    conn.close()


SMUGGLED = b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "data",
    [
        b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 36\r\n\r\n"
        + SMUGGLED,
        b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length : 36\r\n\r\n" + SMUGGLED,
        b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"
        + SMUGGLED,
        b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nX: y\r\n Content-Length: 36\r\n\r\n" + SMUGGLED,
        b"GET /hello.txt HTTP/1.1\nHost: x\n\n",
        b"GET /hello.txt HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
        b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10000000000000000001\r\nx\r\n0\r\n\r\n",
        b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffffffffff\r\nx\r\n0\r\n\r\n",
    ],
    ids=[
        "cl-then-te",
        "te-then-cl",
        "two-content-lengths",
        "space-before-colon-cl",
        "space-before-colon-te",
        "te-identity-chunked",
        "te-chunked-identity",
        "obs-fold",
        "obs-fold-content-length",
        "bare-lf",
        "bare-lf-in-a-header",
        "chunk-size-overflow-dec",
        "chunk-size-overflow-hex",
    ],
)
def test_request_smuggling_vectors_get_400_and_nothing_after_them_is_answered(server, data):
    # assert_rejected also checks that no second response (to a smuggled request) follows
    assert_rejected(server.port, data, 400)


# -- upgrade checks -------------------------------------------------------------


def raw_upgrade(port: int, extra: str = "", version: str | None = "13", path: str = "/ws") -> Conn:
    conn = Conn(port)
    head = (
        f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    if version is not None:
        head += f"Sec-WebSocket-Version: {version}\r\n"
    conn.send((head + extra + "\r\n").encode())
    return conn


@pytest.mark.parametrize("version", ["8", "14", None])
def test_websocket_version_other_than_13_gets_426_naming_13(server, version):
    conn = raw_upgrade(server.port, version=version)
    response = conn.read_response()
    assert response.status == 426
    assert response.headers["sec-websocket-version"] == "13"
    assert response.headers["connection"] == "close"
    assert conn.at_eof()
    conn.close()
    assert_serving(server.port)


def ws_url(server, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def refused_status(url: str, origin: str | None) -> int | None:
    """The HTTP status refusing a websockets client's upgrade, or None when it opened."""
    try:
        with connect(url, origin=origin, open_timeout=TIMEOUT) as ws:
            ws.send("hi")
            assert ws.recv(timeout=TIMEOUT) == "hi"
    except InvalidStatus as exc:
        return exc.response.status_code
    return None


def test_origins_are_checked_on_upgrades(serve):
    server = serve(
        endpoints={"/open": ["*"], "/partner": ["https://partner.example"]},
        allowed_origins=[
            "https://app.example.com",
            "http://localhost:8080",
            "https://*.example.org",
        ],
    )
    url = ws_url(server)
    assert refused_status(url, "https://app.example.com") is None
    assert refused_status(url, "HTTPS://App.Example.COM") is None
    assert refused_status(url, "https://app.example.com:443") is None
    assert refused_status(url, "http://localhost:8080") is None
    assert refused_status(url, "https://a.example.org") is None
    assert refused_status(url, "https://a.b.example.org") is None
    assert refused_status(url, None) is None  # not a browser: allowed
    for origin in (
        "https://evil.example",
        "http://app.example.com",
        "https://app.example.com:8443",
        "http://localhost",
        "https://example.org",
        "https://evil-example.org",
        "https://a.example.org.evil",
        "null",
    ):
        assert refused_status(url, origin) == 403, origin
    # per endpoint: its own list replaces the server's
    assert refused_status(ws_url(server, "/open"), "https://evil.example") is None
    assert refused_status(ws_url(server, "/partner"), "https://partner.example") is None
    assert refused_status(ws_url(server, "/partner"), "https://app.example.com") == 403
    assert server.admission.rejected_origins == 9
    # a refusal leaves the connection closed and the server serving; two Origin headers fail
    conn = raw_upgrade(
        server.port, "Origin: https://app.example.com\r\nOrigin: https://evil.example\r\n"
    )
    assert conn.read_response().status == 403
    assert conn.at_eof()
    conn.close()
    assert_serving(server.port)


def test_every_origin_is_allowed_by_default(server):
    assert refused_status(ws_url(server), "https://anywhere.example") is None


@pytest.mark.parametrize(
    "entry",
    [
        "example.com",
        "https://example.com/path",
        "https://",
        "https://ex*ample.com",
        "https://*.*.example.com",
        "https://user@example.com",
        "null",
    ],
)
def test_malformed_allowed_origins_are_refused_at_configuration(entry):
    with pytest.raises(ValueError):
        OriginPolicy([entry])
    with pytest.raises(ValueError):
        SimpleWServer("127.0.0.1", 0, allowed_origins=[entry])


def test_wildcard_origin_matches_subdomains_only():
    policy = OriginPolicy(["https://*.example.com"])
    assert policy.allows("https://a.example.com")
    assert policy.allows("https://a.b.example.com")
    assert policy.allows("https://A.EXAMPLE.com:443")
    assert not policy.allows("https://example.com")
    assert not policy.allows("https://evil-example.com")
    assert not policy.allows("https://a.example.com.evil.net")
    assert not policy.allows("http://a.example.com")
    assert not policy.allows("https://a.example.com:444")
    assert not policy.allows("not an origin")


def test_cli_options_set_origins_and_limits(monkeypatch, site):
    monkeypatch.setenv("SIMPLEW_ALLOWED_ORIGIN", "https://a.example, https://*.b.example")
    args = build_parser().parse_args(
        [
            "serve",
            "--ws",
            "/ws",
            "--allowed-origin",
            "https://c.example",
            "--max-connections",
            "100",
            "--max-connections-per-ip",
            "5",
        ]
    )
    server = configure(args)
    assert server.admission.origins.entries == (
        "https://a.example",
        "https://*.b.example",
        "https://c.example",
    )
    assert server.admission.max_connections == 100
    assert server.admission.max_connections_per_ip == 5
    monkeypatch.delenv("SIMPLEW_ALLOWED_ORIGIN")
    for bad in (["--allowed-origin", "example.com"], ["--max-connections", "0"]):
        with pytest.raises(UsageError):
            configure(build_parser().parse_args(["serve", "--ws", "/ws", *bad]))
    plain = configure(build_parser().parse_args(["serve", "--ws", "/ws"]))
    assert plain.admission.origins is None
    assert plain.admission.max_connections is None
    assert plain.admission.max_connections_per_ip is None


# -- connection limits ------------------------------------------------------------


def http_conn(port: int, source: str = "127.0.0.1") -> Conn:
    conn = Conn.__new__(Conn)
    conn.sock = socket.create_connection(
        ("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0)
    )
    conn.buf = b""
    return conn


def assert_refused_503(conn: Conn, data: bytes) -> None:
    conn.send(data)
    response = conn.read_response()
    assert response.status == 503, response
    assert response.headers["connection"] == "close"
    assert conn.at_eof()
    conn.close()


def test_max_connections_refuses_the_extra_connection_with_503(serve, ws_connect):
    server = serve(max_connections=3, metrics=True)
    admitted = [http_conn(server.port) for _ in range(2)]
    ws = ws_connect(ws_url(server))
    wait_until(lambda: server.admission.open_connections == 3)
    assert_refused_503(http_conn(server.port), get("/hello.txt"))
    key_request, _ = upgrade_request("/ws")
    assert_refused_503(http_conn(server.port), key_request)
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(server), open_timeout=TIMEOUT)
    assert refused.value.response.status_code == 503
    # the admitted ones are served as before
    for conn in admitted:
        conn.send(get("/hello.txt"))
        assert conn.read_response().body == b"hello\n"
    ws.send("still here")
    assert ws.recv(timeout=TIMEOUT) == "still here"
    assert server.admission.rejected_total == 3
    # a slot given back is taken again
    ws.close()
    wait_until(lambda: server.admission.open_connections == 2)
    conn = http_conn(server.port)
    conn.send(get("/metrics"))
    text = conn.read_response().body.decode()
    assert "simplew_open_connections 3\n" in text
    assert "simplew_rejected_connections_total 3\n" in text
    for c in admitted + [conn]:
        c.close()
    wait_until(lambda: server.admission.open_connections == 0)


def test_a_connection_over_the_limit_that_sends_nothing_is_closed_soon(serve):
    server = serve(max_connections=1)
    server.limits.linger_timeout = 0.3
    first = http_conn(server.port)
    wait_until(lambda: server.admission.open_connections == 1)
    silent = http_conn(server.port)
    start = time.monotonic()
    assert silent.at_eof(timeout=TIMEOUT)
    assert time.monotonic() - start < 1.5
    silent.close()
    first.send(get("/hello.txt"))
    assert first.read_response().status == 200
    first.close()


def test_max_connections_per_ip_counts_each_address(serve):
    server = serve(max_connections_per_ip=2)
    mine = [http_conn(server.port, "127.0.0.1") for _ in range(2)]
    wait_until(lambda: server.admission.open_by_host() == {"127.0.0.1": 2})
    assert_refused_503(http_conn(server.port, "127.0.0.1"), get("/hello.txt"))
    other = http_conn(server.port, "127.0.0.2")
    other.send(get("/hello.txt"))
    assert other.read_response().status == 200
    assert server.admission.rejected_per_ip == 1
    assert server.admission.open_by_host() == {"127.0.0.1": 2, "127.0.0.2": 1}
    for conn in mine + [other]:
        conn.close()
    wait_until(lambda: server.admission.open_by_host() == {})


@pytest.mark.parametrize("use_aiofastnet", [False, True], ids=["uvloop", "aiofastnet"])
def test_counts_return_to_zero_after_every_kind_of_close(serve, use_aiofastnet):
    disconnected = []
    server = serve(
        on_disconnect=lambda session: disconnected.append(session.id),
        max_connections=1000,
        max_connections_per_ip=1000,
        allowed_origins=["https://ok.example"],
        use_aiofastnet=use_aiofastnet,
        # aiofastnet reports a reset that follows a partial request only when
        # the server next writes: here, the 408 after header_timeout
        header_timeout=0.5 if use_aiofastnet else 30,
    )
    admission = server.admission
    for _ in range(40):
        conn = http_conn(server.port)  # client closes a keep-alive connection
        conn.send(get("/hello.txt"))
        conn.read_response()
        conn.close()
        conn = http_conn(server.port)  # server closes (Connection: close)
        conn.send(get("/hello.txt", "Connection: close\r\n"))
        conn.read_response()
        assert conn.at_eof()
        conn.close()
        assert_rejected(server.port, b"GET / HTTP/1.1\r\n\r\n", 400)  # error, lingering close
        conn = http_conn(server.port)  # reset in the middle of a request
        conn.send(b"GET /hello.txt HT")
        conn.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        conn.close()
        conn = raw_upgrade(server.port, "Origin: https://evil.example\r\n")  # 403
        assert conn.read_response().status == 403
        conn.close()
        conn = raw_upgrade(server.port, version="8")  # 426
        assert conn.read_response().status == 426
        conn.close()
        with connect(ws_url(server), origin="https://ok.example", open_timeout=TIMEOUT) as ws:
            ws.send("x")  # WebSocket, closed by the client
            ws.recv(timeout=TIMEOUT)
        raw = RawClient(server.port, "/ws")  # WebSocket, reset by the client
        raw.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        raw.close()
        conn = raw_upgrade(server.port)  # upgrade, then gone before the 101 is read
        conn.close()
        conn = http_conn(server.port)  # picows refuses the handshake (no key)
        conn.send(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert conn.read_response().status == 400
        conn.close()
    wait_until(lambda: len(disconnected) == 120 and len(server.sessions) == 0)
    wait_until(lambda: admission.open_connections == 0)
    assert admission.open_by_host() == {}
    assert admission.rejected_total == 0 and admission.rejected_per_ip == 0
    assert len(server._http_connections) == 0


FLOOD = textwrap.dedent("""
    import asyncio, json, sys

    PORT, ATTEMPTS, BATCH = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    SOURCES = sys.argv[4].split(",")
    REQUEST = b"GET /hello.txt HTTP/1.1\\r\\nHost: flood\\r\\n\\r\\n"

    async def attempt(source):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", PORT,
                                                           local_addr=(source, 0))
        except OSError:
            return "connect-error", None
        try:
            writer.write(REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\\r\\n\\r\\n"), 10)
            return head.split(b" ", 2)[1].decode(), writer
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            writer.close()
            return type(exc).__name__, None

    async def main():
        statuses, batches = {}, []
        for start in range(0, ATTEMPTS, BATCH):
            results = await asyncio.gather(*(attempt(SOURCES[i % len(SOURCES)])
                                             for i in range(start, min(ATTEMPTS, start + BATCH))))
            ok = {}
            for i, (status, writer) in enumerate(results):
                statuses[status] = statuses.get(status, 0) + 1
                if status == "200":
                    source = SOURCES[(start + i) % len(SOURCES)]
                    ok[source] = ok.get(source, 0) + 1
            batches.append(ok)
            for status, writer in results:     # all of a batch's admitted ones were open together
                if writer is not None:
                    writer.close()
        print(json.dumps({"statuses": statuses, "batches": batches}))

    asyncio.run(main())
""")


def test_limits_hold_under_a_flood_while_a_websocket_client_is_served(serve, ws_connect):
    server = serve(max_connections=100, max_connections_per_ip=40)
    admission = server.admission
    ws = ws_connect(ws_url(server), source_address=("127.0.0.2", 0))
    wait_until(lambda: admission.open_connections == 1)
    flood = subprocess.Popen(
        [
            sys.executable,
            "-c",
            FLOOD,
            str(server.port),
            "5000",
            "250",
            "127.0.0.1,127.0.0.1,127.0.0.1,127.0.0.3,127.0.0.4",
        ],  # 150 + 50 + 50 a batch
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak_total = peak_host = rounds = 0
    try:
        while flood.poll() is None:
            peak_total = max(peak_total, admission.open_connections)
            by_host = admission.open_by_host()
            peak_host = max([peak_host, *(n for h, n in by_host.items() if h != "127.0.0.2")])
            rounds += 1
            if rounds % 20 == 0:  # served during the flood: multicast and echo
                server.multicast_text(f"multicast {rounds}")
                assert ws.recv(timeout=TIMEOUT) == f"multicast {rounds}"
                ws.send(f"echo {rounds}")
                assert ws.recv(timeout=TIMEOUT) == f"echo {rounds}"
            time.sleep(0.002)
        out, err = flood.communicate(timeout=60)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    assert flood.returncode == 0, err
    report = json.loads(out)
    statuses = report["statuses"]
    assert set(statuses) <= {"200", "503"}, statuses
    assert sum(statuses.values()) == 5000
    assert statuses.get("200", 0) > 0 and statuses.get("503", 0) > 0
    for ok in report["batches"]:  # what was admitted at once stayed within limits
        assert sum(ok.values()) <= 99 and max(ok.values(), default=0) <= 40, ok
    assert peak_total <= 100 and peak_host <= 40
    assert rounds >= 20  # the client was served during the flood
    assert admission.rejected_total + admission.rejected_per_ip == statuses["503"]
    assert admission.rejected_total > 0 and admission.rejected_per_ip > 0  # both limits bit
    # and after it
    server.multicast_text("after")
    assert ws.recv(timeout=TIMEOUT) == "after"
    wait_until(lambda: admission.open_connections == 1)
    assert admission.open_by_host() == {"127.0.0.2": 1}
    with connect(ws_url(server), open_timeout=TIMEOUT) as other:
        other.send("new")
        assert other.recv(timeout=TIMEOUT) == "new"
    ws.close()
    wait_until(lambda: admission.open_connections == 0)


# -- dead peers ---------------------------------------------------------------------


def test_pings_are_on_by_default_every_20_seconds():
    heartbeat = SimpleWServer("127.0.0.1", 0).heartbeat
    assert (heartbeat.interval, heartbeat.timeout) == (20, 20)
    assert SimpleWServer("127.0.0.1", 0, ping_interval=None).heartbeat is None
    assert SimpleWServer("127.0.0.1", 0, ping_interval=5, ping_timeout=9).heartbeat.timeout == 5
    with pytest.raises(ValueError):
        SimpleWServer("127.0.0.1", 0, ping_interval=0)


def test_peers_that_never_answer_pings_are_dropped_and_their_sessions_end(serve, ws_connect):
    gone = []
    both_gone = threading.Event()

    def on_disconnect(session):
        gone.append(session.id)
        if len(gone) == 2:
            both_gone.set()

    server = serve(on_disconnect=on_disconnect, ping_interval=0.5, ping_timeout=0.5, metrics=True)
    live = ws_connect(ws_url(server))  # answers pings by itself
    dead = RawClient(server.port, "/ws")  # completes the upgrade, then nothing
    mute = RawClient(server.port, "/ws")  # reads, but never answers a ping
    start = time.monotonic()
    assert mute.recv()[0] == 0x9  # a PING within ping_interval
    assert mute.recv_close() == (1011, "no answer to a ping within 0.5 s")
    mute.expect_eof()
    assert both_gone.wait(0.5 + 0.5 + 1.0), "a silent peer is still connected"
    assert time.monotonic() - start <= 0.5 + 0.5 + 1.0
    dead.sock.settimeout(TIMEOUT)
    with pytest.raises((EOFError, ConnectionResetError)):
        while True:  # a PING, the CLOSE, then the end
            dead._read(len(dead.buf) + 1)
    for raw in (dead, mute):
        raw.close()
    assert len(server.sessions) == 1  # the answering client stays
    live.send("alive")
    assert live.recv(timeout=TIMEOUT) == "alive"
    assert server.heartbeat.dropped == 2
    conn = http_conn(server.port)
    conn.send(get("/metrics"))
    assert "simplew_ping_timeouts_total 2\n" in conn.read_response().body.decode()
    conn.close()
    live.close()
    wait_until(lambda: server.admission.open_connections == 0)
