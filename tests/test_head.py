"""The request scanner (simplew._fast.head) that reads common requests ahead of httptools.

It must read exactly what httptools reads, or leave the bytes to httptools:
checked here on chosen requests, on seeded random mutations of them (the
oracle is tests/fuzz/request_head.py's ``check``), and end to end: a real
server answers the same bytes identically whether they arrive in one read
(scanned) or one byte at a time (httptools).
"""

from __future__ import annotations

import importlib.util
import random
import re
import socket
import sys
import time
from pathlib import Path

import pytest

from simplew._fast.head import RequestScanner

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "fuzz"))
_spec = importlib.util.spec_from_file_location(
    "simplew_fuzz_request_head", HERE / "fuzz" / "request_head.py"
)
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def scan(data: bytes, **limits) -> RequestScanner | None:
    scanner = RequestScanner(**limits)
    n = scanner.scan_bytes(data)
    if n == 0:
        return None
    assert n == len(data)
    assert harness.check(data, scanner) >= 1  # and httptools agrees
    scanner.scan_bytes(data)
    return scanner


def test_a_plain_get_is_scanned():
    s = scan(b"GET /json HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n")
    assert (s.method, s.path, s.query, s.headers, s.body, s.keep_alive, s.http10) == (
        "GET",
        "/json",
        "",
        {"host": "127.0.0.1:8080"},
        b"",
        True,
        False,
    )


def test_query_headers_and_body_are_read_as_httptools_reads_them():
    s = scan(
        b"POST /api/u?a=1&b=%20?c HTTP/1.1\r\nHOST: x\r\nX-Pad:  \tv a l \t\r\n"
        b"Empty:\r\nContent-Length: 05\r\n\r\nhello"
    )
    assert s.method == "POST" and s.path == "/api/u" and s.query == "a=1&b=%20?c"
    assert s.headers == {"host": "x", "x-pad": "v a l \t", "empty": "", "content-length": "05"}
    assert s.body == b"hello"


@pytest.mark.parametrize(
    "head, keep_alive",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: CLOSE\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n", True),
        (b"GET / HTTP/1.0\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n", True),
        (b"GET / HTTP/1.0\r\nHost: x\r\nConnection: close\r\n", False),
    ],
)
def test_keep_alive_follows_the_version_and_connection(head, keep_alive):
    assert scan(head + b"\r\n").keep_alive is keep_alive


@pytest.mark.parametrize(
    "data",
    [
        b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",  # not a common method
        b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",  # absolute form
        b"GET /a#f HTTP/1.1\r\nHost: x\r\n\r\n",
        b'GET /a"b HTTP/1.1\r\nHost: x\r\n\r\n',
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\na: 2\r\n\r\n",  # a repeated name
        b"GET / HTTP/1.1\nHost: x\n\n",  # bare LF
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \xe9\r\n\r\n",  # obs-text
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhell",  # body not all here
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n",  # head not complete
    ],
)
def test_other_requests_are_left_to_httptools(data):
    assert RequestScanner().scan_bytes(data) == 0


def test_limits_leave_large_requests_to_httptools():
    data = b"POST /" + b"a" * 20 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
    assert RequestScanner().scan_bytes(data) == len(data)
    assert RequestScanner(max_url_size=20).scan_bytes(data) == 0
    assert RequestScanner(max_body_size=3).scan_bytes(data) == 0
    assert RequestScanner(max_header_size=28).scan_bytes(data) == len(data)  # 9 + 19
    assert RequestScanner(max_header_size=27).scan_bytes(data) == 0


INTERESTING = b' \t\r\n:/?#%"\x00\x7f\x80\xff,0123456789Hh-'


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            del b[min(i, len(b) - 1)]
        elif op == 1:
            b.insert(i, rng.choice(INTERESTING))
        elif op == 2 and b:
            b[min(i, len(b) - 1)] = rng.choice(INTERESTING)
        elif op == 3 and b:
            j = min(i, len(b) - 1)
            b[j] = ord(chr(b[j]).swapcase()) if b[j] < 128 else b[j]
        else:
            j = rng.randrange(len(b) + 1)
            b[i:i] = b[min(i, j) : max(i, j)][:16]
    return bytes(b)


