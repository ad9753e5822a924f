"""Static files (simplew.static) through a real server, over raw sockets.

Path-escape attempts are sent as exact bytes: HTTP client libraries would
normalise ``..`` and re-encode the path before it ever reached the server.
"""

from __future__ import annotations

import os
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from simplew import StaticFiles
from staticclient import Conn, fetch

SECRET = b"TOP-SECRET-CONTENT"


# -- fixtures -----------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/www is served; tmp/secret.txt and tmp/private/ lie outside it."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "key.txt").write_bytes(SECRET)
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("<h1>root</h1>")
    (root / "style.css").write_text("body{}")
    (root / "app.js").write_text("let a = 1;")
    (root / "data.json").write_text('{"a": 1}')
    (root / "pic.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "logo.svg").write_text("<svg/>")
    (root / "notes.txt").write_text("notes")
    (root / "blob.zzzunknown").write_bytes(b"\x00\x01")
    (root / "café.txt").write_text("utf-8 name")
    (root / "with space.txt").write_text("spaced")
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_text("<h1>docs</h1>")
    (root / "docs" / "page.html").write_text("page")
    (root / "empty").mkdir()
    (root / "%2e%2e").mkdir()  # a real directory with that name
    (root / "%2e%2e" / "inside.txt").write_text("literal name")
    # symlinks: pointing out (refused) and pointing in (served)
    (root / "out").symlink_to(tmp_path)
    (root / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (root / "keys").symlink_to(tmp_path / "private")
    (root / "alias.txt").symlink_to(root / "notes.txt")
    return root


@pytest.fixture
def server(make_server, tree):
    def configure(s):
        s.add_static_content(str(tree), "/")
        s.add_websocket_content("/ws", on_message=lambda session, data: session.send(data))

    return make_server(configure)


def assert_serving(port: int) -> None:
    response = fetch(port, "/notes.txt")
    assert response.status == 200 and response.body == b"notes"


# -- serving ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/index.html", "text/html; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/data.json", "application/json"),
        ("/pic.png", "image/png"),
        ("/logo.svg", "image/svg+xml"),
        ("/notes.txt", "text/plain; charset=utf-8"),
        ("/blob.zzzunknown", "application/octet-stream"),
    ],
)
def test_mime_types(server, tree, path, content_type):
    response = fetch(server.port, path)
    assert response.status == 200
    assert response.headers["content-type"] == content_type
    assert response.body == (tree / path.lstrip("/")).read_bytes()


def test_added_mime_type(make_server, tree):
    def configure(s):
        s.add_static_content(str(tree), "/").add_mime_type("zzzunknown", "application/x-zzz")

    server = make_server(configure)
    assert fetch(server.port, "/blob.zzzunknown").headers["content-type"] == "application/x-zzz"


def test_encoded_names(server):
    assert fetch(server.port, "/caf%C3%A9.txt").body == b"utf-8 name"
    assert fetch(server.port, "/with%20space.txt").body == b"spaced"
    assert fetch(server.port, "/%2e%2e/inside.txt").status == 404  # decoded once: ".."
    assert fetch(server.port, "/%252e%252e/inside.txt").body == b"literal name"
    assert fetch(server.port, "/%ff.txt").status == 404  # not UTF-8


def test_default_document(server):
    root = fetch(server.port, "/")
    assert root.status == 200 and root.body == b"<h1>root</h1>"
    docs = fetch(server.port, "/docs/")
    assert docs.status == 200 and docs.body == b"<h1>docs</h1>"
    assert docs.headers["content-type"] == "text/html; charset=utf-8"


def test_directory_without_trailing_slash_redirects(server):
    response = fetch(server.port, "/docs")
    assert response.status == 301
    assert response.headers["location"] == "/docs/"


def test_redirect_never_points_to_another_host(server):
    # "//docs" as Location would send the browser to http://docs/
    response = fetch(server.port, "//docs")
    assert response.status == 301
    assert response.headers["location"] == "/docs/"


def test_directory_without_index_is_404(server):
    assert fetch(server.port, "/empty/").status == 404
    assert fetch(server.port, "/empty").status == 404


def test_file_with_trailing_slash_is_404(server):
    assert fetch(server.port, "/notes.txt/").status == 404


def test_missing_file_is_404(server):
    assert fetch(server.port, "/nope.txt").status == 404
    assert fetch(server.port, "/docs/nope.html").status == 404


