"""Cached files of medium size sent with sendfile from a sealed memory copy.

A cached body of at least ``SENDFILE_MIN`` bytes is also kept in a sealed memfd;
on a plain TCP connection whose transport holds nothing, its answer is the head
(``send`` with MSG_MORE) then ``sendfile`` from that copy, and what the socket
does not take at once goes through the transport. These tests read every byte
back with raw sockets: keep-alive, pipelined, through a full socket (a reader
with a tiny buffer), over TLS (no sendfile), and while the file changes on disk.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import sys
import time
from pathlib import Path

import pytest

from helpers import tls_contexts, wait_until
from simplew.static import SENDFILE_MIN
from staticclient import Conn

MEDIUM = random.Random(18).randbytes(100 * 1024)
SMALL = b"x" * (SENDFILE_MIN - 1)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd is Linux's")


def memfds() -> int:
    """Open memory copies of static bodies in this process (the servers run here)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:simplew-static"):
                count += 1
        except OSError:
            pass
    return count


@pytest.fixture
def medium_site(tmp_path: Path) -> Path:
    (tmp_path / "medium.bin").write_bytes(MEDIUM)
    (tmp_path / "small.bin").write_bytes(SMALL)
    return tmp_path


def read_responses(sock: socket.socket, count: int, size: int, slowly: bool = False) -> list[bytes]:
    """``count`` 200 answers of ``size`` bytes each from ``sock``, their bodies."""
    data = bytearray()
    bodies = []
    while len(bodies) < count:
        chunk = sock.recv(4096 if slowly else 1 << 18)
        assert chunk, f"connection closed after {len(bodies)} answers"
        data += chunk
        if slowly:
            time.sleep(0.0005)
        while b"\r\n\r\n" in data:
            head, rest = bytes(data).split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert f"Content-Length: {size}".encode() in head
            if len(rest) < size:
                break
            bodies.append(rest[:size])
            data = bytearray(rest[size:])
    assert not data
    return bodies


@linux_only
def test_keep_alive_and_pipelined_answers_are_whole(make_server, medium_site):
    server = make_server(lambda s: s.add_static_content(str(medium_site), "/"))
    conn = Conn(server.port)
    try:
        for _ in range(5):  # the first fills the cache, the next ones are prepared
            response = conn.request(b"/medium.bin")
            assert response.status == 200 and response.body == MEDIUM
        assert memfds() >= 1, "the medium body has no sealed copy"
        request = b"GET /medium.bin HTTP/1.1\r\nHost: t\r\n\r\n"
        conn.sock.sendall(request * 40)  # answers queue behind each other
        assert read_responses(conn.sock, 40, len(MEDIUM)) == [MEDIUM] * 40
        small = conn.request(b"/small.bin")  # under the threshold: one write, as before
        assert small.status == 200 and small.body == SMALL
    finally:
        conn.close()


@linux_only
def test_a_full_socket_gets_the_rest_through_the_transport(make_server, medium_site):
    server = make_server(lambda s: s.add_static_content(str(medium_site), "/"))
    for _ in range(3):
        Conn(server.port).request(b"/medium.bin")  # cached and prepared
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.settimeout(10)
    try:
        request = b"GET /medium.bin HTTP/1.1\r\nHost: t\r\n\r\n"
        # unread, the answers fill the socket (its send buffer grows to 4 MiB at most):
        # a sendfile that the socket takes in part, then the transport holds the rest
        for _ in range(60):
            sock.sendall(request)
            time.sleep(0.002)
        assert read_responses(sock, 60, len(MEDIUM)) == [MEDIUM] * 60
    finally:
        sock.close()
    wait_until(lambda: len(server._http_connections) == 0, 5, "the connection closed")


def test_tls_answers_carry_the_same_bytes(make_server, medium_site):
    server_ctx, client_ctx = tls_contexts()
    server = make_server(lambda s: s.add_static_content(str(medium_site), "/"), ssl=server_ctx)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"GET /medium.bin HTTP/1.1\r\nHost: t\r\n\r\n" * 4)
        assert read_responses(tls, 4, len(MEDIUM)) == [MEDIUM] * 4  # type: ignore[arg-type]


@linux_only
def test_a_file_changed_on_disk_never_mixes_with_its_etag(make_server, medium_site):
    """What goes out is the cached copy or the new file, whole, under its own ETag."""
    server = make_server(lambda s: s.add_static_content(str(medium_site), "/"))
    path = medium_site / "medium.bin"
    conn = Conn(server.port)
    try:
        for _ in range(3):
            assert conn.request(b"/medium.bin").body == MEDIUM
        changed = bytes(b ^ 0xFF for b in MEDIUM)
        with open(path, "r+b") as f:  # in place: same inode, same size
            f.write(changed)
        seen = set()
        deadline = time.monotonic() + 5
        while changed not in seen and time.monotonic() < deadline:
            response = conn.request(b"/medium.bin")
            assert response.body in (MEDIUM, changed)
            digest = hashlib.blake2b(response.body, digest_size=12).hexdigest()
            assert response.headers["etag"] == f'"{digest}"'
            seen.add(response.body)
        assert changed in seen, "the changed file was never served"
    finally:
        conn.close()


@linux_only
def test_sealed_copies_go_with_their_cache_entries(make_server, tmp_path):
    """Evicted entries close their memfd: open copies stay within the budget."""
    for i in range(12):
        (tmp_path / f"f{i}.bin").write_bytes(bytes([i]) * len(MEDIUM))
    before = memfds()
    held = []
    server = make_server(
        lambda s: held.append(
            s.add_static_content(str(tmp_path), "/", cache_budget=4 * len(MEDIUM) + 4096)
        )
    )
    conn = Conn(server.port)
    try:
        for _round in range(2):
            for i in range(12):
                for _ in range(2):
                    assert conn.request(f"/f{i}.bin".encode()).body == bytes([i]) * len(MEDIUM)
    finally:
        conn.close()
    # each prepared entry holds its body and its copy: at most 2 fit the budget
    assert held[0].cache_evictions > 0
    assert 1 <= memfds() - before <= 2, (memfds(), before)
