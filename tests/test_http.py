"""The HTTP/1.1 layer (simplew._fast.http) against a real server, over raw sockets.

Requests are written byte for byte so that nothing (no client library) fixes
them up; responses are parsed by httpclient.py. After every bad input a fresh client
must still get 200: one bad connection never hurts the server.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from helpers import BIG_SIZE
from httpclient import Conn, assert_rejected, assert_serving, exchange, get, upgrade_request

# -- WebSocket frames, by hand -------------------------------------------------


def masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    assert len(payload) < 126
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def read_frame(conn: Conn) -> tuple[int, bytes]:
    b0, b1 = conn.read_exact(2)
    assert not b1 & 0x80, "server frames are not masked"
    length = b1 & 0x7F
    if length == 126:
        length = struct.unpack("!H", conn.read_exact(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", conn.read_exact(8))[0]
    return b0 & 0x0F, conn.read_exact(length)


def assert_switched(conn: Conn, accept: str) -> None:
    response = conn.read_response()
    assert response.status == 101, response
    assert response.headers["upgrade"].lower() == "websocket"
    assert response.headers["sec-websocket-accept"] == accept


def assert_echo(conn: Conn, text: str) -> None:
    conn.send(masked_text_frame(text))
    assert read_frame(conn) == (0x1, text.encode())


# -- fixtures -------------------------------------------------------------------


@pytest.fixture
def server(make_server, site):
    def configure(s):
        s.add_static_content(str(site), "/")
        s.add_websocket_content("/ws", on_message=lambda session, data: session.send(data))

    return make_server(configure, max_body_size=1000, max_header_size=2048)


class Recorder:
    """Wraps the server's real http_handler and keeps the requests it saw."""

    def __init__(self, server) -> None:
        self.handler = server.http_handler
        self.requests = []
        server.context.http_handler = self  # what the HTTP front calls

    def __call__(self, request):
        self.requests.append(request)
        if request.path == "/boom":
            raise RuntimeError("handler failure on purpose")
        if request.method == "POST" and request.path == "/echo":
            return 200, [("Content-Type", "application/octet-stream")], request.body
        return self.handler(request)


# -- keep-alive, pipelining, HEAD ------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(server):
    conn = Conn(server.port)
    for _ in range(3):
        conn.send(get("/hello.txt"))
        response = conn.read_response()
        assert response.status == 200
        assert response.body == b"hello\n"
        assert "connection" not in response.headers
    assert conn.still_open()
    conn.close()


def test_pipelined_requests_are_answered_in_order(server):
    conn = Conn(server.port)
    conn.send(get("/a.txt") + get("/missing") + get("/b.txt") + get("/hello.txt"))
    answers = [conn.read_response() for _ in range(4)]
    assert [(r.status, r.body) for r in answers] == [
        (200, b"AAA"),
        (404, b"not found\n"),
        (200, b"BBBB"),
        (200, b"hello\n"),
    ]
    assert conn.still_open()
    conn.close()


def test_many_pipelined_requests_split_anywhere(server):
    data = b"".join(get("/a.txt" if i % 2 else "/b.txt") for i in range(300))
    conn = Conn(server.port)
    for start in range(0, len(data), 997):  # cuts requests at arbitrary bytes
        conn.send(data[start : start + 997])
    bodies = [conn.read_response().body for _ in range(300)]
    assert bodies == [b"AAA" if i % 2 else b"BBBB" for i in range(300)]
    conn.close()


def test_pipelined_large_responses_to_a_client_that_reads_late(server, site):
    # 40 x 512 KiB answers exceed every socket buffer: the server must hold
    # the requests (not the answers) until the client reads, and lose none.
    expected = (site / "big.bin").read_bytes()
    conn = Conn(server.port, timeout=10)
    conn.send(get("/big.bin") * 40 + get("/hello.txt"))
    time.sleep(0.3)
    for _ in range(40):
        response = conn.read_response()
        assert response.status == 200
        assert response.body == expected
    assert conn.read_response().body == b"hello\n"
    assert conn.still_open()
    conn.close()


def test_client_half_close_after_pipelined_requests_still_gets_all_answers(server):
    conn = Conn(server.port, timeout=10)
    conn.send(get("/big.bin") * 8 + get("/a.txt"))
    conn.sock.shutdown(socket.SHUT_WR)
    for _ in range(8):
        assert len(conn.read_response().body) == BIG_SIZE
    assert conn.read_response().body == b"AAA"
    assert conn.at_eof()
    conn.close()