def test_prefix(make_server, tree):
    def configure(s):
        s.add_static_content(str(tree), "/static")

    server = make_server(configure)
    assert fetch(server.port, "/static/notes.txt").body == b"notes"
    assert fetch(server.port, "/static/").body == b"<h1>root</h1>"
    redirect = fetch(server.port, "/static")
    assert redirect.status == 301 and redirect.headers["location"] == "/static/"
    assert fetch(server.port, "/notes.txt").status == 404
    assert fetch(server.port, "/staticnotes.txt").status == 404
    assert fetch(server.port, "/static/../secret.txt").status == 404
    assert fetch(server.port, "/static/..%2f..%2fsecret.txt").status == 404


def test_head(server):
    response = fetch(server.port, "/notes.txt", b"HEAD")
    assert response.status == 200
    assert response.headers["content-length"] == "5"
    assert "etag" in response.headers


def test_post_on_a_file_is_405_with_allow(server):
    response = fetch(server.port, "/notes.txt", b"POST", b"Content-Length: 0\r\n")
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_root_must_be_a_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        StaticFiles(str(tmp_path / "absent"))


# -- validators and 304 ----------------------------------------------------------


def test_etag_and_if_none_match(server):
    first = fetch(server.port, "/notes.txt")
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    for value in (etag, "W/" + etag, '"other", ' + etag, "*"):
        response = fetch(server.port, "/notes.txt", headers=f"If-None-Match: {value}\r\n".encode())
        assert response.status == 304, value
        assert response.body == b""
        assert response.headers["etag"] == etag
        assert "content-length" not in response.headers
    assert fetch(server.port, "/notes.txt", headers=b'If-None-Match: "stale"\r\n').status == 200


def test_last_modified_and_if_modified_since(server, tree):
    first = fetch(server.port, "/notes.txt")
    last_modified = first.headers["last-modified"]
    mtime = (tree / "notes.txt").stat().st_mtime
    assert last_modified == formatdate(mtime, usegmt=True)

    def ims(value: str) -> int:
        return fetch(
            server.port, "/notes.txt", headers=f"If-Modified-Since: {value}\r\n".encode()
        ).status

    assert ims(last_modified) == 304
    assert ims(formatdate(mtime + 3600, usegmt=True)) == 304
    assert ims(formatdate(mtime - 3600, usegmt=True)) == 200
    assert ims("not a date") == 200
    # If-None-Match wins over If-Modified-Since
    status = fetch(
        server.port,
        "/notes.txt",
        headers=(f'If-None-Match: "stale"\r\nIf-Modified-Since: {last_modified}\r\n').encode(),
    ).status
    assert status == 200


def test_304_keeps_the_connection_usable(server):
    conn = Conn(server.port)
    etag = conn.request(b"/notes.txt").headers["etag"]
    assert conn.request(b"/notes.txt", headers=f"If-None-Match: {etag}\r\n".encode()).status == 304
    assert conn.request(b"/index.html").body == b"<h1>root</h1>"
    conn.close()


# -- the cache ---------------------------------------------------------------------


@pytest.fixture
def cached_server(make_server, tree):
    def configure(s):
        s.add_static_content(str(tree), "/", timeout=60)

    return make_server(configure)


def test_cached_answers_carry_max_age(cached_server, server):
    assert fetch(cached_server.port, "/notes.txt").headers["cache-control"] == "max-age=60"
    assert "cache-control" not in fetch(server.port, "/notes.txt").headers


def test_cache_is_refreshed_when_a_file_changes(cached_server, tree):
    page = tree / "docs" / "page.html"
    first = fetch(cached_server.port, "/docs/page.html")
    assert first.body == b"page"
    page.write_text("changed content, longer")
    time.sleep(1.1)
    second = fetch(cached_server.port, "/docs/page.html")
    assert second.body == b"changed content, longer"
    assert second.headers["etag"] != first.headers["etag"]
    # the old validator no longer matches
    assert (
        fetch(
            cached_server.port,
            "/docs/page.html",
            headers=f"If-None-Match: {first.headers['etag']}\r\n".encode(),
        ).status
        == 200
    )


