"""Static files under a URL prefix, with an optional in-memory cache.

Every request path is decoded, split into segments and resolved with
``realpath``; anything that does not land inside the root (``..``, encoded
dots, absolute paths, symlinks pointing out) is refused with 404 before any
file is opened. This module is the one place that guards it.
"""
from __future__ import annotations

import hashlib
import mimetypes
import os
import stat
import time
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import unquote_to_bytes

DEFAULT_DOCUMENT = "index.html"
MIME_TYPES = {
    ".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".json": "application/json",
    ".txt": "text/plain; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".ico": "image/x-icon",
    ".webp": "image/webp", ".wasm": "application/wasm", ".woff2": "font/woff2",
    ".xml": "application/xml", ".pdf": "application/pdf",
}
REVALIDATE_SECONDS = 1.0

Response = tuple[int, list[tuple[str, str]], bytes]


class _Entry:
    __slots__ = ("stamp", "mtime_ns", "body", "etag", "last_modified", "content_type", "checked")

    def __init__(self, st: os.stat_result, body: bytes, content_type: str) -> None:
        self.stamp = _stamp(st)
        self.mtime_ns = st.st_mtime_ns
        self.body = body
        self.etag = '"%s"' % hashlib.blake2b(body, digest_size=12).hexdigest()
        self.last_modified = formatdate(st.st_mtime, usegmt=True)
        self.content_type = content_type
        self.checked = time.monotonic()


class StaticFiles:
    """Serve the files below ``root`` at URL ``prefix``.

    With ``timeout`` (seconds), file contents stay in memory and responses say
    ``Cache-Control: max-age=timeout``; a changed file is re-read within
    ``REVALIDATE_SECONDS``. Without it, each request reads the file.
    """

    def __init__(self, root: str, prefix: str = "/", timeout: float | None = None,
                 default_document: str = DEFAULT_DOCUMENT) -> None:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"static root is not a directory: {root}")
        self.root = os.path.realpath(root)
        self.prefix = "/" + prefix.strip("/")
        self.timeout = timeout
        self.default_document = default_document
        self.mime_types = dict(MIME_TYPES)
        self._cache: dict[str, _Entry] = {}

    def add_mime_type(self, extension: str, content_type: str) -> None:
        self.mime_types["." + extension.lstrip(".").lower()] = content_type

    def matches(self, path: str) -> bool:
        return (self.prefix == "/" or path == self.prefix
                or path.startswith(self.prefix + "/"))

    def resolve(self, path: str) -> tuple[str, bool] | None:
        """(real file path, is a directory) for URL ``path``; None if outside the root or absent.

        ``path`` is the raw (percent-encoded) request path, its bytes decoded
        as latin-1 (as the HTTP layer gives it), or text; once percent-decoded
        it must be UTF-8. A path ending in ``/`` only names a directory.
        """
        rel = path[len(self.prefix):] if self.prefix != "/" else path
        decoded = _decode_path(rel)
        if "\x00" in decoded or "\\" in decoded:
            return None
        segments = [s for s in decoded.split("/") if s]
        for segment in segments:
            if (segment in (".", "..") or os.path.isabs(segment)
                    or os.path.splitdrive(segment)[0]):
                return None
        candidate = os.path.realpath(os.path.join(self.root, *segments))
        if not self._inside(candidate):
            return None
        if os.path.isdir(candidate):
            index = os.path.realpath(os.path.join(candidate, self.default_document))
            if self._inside(index) and os.path.isfile(index):
                return index, True
            return None
        if decoded.endswith("/"):
            return None
        return (candidate, False) if os.path.isfile(candidate) else None

    def _inside(self, real_path: str) -> bool:
        return real_path == self.root or real_path.startswith(os.path.join(self.root, ""))

    def serve(self, method: str, path: str, headers: dict[str, str]) -> Response | None:
        """The response for ``path``, or None when no file answers to it."""
        try:
            found = self.resolve(path)
        except (UnicodeError, ValueError, OSError):
            return None
        if found is None:
            return None
        file_path, is_dir = found
        if method not in ("GET", "HEAD"):
            return 405, [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")], b"method not allowed\n"
        if is_dir and not path.endswith("/"):
            # one leading slash: "//host/dir" must not redirect to another host
            return 301, [("Location", "/" + path.lstrip("/") + "/")], b""
        entry = self._entry(file_path)
        if entry is None:
            return None
        out = [("Content-Type", entry.content_type), ("ETag", entry.etag),
               ("Last-Modified", entry.last_modified)]
        if self.timeout is not None:
            out.append(("Cache-Control", f"max-age={int(self.timeout)}"))
        if _not_modified(headers, entry):
            return 304, out, b""
        return 200, out, entry.body

    def _entry(self, file_path: str) -> _Entry | None:
        entry = self._cache.get(file_path)
        now = time.monotonic()
        if entry is not None and now - entry.checked < REVALIDATE_SECONDS:
            return entry
        try:
            st = os.stat(file_path)
        except OSError:
            self._cache.pop(file_path, None)
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        if entry is not None and entry.stamp == _stamp(st):
            entry.checked = now
            return entry
        try:
            with open(file_path, "rb") as f:
                body = f.read()
        except OSError:
            return None
        entry = _Entry(st, body, self._content_type(file_path))
        if self.timeout is not None:
            self._cache[file_path] = entry
        return entry

    def _content_type(self, file_path: str) -> str:
        ext = os.path.splitext(file_path)[1].lower()
        return (self.mime_types.get(ext) or mimetypes.guess_type(file_path)[0]
                or "application/octet-stream")


def _decode_path(rel: str) -> str:
    """Percent-decode ``rel`` as UTF-8; raises UnicodeError when it is not."""
    try:
        raw = rel.encode("latin-1")             # the request's bytes, as the HTTP layer passes them
        return (unquote_to_bytes(raw) if b"%" in raw else raw).decode("utf-8")
    except UnicodeError:
        raw = rel.encode("utf-8")               # text that is already decoded
        return (unquote_to_bytes(raw) if b"%" in raw else raw).decode("utf-8")


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a file is written or replaced."""
    return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino


def _not_modified(headers: dict[str, str], entry: _Entry) -> bool:
    inm = headers.get("if-none-match")
    if inm is not None:
        return any(tag.strip() in (entry.etag, "*", "W/" + entry.etag) for tag in inm.split(","))
    ims = headers.get("if-modified-since")
    if ims is not None:
        try:
            return parsedate_to_datetime(ims).timestamp() >= entry.mtime_ns // 1_000_000_000
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
    return False