def test_head_sends_headers_and_length_but_no_body(server):
    conn = Conn(server.port)
    conn.send(b"HEAD /hello.txt HTTP/1.1\r\nHost: test\r\n\r\n" + get("/a.txt"))
    head = conn.read_response(head=True)
    assert head.status == 200
    assert head.headers["content-length"] == "6"
    assert head.headers["content-type"].startswith("text/plain")
    # had a body been sent, it would come before the next status line
    after = conn.read_response()
    assert after.status == 200 and after.body == b"AAA"
    conn.close()


def test_head_of_a_missing_path_is_a_bodiless_404(server):
    conn = Conn(server.port)
    conn.send(b"HEAD /missing HTTP/1.1\r\nHost: test\r\n\r\n" + get("/a.txt"))
    head = conn.read_response(head=True)
    assert head.status == 404 and int(head.headers["content-length"]) > 0
    assert conn.read_response().body == b"AAA"
    conn.close()


# -- HTTP/1.0 and Connection: close ----------------------------------------------


def test_http10_closes_after_the_response(server):
    conn = Conn(server.port)
    conn.send(b"GET /hello.txt HTTP/1.0\r\n\r\n")
    response = conn.read_response()
    assert response.status == 200 and response.body == b"hello\n"
    assert response.headers["connection"] == "close"
    assert conn.at_eof()
    conn.close()


def test_http10_keep_alive_stays_open_and_says_so(server):
    conn = Conn(server.port)
    for _ in range(2):
        conn.send(b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        response = conn.read_response()
        assert response.status == 200 and response.body == b"hello\n"
        assert response.headers["connection"].lower() == "keep-alive"
    assert conn.still_open()
    conn.close()


def test_connection_close_is_honoured_and_later_pipelined_requests_ignored(server):
    conn = Conn(server.port)
    conn.send(get("/a.txt", "Connection: close\r\n") + get("/b.txt"))
    response = conn.read_response()
    assert response.body == b"AAA"
    assert response.headers["connection"] == "close"
    assert conn.at_eof()
    conn.close()


# -- request bodies ---------------------------------------------------------------


def test_request_bodies_with_length_and_chunked_reach_the_handler(server):
    recorder = Recorder(server)
    conn = Conn(server.port)
    conn.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world"
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nchunk\r\n7;ext=1\r\ned body\r\n0\r\nX-Trailer: t\r\n\r\n" + get("/a.txt")
    )
    assert conn.read_response().body == b"hello world"
    assert conn.read_response().body == b"chunked body"
    assert conn.read_response().body == b"AAA"
    assert [r.body for r in recorder.requests] == [b"hello world", b"chunked body", b""]
    conn.close()


def test_body_at_the_limit_is_accepted(server):
    Recorder(server)
    body = b"x" * 1000
    response = exchange(
        server.port, b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n" + body
    )
    assert response.status == 200 and response.body == body


def test_expect_100_continue(server):
    Recorder(server)
    conn = Conn(server.port)
    conn.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = conn.read_response()
    assert interim.status == 100
    conn.send(b"data")
    final = conn.read_response()
    assert final.status == 200 and final.body == b"data"
    conn.close()


def test_expect_100_continue_with_a_body_too_large_gets_413_at_once(server):
    assert_rejected(
        server.port,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
        413,
    )


# -- errors: the answer, the close, and the server afterwards ----------------------


@pytest.mark.parametrize(
    "data",
    [
        b"garbage\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a TLS ClientHello
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /a b HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"G\x00T / HTTP/1.1\r\n\r\n",
        b"GET /index.html\x00 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET docs HTTP/1.1\r\n\r\n",
    ],
    ids=lambda d: repr(d[:24]),
)
def test_malformed_request_gets_400_and_the_connection_closes(server, data):
    assert_rejected(server.port, data, 400)


def test_garbage_after_a_good_request_answers_the_request_then_400(server):
    conn = Conn(server.port)
    conn.send(get("/a.txt") + b"\x00\x01\x02 junk\r\n\r\n" + get("/b.txt"))
    assert conn.read_response().body == b"AAA"
    assert conn.read_response().status == 400
    assert conn.at_eof()
    conn.close()
    assert_serving(server.port)


def test_404_keeps_the_connection(server):
    conn = Conn(server.port)
    conn.send(get("/nothing/here"))
    response = conn.read_response()
    assert response.status == 404
    assert conn.still_open()
    conn.send(get("/a.txt"))
    assert conn.read_response().body == b"AAA"
    conn.close()