def test_cache_sees_a_same_size_change_within_the_same_second(cached_server, tree):
    page = tree / "notes.txt"
    assert fetch(cached_server.port, "/notes.txt").body == b"notes"
    stat = page.stat()
    page.write_text("NOTES")  # same size
    os.utime(page, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    time.sleep(1.1)
    assert fetch(cached_server.port, "/notes.txt").body == b"NOTES"


def test_cache_forgets_a_deleted_file(cached_server, tree):
    assert fetch(cached_server.port, "/docs/page.html").status == 200
    (tree / "docs" / "page.html").unlink()
    time.sleep(1.1)
    assert fetch(cached_server.port, "/docs/page.html").status == 404


def test_without_timeout_changes_show_at_once(server, tree):
    assert fetch(server.port, "/notes.txt").body == b"notes"
    (tree / "notes.txt").write_text("fresh")
    assert fetch(server.port, "/notes.txt").body == b"fresh"


def test_new_file_is_served(cached_server, tree):
    assert fetch(cached_server.port, "/late.txt").status == 404
    (tree / "late.txt").write_text("late")
    assert fetch(cached_server.port, "/late.txt").body == b"late"


# -- escaping the root -----------------------------------------------------------------

ESCAPES = [
    b"/../secret.txt",
    b"/../../../../../../etc/passwd",
    b"/docs/../../secret.txt",
    b"/./../secret.txt",
    b"/..%2fsecret.txt",
    b"/..%2Fsecret.txt",
    b"/%2e%2e/secret.txt",
    b"/%2E%2E/secret.txt",
    b"/%2e%2e%2fsecret.txt",
    b"/.%2e/secret.txt",
    b"/%2e./secret.txt",
    b"/docs/%2e%2e/%2e%2e/secret.txt",
    b"/%252e%252e/secret.txt",
    b"/%252e%252e%252fsecret.txt",
    b"/..%252fsecret.txt",
    b"/%25%32%65%25%32%65/secret.txt",
    b"/..\\secret.txt",
    b"/..%5csecret.txt",
    b"/..%5Csecret.txt",
    b"/docs\\..\\..\\secret.txt",
    b"//etc/passwd",
    b"///etc/passwd",
    b"/%2fetc/passwd",
    b"/%2Fetc%2Fpasswd",
    b"//../secret.txt",
    b"/out/secret.txt",
    b"/out/private/key.txt",
    b"/leak.txt",
    b"/keys/key.txt",
    b"/keys/",
    b"/out",
    b"/notes.txt%00",
    b"/notes.txt%00.html",
    b"/%00../secret.txt",
    b"/%c0%ae%c0%ae/secret.txt",
    b"/%e0%80%ae%e0%80%ae/secret.txt",
    b"/..%c0%afsecret.txt",
    b"/%uff0e%uff0e/secret.txt",
    b"http://test/../secret.txt",
    b"http://test/%2e%2e/secret.txt",
]


@pytest.mark.parametrize("target", ESCAPES, ids=lambda t: t.decode("latin-1"))
def test_escaping_the_root_is_refused(server, target):
    response = fetch(server.port, target)
    assert response.status == 404, response
    assert SECRET not in response.body
    assert b"root:" not in response.body


@pytest.mark.parametrize(
    "target", [b"/notes.txt\x00", b"/\x00/../secret.txt", b"/..\x00/secret.txt"]
)
def test_raw_nul_in_the_path_is_refused(server, target):
    conn = Conn(server.port)
    try:
        response = conn.request(target)
    finally:
        conn.close()
    assert response.status in (400, 404)  # the parser refuses a raw NUL outright
    assert SECRET not in response.body
    assert_serving(server.port)


def test_escapes_pipelined_on_one_connection(server):
    conn = Conn(server.port)
    for target in ESCAPES:
        response = conn.request(target)
        assert response.status == 404, target
        assert SECRET not in response.body
    assert conn.request(b"/notes.txt").body == b"notes"
    conn.close()


def test_symlink_inside_the_root_is_served(server):
    assert fetch(server.port, "/alias.txt").body == b"notes"


def test_resolve_refuses_what_the_network_cannot_send(tree):
    # Paths a handler could pass on its own: the guard does not rely on the parser.
    static = StaticFiles(str(tree))
    for path in (
        "/../secret.txt",
        "/notes.txt\x00",
        "/..\\secret.txt",
        "/C:\\Windows",
        "/out/secret.txt",
        "/leak.txt",
        "/%2e%2e/secret.txt",
        "/\u2025/secret.txt",
    ):
        assert static.serve("GET", path, {}) is None, path
    assert static.serve("GET", "/café.txt", {})[2] == b"utf-8 name"


def test_server_keeps_serving_after_the_attempts(server):
    for target in ESCAPES[:10]:
        fetch(server.port, target)
    assert_serving(server.port)


@pytest.mark.parametrize(
    "spec", ["bytes=\u0663-", "bytes=-\u0663", "bytes=0-\u0663", "bytes=\u00b2-"]
)
def test_range_takes_ascii_digits_only(tree, spec):
    # Headers a handler could pass on its own: other Unicode digits (int() takes
    # Arabic-Indic ones) are as malformed as the Latin-1 ones the network can send.
    status, _, body = StaticFiles(str(tree)).serve("GET", "/notes.txt", {"range": spec})
    assert status == 200 and bytes(body) == b"notes"


# -- dotfiles, system roots, /proc and /sys ----------------------------------------


@pytest.fixture
def dotted(tree: Path) -> Path:
    """``tree`` plus dotfiles, a .well-known file and symlinks to a dotfile and into /proc."""
    (tree / ".env").write_bytes(SECRET)
    (tree / ".git").mkdir()
    (tree / ".git" / "config").write_bytes(SECRET)
    (tree / ".git" / "index.html").write_bytes(SECRET)
    (tree / "docs" / ".hidden.txt").write_bytes(SECRET)
    (tree / ".well-known").mkdir()
    (tree / ".well-known" / "security.txt").write_text("Contact: mailto:a@example.com")
    (tree / ".well-known" / ".secret").write_bytes(SECRET)
    (tree / "config.txt").symlink_to(tree / ".git" / "config")  # a plain name for a dotfile
    (tree / "gitdir").symlink_to(tree / ".git")
    (tree / "environ.txt").symlink_to("/proc/self/environ")
    (tree / "proc").symlink_to("/proc")
    (tree / "sys").symlink_to("/sys")
    return tree


DOTFILES = [
    b"/.env",
    b"/.git/config",
    b"/.git/",
    b"/.git",
    b"/%2eenv",
    b"/%2Egit/config",
    b"/docs/.hidden.txt",
    b"/.well-known/.secret",
    b"/config.txt",
    b"/gitdir/config",
    b"/gitdir/",
]


@pytest.mark.parametrize("target", DOTFILES, ids=lambda t: t.decode("latin-1"))
def test_dotfiles_are_refused_by_default(make_server, dotted, target):
    server = make_server(lambda s: s.add_static_content(str(dotted), "/"))
    response = fetch(server.port, target)
    assert response.status == 404, response
    assert SECRET not in response.body


def test_well_known_is_served(make_server, dotted):
    server = make_server(lambda s: s.add_static_content(str(dotted), "/"))
    response = fetch(server.port, "/.well-known/security.txt")
    assert response.status == 200 and response.body.startswith(b"Contact:")


def test_dotfiles_are_served_when_asked(make_server, dotted):
    server = make_server(lambda s: s.add_static_content(str(dotted), "/", dotfiles=True))
    assert fetch(server.port, "/.env").body == SECRET
    assert fetch(server.port, "/.git/config").body == SECRET
    assert fetch(server.port, "/config.txt").body == SECRET
    assert fetch(server.port, "/docs/.hidden.txt").body == SECRET


@pytest.mark.parametrize("dotfiles", [False, True])
def test_proc_and_sys_are_never_served_through_a_symlink(make_server, dotted, dotfiles):
    assert open("/proc/self/environ", "rb").read()  # there is something to leak
    server = make_server(lambda s: s.add_static_content(str(dotted), "/", dotfiles=dotfiles))
    for target in ("/environ.txt", "/proc/self/environ", "/proc/self/cmdline", "/sys/kernel/"):
        assert fetch(server.port, target).status == 404, target
    assert_serving(server.port)


@pytest.mark.parametrize(
    "root", ["/", "/etc", "/usr", "/var", "/root", "/home", "/bin", "/lib", "/dev", "/run", "~"]
)
def test_system_directories_are_refused_as_a_root(root):
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        pytest.skip(f"no {root} here")
    with pytest.raises(ValueError, match="allow_system_root=True") as info:
        StaticFiles(root)
    assert f"refusing to serve {root}" in str(info.value)
    StaticFiles(root, allow_system_root=True)  # forced


def test_a_symlink_to_a_system_directory_is_refused_as_a_root(tmp_path):
    (tmp_path / "everything").symlink_to("/")
    with pytest.raises(ValueError, match="everything \\(/\\)"):
        StaticFiles(str(tmp_path / "everything"))


@pytest.mark.parametrize("root", ["/proc", "/proc/self", "/sys", "/sys/kernel"])
def test_proc_and_sys_are_refused_as_a_root_even_when_forced(root):
    with pytest.raises(ValueError, match="never"):
        StaticFiles(root, allow_system_root=True)


def test_add_static_content_refuses_a_system_root(make_server):
    with pytest.raises(ValueError, match="refusing to serve /"):
        make_server(lambda s: s.add_static_content("/"))


def test_forced_filesystem_root_still_hides_proc_and_sys(make_server, tree):
    server = make_server(lambda s: s.add_static_content("/", "/", allow_system_root=True))
    notes = fetch(server.port, str(tree / "notes.txt"))
    assert notes.status == 200 and notes.body == b"notes"  # forced: it serves the disk
    for target in (
        "/proc/self/environ",
        "/proc/1/environ",
        "/proc/self/cwd/" + str(tree / "notes.txt"),
        "/proc/self/root/" + str(tree / "notes.txt"),
        "/sys/kernel/hostname",
        "/sys/",
    ):
        assert fetch(server.port, target).status == 404, target