def test_mutated_requests_are_read_as_httptools_reads_them_or_left_to_it():
    rng = random.Random(20261201)
    seeds = list(harness.seeds().values())
    scanned = 0
    for _ in range(30000):
        data = _mutate(rng, rng.choice(seeds))
        scanned += harness.check(data) > 0
    assert scanned > 3000, f"only {scanned} of the mutated requests were scanned"


# -- end to end: a real server answers scanned and unscanned bytes alike -----

PIPELINE = (
    b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n"
    b"GET /echo?x=1&y=%C3%A9 HTTP/1.1\r\nHost: x\r\nX-A: a \r\n\r\n"
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    b"HEAD /json HTTP/1.1\r\nHost: x\r\n\r\n"
    b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
    b"GET /json HTTP/1.1\r\n\r\n"
)  # no Host: 400, then closed


def _configure(server):
    server.map_get("/json", lambda: {"message": "Hello, World!"})

    def echo(request):
        return {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": request.headers,
            "body": request.body.decode(),
        }

    server.map_get("/echo", echo)
    server.map_post("/echo", echo)


def _exchange(port: int, data: bytes, one_byte_at_a_time: bool) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if one_byte_at_a_time:
            for i in range(len(data)):
                sock.sendall(data[i : i + 1])
                time.sleep(0.0005)
        else:
            sock.sendall(data)
        out = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    return re.sub(rb"\r\nDate: [^\r]*", b"", out)


def test_a_server_answers_the_same_bytes_read_whole_or_byte_by_byte(make_server):
    server = make_server(_configure)
    whole = _exchange(server.port, PIPELINE, False)
    split = _exchange(server.port, PIPELINE, True)
    assert whole.count(b"HTTP/1.1 ") == 6, whole
    assert b'"query":"x=1&y=%C3%A9"' in whole and b'"x-a":"a "' in whole
    assert b'"body":"abc"' in whole
    assert whole.endswith(b"a request needs exactly one Host header\n")
    assert whole == split


# -- the response head written in one buffer equals the general encoder's ----


def test_the_one_buffer_encoder_writes_what_the_general_one_writes(tmp_path):
    import os

    from simplew._fast.http import FileBody, PreparedBody, _both_encodings

    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    json_headers = [("Content-Type", "application/json")]
    cases = [
        (200, json_headers, b'{"a":1}'),
        (404, [("Content-Type", "text/plain; charset=utf-8"), ("X-Id", "7")], b"not found\n"),
        (204, [("Allow", "GET, HEAD")], b""),
        (304, [("ETag", '"abc"')], b""),
        (299, [], b"unknown reason"),
        (200, [("X-Latin", "caf\xe9")], b"non-ASCII value"),
        (200, [("X-Int", 5)], b"a value that is not a str"),
        (200, [["X-List", "pair"]], b"a header given as a list"),
        (200, [("X-Long", "v" * 5000)], b"a head longer than the buffer"),
        (200, json_headers, bytearray(b"a bytearray body")),
        (200, json_headers, PreparedBody(json_headers, b'{"prepared":true}')),
        (200, json_headers, b"b" * 100000),
    ]
    for status, headers, content in cases:
        for keep_alive, head, echo in [
            (True, False, False),
            (False, False, False),
            (True, True, False),
            (True, False, True),
        ]:
            fast, general = _both_encodings(status, headers, content, keep_alive, head, echo)
            assert fast == general, (status, headers, keep_alive, head, echo)
    fd = os.open(path, os.O_RDONLY)
    body = FileBody(fd, 10, 990)
    fast, general = _both_encodings(206, [("Content-Range", "bytes 10-999/1000")], body)
    body.close()
    assert fast == general and fast.endswith(b"Content-Length: 990\r\n\r\n")
    for bad in ([("X-Bad", "a\r\nInjected: 1")], [("X-Bad\n", "a")]):
        with pytest.raises(ValueError, match="line break"):
            _both_encodings(200, bad, b"")


def test_request_keeps_what_it_is_given_and_derives_query_and_url():
    from simplew import Request

    r = Request("GET", "/a", "x=1&x=2&y", {"host": "h"})
    assert (r.query, r.url, r.body, repr(r)) == (
        {"x": "2", "y": ""},
        "/a?x=1&x=2&y",
        b"",
        "<Request GET /a?x=1&x=2&y>",
    )
    r.method = "POST"
    assert Request("GET", "/", "", {}, b"b").url == "/" and r.method == "POST"