def test_405_has_allow(server):
    conn = Conn(server.port)
    conn.send(
        b"POST /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
        b"DELETE /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    for _ in range(2):
        response = conn.read_response()
        assert response.status == 405
        assert response.headers["allow"] == "GET, HEAD"
    conn.close()


def test_unknown_path_is_404_whatever_the_method(make_server):
    server = make_server(lambda s: s.add_websocket_content("/ws", on_message=lambda s, d: None))
    response = exchange(server.port, b"POST /x HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n")
    assert response.status == 404


def test_connect_is_refused_with_405(server):
    response = assert_rejected(
        server.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405
    )
    assert response.headers["allow"] == "GET, HEAD"


def test_413_by_content_length_before_any_body(server):
    assert_rejected(
        server.port, b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 1001\r\n\r\n", 413
    )


def test_413_while_the_client_is_still_sending_its_body(server):
    # The server answers after the first bytes and drains the rest (a lingering
    # close): the client reads the 413 rather than a connection reset.
    conn = Conn(server.port, timeout=10)
    conn.send(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 3000000\r\n\r\n" + b"x" * 3_000_000
    )
    response = conn.read_response()
    assert response.status == 413
    assert conn.at_eof()
    conn.close()
    assert_serving(server.port)


def test_413_by_chunked_body(server):
    chunk = b"200\r\n" + b"y" * 0x200 + b"\r\n"
    assert_rejected(
        server.port,
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk * 3
        + b"0\r\n\r\n",
        413,
    )


def test_413_by_chunked_body_sent_slowly(server):
    conn = Conn(server.port)
    conn.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        conn.send(b"190\r\n" + b"z" * 0x190 + b"\r\n")
        time.sleep(0.02)
    response = conn.read_response()
    assert response.status == 413
    assert conn.at_eof()
    conn.close()
    assert_serving(server.port)


def test_431_for_too_many_header_bytes(server):
    headers = "".join(f"X-Filler-{i}: {'v' * 60}\r\n" for i in range(40))  # ~3 KB > 2048
    assert_rejected(server.port, get("/", headers), 431)


def test_431_for_one_header_line_that_never_ends(server):
    # httptools gathers a header line before reporting it; the server must not
    # let it grow without bound.
    conn = Conn(server.port)
    conn.send(b"GET / HTTP/1.1\r\nX-Endless: ")
    time.sleep(0.05)
    for _ in range(8):  # 8 KiB > max_header_size
        conn.send(b"v" * 1024)
        time.sleep(0.02)
    response = conn.read_response()
    assert response.status == 431
    assert conn.at_eof()
    conn.close()
    assert_serving(server.port)


def test_414_for_a_too_long_url(server):
    assert_rejected(server.port, get("/" + "a" * 9000), 414)


def test_url_just_under_the_limit_is_fine(server):
    assert exchange(server.port, get("/" + "a" * 8000)).status == 404


def test_handler_exception_gives_500_and_the_connection_goes_on(server):
    Recorder(server)
    conn = Conn(server.port)
    conn.send(get("/boom") + get("/a.txt"))
    assert conn.read_response().status == 500
    assert conn.read_response().body == b"AAA"
    conn.close()


def test_abrupt_disconnects_do_not_hurt_the_server(server):
    for data in (
        get("/big.bin") * 4,
        b"GET /a.txt HT",
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 900\r\n\r\nxx",
    ):
        conn = Conn(server.port)
        conn.send(data)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # RST
    assert_serving(server.port)


# -- WebSocket endpoints seen from HTTP --------------------------------------------


def test_plain_get_on_the_websocket_path_gets_426(server):
    conn = Conn(server.port)
    conn.send(get("/ws"))
    response = conn.read_response()
    assert response.status == 426
    assert response.headers["upgrade"] == "websocket"
    conn.close()


def test_upgrade_to_a_path_that_is_no_endpoint_gets_404(server):
    data, _ = upgrade_request("/nowhere")
    assert_rejected(server.port, data, 404)


def test_get_and_upgrade_in_one_write(server):
    """The trap: the GET is answered and the upgrade still succeeds."""
    data, accept = upgrade_request()
    conn = Conn(server.port)
    conn.send(get("/hello.txt") + data)
    response = conn.read_response()
    assert response.status == 200 and response.body == b"hello\n"
    assert_switched(conn, accept)
    assert_echo(conn, "over the same socket")
    assert_echo(conn, "twice")
    conn.close()
    assert_serving(server.port)


def test_get_upgrade_and_a_frame_in_one_write(server):
    data, accept = upgrade_request()
    conn = Conn(server.port)
    conn.send(get("/a.txt") + get("/b.txt") + data + masked_text_frame("early"))
    assert conn.read_response().body == b"AAA"
    assert conn.read_response().body == b"BBBB"
    assert_switched(conn, accept)
    assert read_frame(conn) == (0x1, b"early")
    assert_echo(conn, "later")
    conn.close()


def test_upgrade_behind_large_pipelined_answers_waits_its_turn(server, site):
    # The answers fill the socket buffers, so the hand-off to picows is queued
    # behind them; the frame sent with it must still reach the endpoint.
    data, accept = upgrade_request()
    conn = Conn(server.port, timeout=10)
    conn.send(get("/big.bin") * 12 + data + masked_text_frame("queued"))
    time.sleep(0.2)
    for _ in range(12):
        assert len(conn.read_response().body) == BIG_SIZE
    assert_switched(conn, accept)
    assert read_frame(conn) == (0x1, b"queued")
    assert_echo(conn, "after")
    conn.close()


def test_upgrade_split_across_writes(server):
    data, accept = upgrade_request()
    conn = Conn(server.port)
    for i in range(0, len(data), 7):
        conn.send(data[i : i + 7])
        time.sleep(0.001)
    assert_switched(conn, accept)
    assert_echo(conn, "split")
    conn.close()


def test_other_upgrades_are_ignored_and_answered_as_http11(server):
    conn = Conn(server.port)
    conn.send(
        get(
            "/a.txt",
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            "HTTP2-Settings: AAMAAABkAAQAAP__\r\n",
        )
        + get("/b.txt")
    )
    assert conn.read_response().body == b"AAA"
    assert conn.read_response().body == b"BBBB"
    assert conn.still_open()
    conn.close()


def test_ignored_upgrade_with_a_body_is_refused(server):
    # Its body would otherwise be parsed as a request of its own (smuggling).
    assert_rejected(
        server.port,
        b"POST /echo HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 20\r\n\r\nGET /a.txt HTTP/1.1\r\n",
        400,
    )


# -- timeouts ---------------------------------------------------------------------


@pytest.fixture
def quick_server(make_server, site):
    def configure(s):
        s.add_static_content(str(site), "/")
        s.limits.idle_timeout = 0.4
        s.limits.header_timeout = 0.3
        s.limits.linger_timeout = 0.5

    return make_server(configure, max_body_size=1000)


def test_idle_keep_alive_connection_is_closed(quick_server):
    conn = Conn(quick_server.port)
    conn.send(get("/a.txt"))
    assert conn.read_response().body == b"AAA"
    started = time.monotonic()
    assert conn.at_eof(3)
    assert 0.3 < time.monotonic() - started < 2
    conn.close()


def test_connection_that_never_sends_is_closed(quick_server):
    conn = Conn(quick_server.port)
    started = time.monotonic()
    assert conn.at_eof(3)
    assert time.monotonic() - started < 2
    conn.close()


def test_activity_keeps_a_connection_open(quick_server):
    conn = Conn(quick_server.port)
    for _ in range(5):  # 5 x 0.2 s > idle_timeout
        conn.send(get("/a.txt"))
        assert conn.read_response().body == b"AAA"
        time.sleep(0.2)
    conn.close()


def test_slowloris_headers_get_408(quick_server):
    conn = Conn(quick_server.port)
    conn.send(b"GET /a.txt HTTP/1.1\r\n")
    started = time.monotonic()
    response = None
    for i in range(40):  # a header line every 50 ms
        try:
            conn.send(f"X-Slow-{i}: 1\r\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            break
        if not conn.still_open(0.05) or conn.buf:
            break
    response = conn.read_response()
    assert response.status == 408
    assert time.monotonic() - started < 1.5
    assert conn.at_eof()
    conn.close()
    other = exchange(quick_server.port, get("/a.txt"))
    assert other.status == 200


def test_stalled_body_gets_408(quick_server):
    conn = Conn(quick_server.port)
    conn.send(b"POST /a.txt HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n0123456789")
    response = conn.read_response()
    assert response.status == 408
    assert conn.at_eof()
    conn.close()


def test_slow_reader_of_a_big_answer_is_not_cut_off(quick_server, site):
    # idle_timeout is 0.4 s, yet a download that keeps moving lasts longer.
    expected = (site / "big.bin").read_bytes()
    conn = Conn(quick_server.port, timeout=10, rcvbuf=16384)
    conn.send(get("/big.bin") * 3)
    got = 0
    started = time.monotonic()
    while time.monotonic() - started < 1.2:  # trickle: <= 8 KiB every 20 ms
        conn.buf += conn.sock.recv(8192)
        got = len(conn.buf)
        time.sleep(0.02)
    assert got < 3 * BIG_SIZE  # still downloading after the timeout
    for _ in range(3):
        assert conn.read_response().body == expected
    conn.close()


def test_client_that_never_reads_is_dropped(quick_server):
    conn = Conn(quick_server.port, timeout=10, rcvbuf=4096)
    conn.send(get("/big.bin") * 20)
    time.sleep(1.5)  # > idle_timeout without any progress
    total = 0
    with pytest.raises((EOFError, ConnectionResetError)):
        while True:
            conn._fill()
            total = len(conn.buf)
    assert total < 20 * BIG_SIZE
    conn.close()
    assert exchange(quick_server.port, get("/a.txt")).status == 200
