"""Large static files, byte ranges, precompressed siblings and the memory cache.

Most tests talk to ``simplew serve --static DIR`` in a subprocess (so its
memory and open descriptors can be measured on their own) with real curl and
raw sockets; the cache and TLS tests use an in-process server.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import socket
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import psutil
import pytest

from helpers import ROOT, free_port, tls_contexts, wait_for_port
from simplew.static import WIRE_OVERHEAD
from staticclient import Conn, fetch

MIB = 1 << 20
BIG_SIZE = 200 * MIB
MID = random.Random(7).randbytes(3 * MIB + 123)  # above the 1 MiB cache limit: streamed
SMALL = b"small file, kept in memory\n"
APP_JS = b"console.log('plain');\n" * 50
APP_BR = b"pretend-brotli:" + bytes(range(256))  # any bytes: the server does not decode
CURL = "/usr/bin/curl"


def make_big(path: Path) -> str:
    """A sparse 200 MB file with random blocks spread over it; returns its SHA-256."""
    rng = random.Random(1)
    with open(path, "wb") as f:
        f.truncate(BIG_SIZE)
        for offset in (0, 7 * MIB + 13, BIG_SIZE // 2 + 1, BIG_SIZE - 65536):
            f.seek(offset)
            f.write(rng.randbytes(65536))
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("stream")
    (base / "secret.txt").write_bytes(b"TOP-SECRET")
    root = base / "www"
    root.mkdir()
    big_sha = make_big(root / "big.bin")
    (root / "mid.bin").write_bytes(MID)
    (root / "small.txt").write_bytes(SMALL)
    (root / "app.js").write_bytes(APP_JS)
    (root / "app.js.br").write_bytes(APP_BR)
    (root / "app.js.gz").write_bytes(gzip.compress(APP_JS))
    (root / "style.css").write_bytes(b"body{}")
    (root / "style.css.gz").write_bytes(gzip.compress(b"body{}"))
    (root / "leaky.txt").write_bytes(b"public")
    (root / "leaky.txt.gz").symlink_to(base / "secret.txt")  # a sibling pointing out of the root
    return root, big_sha


@pytest.fixture(scope="module")
def served(site):
    """(port, pid, root, SHA-256 of big.bin) of ``simplew serve --static`` in a subprocess."""
    root, big_sha = site
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simplew",
            "serve",
            "--static",
            str(root),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        yield port, proc.pid, root, big_sha
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CURL, "-sS", "--max-time", "60", *args], capture_output=True, timeout=90)


# -- streaming -------------------------------------------------------------------------


def test_fast_download_matches(served):
    port, _, _, big_sha = served
    proc = subprocess.Popen(
        [CURL, "-sS", "--max-time", "60", f"http://127.0.0.1:{port}/big.bin"],
        stdout=subprocess.PIPE,
    )
    digest, size = hashlib.sha256(), 0
    while chunk := proc.stdout.read(4 * MIB):
        digest.update(chunk)
        size += len(chunk)
    assert proc.wait(60) == 0
    assert size == BIG_SIZE
    assert digest.hexdigest() == big_sha


def test_slow_downloads_keep_memory_flat_and_free_everything(served):
    port, pid, _, _ = served
    server = psutil.Process(pid)
    assert fetch(port, "/small.txt").body == SMALL  # warm up
    assert fetch(port, "/big.bin", headers=b"Range: bytes=0-99\r\n").status == 206
    base_rss, base_fds = server.memory_info().rss, server.num_fds()
    clients = []
    for _ in range(50):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: test\r\n\r\n")
        sock.setblocking(False)
        clients.append(sock)
    received = [0] * len(clients)
    peak = base_rss
    start = time.monotonic()
    while time.monotonic() - start < 5.0:  # ~1 MB/s each: 100 KB every 0.1 s
        tick = time.monotonic()
        for i, sock in enumerate(clients):
            try:
                received[i] += len(sock.recv(100_000))
            except BlockingIOError:
                pass
        peak = max(peak, server.memory_info().rss)
        time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    assert fetch(port, "/small.txt").body == SMALL  # the server still answers others at once
    assert all(MIB < n < BIG_SIZE for n in received), received
    growth = (peak - base_rss) / MIB
    assert growth <= 32, f"server RSS grew by {growth:.1f} MiB"
    assert server.num_fds() >= base_fds + 100  # each download: socket and file
    for sock in clients:
        sock.close()  # mid-download
    deadline = time.monotonic() + 10
    while server.num_fds() > base_fds and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.num_fds() <= base_fds, "descriptors of the dropped downloads are still open"
    assert fetch(port, "/small.txt").body == SMALL


def test_head_and_pipelined_requests_after_a_streamed_body(served):
    port = served[0]
    conn = Conn(port)
    try:
        conn.send(b"/mid.bin")
        conn.send(b"/small.txt")
        conn.send(b"/mid.bin", b"HEAD")
        conn.send(b"/mid.bin", headers=b"Range: bytes=1048570-1048589\r\n")
        conn.send(b"/small.txt", b"HEAD")
        full = conn.read()
        assert full.status == 200 and full.body == MID
        assert full.headers["accept-ranges"] == "bytes"
        assert conn.read().body == SMALL
        head = conn.read(b"HEAD")
        assert head.status == 200 and int(head.headers["content-length"]) == len(MID)
        part = conn.read()
        assert part.status == 206 and part.body == MID[1048570:1048590]
        assert conn.read(b"HEAD").headers["content-length"] == str(len(SMALL))
        conn.sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            conn._fill()  # HEAD sent no body: nothing more came
    finally:
        conn.close()


def test_connection_close_after_a_streamed_body(served):
    port = served[0]
    conn = Conn(port)
    try:
        conn.send(b"/mid.bin", headers=b"Connection: close\r\n")
        response = conn.read()
        assert response.body == MID and response.headers["connection"] == "close"
        assert conn.sock.recv(10) == b""
    finally:
        conn.close()


# -- ranges ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, data", [("mid.bin", MID), ("small.txt", SMALL)], ids=["streamed", "cached"]
)
def test_single_ranges(served, name, data):
    port, size = served[0], len(data)
    target = f"/{name}".encode()
    for header, first, last in (
        (b"bytes=0-9", 0, 9),
        (b"bytes=5-", 5, size - 1),
        (b"bytes=-7", size - 7, size - 1),
        (b"bytes=3-3", 3, 3),
        (b"bytes=2-999999999", 2, size - 1),
        (b"bytes=-999999999", 0, size - 1),
    ):
        response = fetch(port, target, headers=b"Range: " + header + b"\r\n")
        assert response.status == 206, header
        assert response.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert response.body == data[first : last + 1], header
    for header in (b"bytes=999999999-", b"bytes=-0", f"bytes={size}-".encode()):
        response = fetch(port, target, headers=b"Range: " + header + b"\r\n")
        assert response.status == 416, header
        assert response.headers["content-range"] == f"bytes */{size}"
    for header in (
        b"bytes=0-1,5-6",
        b"bytes=9-2",
        b"bytes=x-y",
        b"items=0-1",
        b"bytes=",
        b"bytes=-",
        # Latin-1 superscripts: str.isdigit() says yes, int() says no (a 500 once)
        b"bytes=\xb2-",
        b"bytes=-\xb9",
        b"bytes=0-\xb3",
        b"bytes=\xb9\xb2-\xb3",
        b"bytes=1\xb2-",
    ):
        response = fetch(port, target, headers=b"Range: " + header + b"\r\n")
        assert response.status == 200 and response.body == data, header  # ignored


def test_if_range(served):
    port = served[0]
    first = fetch(port, "/mid.bin", b"HEAD")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    mtime = (served[2] / "mid.bin").stat().st_mtime

    def status(if_range: str) -> int:
        return fetch(
            port, "/mid.bin", headers=(f"Range: bytes=0-9\r\nIf-Range: {if_range}\r\n").encode()
        ).status

    assert status(etag) == 206
    assert status(modified) == 206
    assert status('"other"') == 200
    assert status("W/" + etag) == 200  # a weak tag never matches
    assert status(formatdate(mtime - 60, usegmt=True)) == 200
    assert status("garbage") == 200


def test_conditional_requests_on_a_streamed_file(served):
    port = served[0]
    first = fetch(port, "/mid.bin", b"HEAD")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert fetch(port, "/mid.bin", headers=f"If-None-Match: {etag}\r\n".encode()).status == 304
    assert (
        fetch(port, "/mid.bin", headers=f"If-Modified-Since: {modified}\r\n".encode()).status == 304
    )


def test_curl_resumes_a_partial_download(served, tmp_path):
    port = served[0]
    part = tmp_path / "mid.part"
    part.write_bytes(MID[:1234567])
    result = curl("-C", "-", "-o", str(part), f"http://127.0.0.1:{port}/mid.bin")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(part.read_bytes()).digest() == hashlib.sha256(MID).digest()


# -- precompressed siblings -----------------------------------------------------------------


@pytest.mark.parametrize(
    "accept, coding, body",
    [
        ("gzip, deflate, br", "br", APP_BR),
        ("br;q=1.0, gzip;q=0.8", "br", APP_BR),
        ("gzip", "gzip", gzip.compress(APP_JS)),
        ("br;q=0, gzip", "gzip", gzip.compress(APP_JS)),
        ("*", "br", APP_BR),
        ("*, br;q=0", "gzip", gzip.compress(APP_JS)),
        ("identity", None, APP_JS),
        ("br;q=0, gzip;q=0", None, APP_JS),
        (None, None, APP_JS),
    ],
)
def test_precompressed_variants(served, accept, coding, body):
    port = served[0]
    headers = f"Accept-Encoding: {accept}\r\n".encode() if accept else b""
    response = fetch(port, "/app.js", headers=headers)
    assert response.status == 200
    assert response.headers.get("content-encoding") == coding
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["vary"] == "Accept-Encoding"
    if coding == "gzip":
        assert gzip.decompress(response.body) == APP_JS
    else:
        assert response.body == body


def test_precompressed_variants_have_their_own_validators_and_ranges(served):
    port = served[0]
    plain = fetch(port, "/app.js")
    br = fetch(port, "/app.js", headers=b"Accept-Encoding: br\r\n")
    assert br.headers["etag"] != plain.headers["etag"]
    assert (
        fetch(
            port,
            "/app.js",
            headers=(f"Accept-Encoding: br\r\nIf-None-Match: {br.headers['etag']}\r\n").encode(),
        ).status
        == 304
    )
    part = fetch(port, "/app.js", headers=b"Accept-Encoding: br\r\nRange: bytes=3-9\r\n")
    assert part.status == 206 and part.body == APP_BR[3:10]
    assert part.headers["content-range"] == f"bytes 3-9/{len(APP_BR)}"
    assert part.headers["content-encoding"] == "br"
    css = fetch(port, "/style.css", headers=b"Accept-Encoding: br, gzip\r\n")
    assert css.headers["content-encoding"] == "gzip" and gzip.decompress(css.body) == b"body{}"
    # the siblings themselves are plain files too
    direct = fetch(port, "/app.js.gz")
    assert gzip.decompress(direct.body) == APP_JS and "content-encoding" not in direct.headers
    assert direct.headers["content-type"] == "application/gzip"
    assert fetch(port, "/app.js.br").body == APP_BR


def test_curl_compressed_download(served):
    port = served[0]
    result = curl("--compressed", f"http://127.0.0.1:{port}/style.css")
    assert result.returncode == 0 and result.stdout == b"body{}"


def test_a_sibling_outside_the_root_is_not_served(served):
    port = served[0]
    response = fetch(port, "/leaky.txt", headers=b"Accept-Encoding: gzip\r\n")
    assert response.status == 200 and response.body == b"public"
    assert "content-encoding" not in response.headers and "vary" not in response.headers
    assert fetch(port, "/leaky.txt.gz").status == 404


# -- the memory cache ------------------------------------------------------------------------


def test_cache_budget_evicts_least_recently_used(make_server, tmp_path):
    files = {f"f{i}.txt": bytes([65 + i]) * 3000 for i in range(6)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    holder = {}

    def configure(s):
        holder["static"] = s.add_static_content(
            str(tmp_path), "/", timeout=60, cache_budget=10_000, cache_max_file=4000
        )

    server = make_server(configure)
    static = holder["static"]
    for _ in range(2):
        for name, data in files.items():
            assert fetch(server.port, f"/{name}").body == data
            assert static.cache_bytes <= static.cache_budget
    assert static.cache_evictions >= 4
    assert 1 <= static.cache_files < len(files)
    # the most recently used file is the one still held
    hits = static.cache_hits
    assert fetch(server.port, "/f5.txt").body == files["f5.txt"]
    assert static.cache_hits == hits + 1


def test_deleted_file_leaves_the_cache(make_server, tmp_path):
    (tmp_path / "gone.txt").write_bytes(b"x" * 5000)
    (tmp_path / "big.bin").write_bytes(b"y" * 5000)
    holder = {}

    def configure(s):
        holder["static"] = s.add_static_content(str(tmp_path), "/", cache_max_file=4096)

    server = make_server(configure)
    static = holder["static"]
    assert fetch(server.port, "/gone.txt").status == 200
    assert static.cache_files == 0  # above cache_max_file: streamed, not held
    (tmp_path / "gone.txt").write_bytes(b"x" * 100)
    assert fetch(server.port, "/gone.txt").body == b"x" * 100
    assert static.cache_files == 1 and static.cache_bytes >= 100
    (tmp_path / "gone.txt").unlink()
    assert fetch(server.port, "/gone.txt").status == 404
    assert static.cache_files == 0 and static.cache_bytes == 0


def test_streamed_file_over_tls(make_server, tmp_path):
    server_ctx, client_ctx = tls_contexts()
    (tmp_path / "mid.bin").write_bytes(MID)
    server = make_server(lambda s: s.add_static_content(str(tmp_path), "/"), ssl=server_ctx)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(
            b"GET /mid.bin HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /mid.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=-5\r\n\r\n"
        )
        data = b""
        while b"\r\n\r\n" not in data[len(MID) :] or not data.endswith(MID[-5:]):
            chunk = tls.recv(1 << 16)
            assert chunk
            data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    assert b" 200 " in head and rest[: len(MID)] == MID
    head, rest = rest[len(MID) :].split(b"\r\n\r\n", 1)
    assert b" 206 " in head and rest == MID[-5:]


def test_a_client_that_stops_reading_is_dropped(make_server, tmp_path):
    (tmp_path / "mid.bin").write_bytes(MID * 4)
    server = make_server(lambda s: s.add_static_content(str(tmp_path), "/"), idle_timeout=0.4)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /mid.bin HTTP/1.1\r\nHost: t\r\n\r\n")
    try:
        time.sleep(1.5)  # > 2 x idle_timeout without reading
        sock.settimeout(5)
        got = 0
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(1 << 16):
                got += len(chunk)
            raise ConnectionResetError("closed")  # a plain close is as good
        assert got < len(MID) * 4
    finally:
        sock.close()
    assert fetch(server.port, "/mid.bin", headers=b"Range: bytes=0-3\r\n").body == MID[:4]


def test_reused_response_bytes_follow_the_request(make_server, tmp_path):
    # a cached file's encoded 200 is reused only for a plain keep-alive GET
    (tmp_path / "page.txt").write_bytes(b"page")
    holder = {}

    def configure(s):
        holder["static"] = s.add_static_content(str(tmp_path), "/", timeout=60)

    server = make_server(configure)
    first = fetch(server.port, "/page.txt")
    again = fetch(server.port, "/page.txt")
    assert first.body == again.body == b"page"
    first.headers.pop("date"), again.headers.pop("date")
    assert first.headers == again.headers
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /page.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        data = b""
        while not data.endswith(b"page"):
            data += sock.recv(4096)
        assert b"\r\nConnection: keep-alive\r\n" in data
        sock.sendall(b"GET /page.txt HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        assert b"\r\nConnection: close\r\n" in data and data.endswith(b"\r\n\r\npage")
    holder["static"].add_mime_type("txt", "text/x-notes")
    assert fetch(server.port, "/page.txt").headers["content-type"] == "text/x-notes"
    (tmp_path / "page.txt.gz").write_bytes(gzip.compress(b"page"))
    time.sleep(1.1)  # the revalidation second
    plain = fetch(server.port, "/page.txt")
    assert plain.body == b"page" and plain.headers["vary"] == "Accept-Encoding"


def test_a_file_that_fills_the_budget_alone_keeps_the_count_right(make_server, tmp_path):
    (tmp_path / "whole.txt").write_bytes(b"w" * 900)
    (tmp_path / "other.txt").write_bytes(b"o" * 10)
    holder = {}

    def configure(s):
        holder["static"] = s.add_static_content(str(tmp_path), "/", timeout=60, cache_budget=1000)

    server = make_server(configure)
    static = holder["static"]
    for _ in range(3):
        assert fetch(server.port, "/whole.txt").body == b"w" * 900
        assert fetch(server.port, "/other.txt").body == b"o" * 10
        assert 0 <= static.cache_bytes <= static.cache_budget
    assert static.cache_bytes == sum(
        len(e.body) * (2 if e.prepared is not None else 1)
        + (WIRE_OVERHEAD if e.prepared is not None else 0)
        for e in static._cache.values()
        if e.body is not None
    )
