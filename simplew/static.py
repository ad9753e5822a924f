"""Static files under a URL prefix: a bounded in-memory cache, streamed large files,
single byte ranges, conditional requests and precompressed siblings.

Every request path is decoded, split into segments and resolved with
``realpath``; anything that does not land inside the root (``..``, encoded
dots, absolute paths, symlinks pointing out) is refused with 404 before any
file is opened. So is, unless ``dotfiles=True``, a path with a segment that
starts with ``.`` (``/.env``, ``/.git/config``; ``.well-known`` excepted), in
the URL or once symlinks are resolved; and, always, anything under ``/proc``
or ``/sys`` (or on their file systems). This module is the one place that
guards it; a precompressed sibling (``app.js.br``) passes the same check.

A system directory (``/``, ``/etc``, ``/usr``, the user's home, ...: see
:func:`system_directory`) is refused as a root unless ``allow_system_root=True``;
``/proc`` and ``/sys`` always.

Files up to ``cache_max_file`` bytes are kept in memory (least recently used
first out once their total passes ``cache_budget``); larger files are answered
with a :class:`~simplew._fast.http.FileBody` that the connection streams from
the open file, so memory does not grow with file size or downloads.
"""

from __future__ import annotations

import enum
import hashlib
import mimetypes
import os
import stat
import time
from collections import OrderedDict
from email.utils import formatdate, parsedate_to_datetime
from typing import Final, Literal
from urllib.parse import unquote_to_bytes

from simplew._fast.http import FileBody, PreparedBody

try:
    import fcntl
except ImportError:  # Windows: no memfd either
    fcntl = None  # type: ignore[assignment]

DEFAULT_DOCUMENT = "index.html"
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".wasm": "application/wasm",
    ".woff2": "font/woff2",
    ".xml": "application/xml",
    ".pdf": "application/pdf",
    # compressed files asked for by name: their own type, not that of what they hold
    ".gz": "application/gzip",
    ".br": "application/octet-stream",
}
REVALIDATE_SECONDS = 1.0
CACHE_MAX_FILE = 1 << 20  # bytes: larger files are streamed, never held in memory
CACHE_BUDGET = 64 << 20  # bytes of file contents kept in memory in all
MAX_ENTRIES = 10_000  # files whose metadata is remembered
MAX_ROUTES = 4096  # URL paths whose resolution is remembered
MAX_ROUTE_LENGTH = 512  # longer URL paths are resolved every time
# precompressed siblings, in order of preference: (content coding, file suffix)
ENCODINGS = (("br", ".br"), ("gzip", ".gz"))
# the one dotfile name served by default (RFC 8615: ACME challenges, security.txt, ...)
WELL_KNOWN = ".well-known"
# never served, whatever the options: process environments, kernel and device state
NEVER_SERVED = ("/proc", "/sys")
# refused as a static root, with everything below them, unless allow_system_root=True
SYSTEM_TREES = ("/dev", "/etc", "/boot", "/run")
# refused as a static root (themselves, not what is below) unless allow_system_root=True;
# so is any top-level /lib* and the home directory of the user running the server
SYSTEM_DIRECTORIES = ("/", "/bin", "/sbin", "/usr", "/var", "/root", "/home")

Response = tuple[int, list[tuple[str, str]], "bytes | FileBody | PreparedBody"]


class _Entry:
    """What is known of one file: validators, size and, for a small file, its bytes."""

    __slots__ = (
        "path",
        "stamp",
        "size",
        "mtime",
        "etag",
        "last_modified",
        "body",
        "checked",
        "siblings",
        "prepared",
    )

    def __init__(self, path: str, st: os.stat_result, body: bytes | None, now: float) -> None:
        self.path = path
        self.stamp = _stamp(st)
        self.size = st.st_size if body is None else len(body)
        self.mtime = st.st_mtime_ns // 1_000_000_000
        if body is not None:
            self.etag = f'"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'
        else:  # a streamed file is not read to hash it: its identity on disk stands in
            digest = hashlib.blake2b(repr(self.stamp).encode(), digest_size=12).hexdigest()
            self.etag = f'"{digest}"'
        self.last_modified = formatdate(self.mtime, usegmt=True)
        self.body = body
        self.checked = now
        self.siblings: tuple[str, ...] = ()  # encodings with a precompressed sibling
        self.prepared: PreparedBody | None = None


class StaticFiles:
    """Serve the files below ``root`` at URL ``prefix``.

    With ``timeout`` (seconds), responses say ``Cache-Control: max-age=timeout``
    and a file is looked at again on disk at most every ``REVALIDATE_SECONDS``
    (a change shows within that). Without it, every request checks the file
    (a change shows at once). Either way the bytes of files up to
    ``cache_max_file`` are kept in memory, ``cache_budget`` bytes in all.

    Counters for ``/metrics`` and tests: ``cache_bytes``, ``cache_files``
    (files held in memory), ``cache_evictions``, ``cache_hits``, ``cache_misses``.

    A path with a segment starting with ``.`` (but ``.well-known``) gets 404
    unless ``dotfiles`` is true. A system directory as ``root`` raises
    ValueError unless ``allow_system_root`` is true (see :func:`system_directory`);
    nothing under ``/proc`` or ``/sys`` is ever served.
    """

    def __init__(
        self,
        root: str,
        prefix: str = "/",
        timeout: float | None = None,
        default_document: str = DEFAULT_DOCUMENT,
        cache_max_file: int = CACHE_MAX_FILE,
        cache_budget: int = CACHE_BUDGET,
        *,
        dotfiles: bool = False,
        allow_system_root: bool = False,
    ) -> None:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"static root is not a directory: {root}")
        real = os.path.realpath(root)
        shown = root if real == root else f"{root} ({real})"
        if _never_served(real):
            raise ValueError(
                f"refusing to serve {shown} as a static root: /proc and /sys never are"
            )
        if not allow_system_root and system_directory(root):
            raise ValueError(
                f"refusing to serve {shown} as a static root: a system directory "
                "(allow_system_root=True, or simplew serve --allow-system-root, forces it)"
            )
        self.root = real
        self._root_slash = os.path.join(real, "")
        self.dotfiles = dotfiles
        self.prefix = "/" + prefix.strip("/")
        self.timeout = timeout
        self.default_document = default_document
        self.cache_max_file = cache_max_file
        self.cache_budget = cache_budget
        self.mime_types = dict(MIME_TYPES)
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._routes: dict[str, tuple[str, bool, float]] = {}
        self._content_types: dict[str, str] = {}
        self.cache_bytes = 0
        self.cache_files = 0
        self.cache_evictions = 0
        self.cache_hits = 0
        self.cache_misses = 0

    def add_mime_type(self, extension: str, content_type: str) -> None:
        self.mime_types["." + extension.lstrip(".").lower()] = content_type
        self._content_types.clear()
        for entry in self._cache.values():
            self._unprepare(entry)

    def matches(self, path: str) -> bool:
        return self.prefix == "/" or path == self.prefix or path.startswith(self.prefix + "/")

    def resolve(self, path: str) -> tuple[str, bool] | None:
        """(real file path, is a directory) for URL ``path``; None if outside the root or absent.

        ``path`` is the raw (percent-encoded) request path, its bytes decoded
        as latin-1 (as the HTTP layer gives it), or text; once percent-decoded
        it must be UTF-8. A path ending in ``/`` only names a directory.
        """
        rel = path[len(self.prefix) :] if self.prefix != "/" else path
        decoded = _decode_path(rel)
        if "\x00" in decoded or "\\" in decoded:
            return None
        segments = [s for s in decoded.split("/") if s]
        for segment in segments:
            if segment in (".", "..") or os.path.isabs(segment) or os.path.splitdrive(segment)[0]:
                return None
            if segment[0] == "." and not self.dotfiles and segment != WELL_KNOWN:
                return None
        named = os.path.join(self.root, *segments)
        if _never_served(named):  # /proc/self/root/... resolves elsewhere: refused as named
            return None
        candidate = os.path.realpath(named)
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
        """Whether ``real_path`` (symlinks resolved) may be served: inside the root,
        not under /proc or /sys, and no dotfile on the way unless allowed."""
        if real_path != self.root and not real_path.startswith(self._root_slash):
            return False
        if _never_served(real_path):
            return False
        rel = real_path[len(self._root_slash) - 1 :]  # "" or "/a/b"
        if not self.dotfiles and "/." in rel:
            return all(s == WELL_KNOWN or s[:1] != "." for s in rel.split("/"))
        return True

    def serve(self, method: str, path: str, headers: dict[str, str]) -> Response | None:
        """The response for ``path``, or None when no file answers to it.

        The body is bytes, a :class:`FileBody` (a file too large for the cache:
        the caller owns its descriptor) or a :class:`PreparedBody` (bytes whose
        encoded headers the HTTP layer may reuse).
        """
        now = time.monotonic()
        found = self._route(path, now)
        if found is None:
            return None
        file_path, is_dir = found
        if method != "GET" and method != "HEAD":
            return (
                405,
                [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")],
                b"method not allowed\n",
            )
        if is_dir and not path.endswith("/"):
            # one leading slash: "//host/dir" must not redirect to another host
            return 301, [("Location", "/" + path.lstrip("/") + "/")], b""
        entry = self._entry(file_path, now)
        if entry is None:
            self._routes.pop(path, None)
            return None
        chosen, coding = entry, None
        if entry.siblings:
            accepted = _accepted_codings(headers.get("accept-encoding"))
            for name in entry.siblings:
                if name in accepted:
                    variant = self._entry(file_path + _SUFFIX[name], now)
                    if variant is not None:
                        chosen, coding = variant, name
                        break
        if chosen is entry and entry.prepared is not None and _CONDITIONAL.isdisjoint(headers):
            return 200, entry.prepared.headers, entry.prepared  # the common case, unchanged
        out = self._headers(entry, chosen, coding)
        if _not_modified(headers, chosen):
            return 304, out, b""
        ranges = headers.get("range")
        if (
            ranges is not None
            and method == "GET"
            and _if_range_holds(headers.get("if-range"), chosen)
        ):
            span = _byte_range(ranges, chosen.size)
            if span is _UNSATISFIABLE:
                return (
                    416,
                    [
                        ("Content-Range", f"bytes */{chosen.size}"),
                        ("Content-Type", "text/plain; charset=utf-8"),
                    ],
                    b"range not satisfiable\n",
                )
            if span is not None:
                first, last = span
                out.append(("Content-Range", f"bytes {first}-{last}/{chosen.size}"))
                return 206, out, self._body(chosen, first, last + 1 - first)
        if chosen is entry and entry.body is not None and self._cache.get(entry.path) is entry:
            if entry.prepared is None:  # counted in the budget while the entry is held
                entry.prepared = entry.body = PreparedBody(out, entry.body)
                if len(entry.body) >= SENDFILE_MIN:
                    file = _sealed_copy(entry.body)
                    if file is not None:
                        entry.prepared.keep_in(file)
                self.cache_bytes += _held(entry) - len(entry.body)
                self._evict()
            return 200, out, entry.prepared
        return 200, out, self._body(chosen, 0, chosen.size)

    def _headers(self, entry: _Entry, chosen: _Entry, coding: str | None) -> list[tuple[str, str]]:
        out = [
            ("Content-Type", self._content_type(entry.path)),
            ("ETag", chosen.etag),
            ("Last-Modified", chosen.last_modified),
            ("Accept-Ranges", "bytes"),
        ]
        if self.timeout is not None:
            out.append(("Cache-Control", f"max-age={int(self.timeout)}"))
        if coding is not None:
            out.append(("Content-Encoding", coding))
        if entry.siblings:
            out.append(("Vary", "Accept-Encoding"))
        return out

    def _body(self, entry: _Entry, offset: int, length: int) -> bytes | FileBody:
        """``length`` bytes from ``offset``: from memory, or a FileBody to stream."""
        if entry.body is not None:
            return entry.body[offset : offset + length]
        fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        return FileBody(fd, offset, length)

    # -- the cache -----------------------------------------------------------------

    def _route(self, path: str, now: float) -> tuple[str, bool] | None:
        """``resolve(path)``, remembered for ``REVALIDATE_SECONDS`` when there is a timeout.

        A path that no longer resolves takes its file's cache entry with it.
        """
        known = self._routes.get(path)
        if known is not None and self.timeout is not None and now - known[2] < REVALIDATE_SECONDS:
            return known[0], known[1]
        try:
            found = self.resolve(path)
        except (UnicodeError, ValueError, OSError):
            found = None
        if found is None:
            if known is not None:
                del self._routes[path]
                if known[0] in self._cache:
                    self._forget(known[0])
            return None
        if len(path) <= MAX_ROUTE_LENGTH:
            if len(self._routes) >= MAX_ROUTES:
                self._routes.clear()
            self._routes[path] = (found[0], found[1], now)
        return found

    def _entry(self, file_path: str, now: float) -> _Entry | None:
        """The cache entry of ``file_path``, looked at again on disk when due; None if gone."""
        cache = self._cache
        entry = cache.get(file_path)
        interval = REVALIDATE_SECONDS if self.timeout is not None else 0.0
        if entry is not None and now - entry.checked < interval:
            cache.move_to_end(file_path)
            self.cache_hits += 1
            return entry
        try:
            st = os.stat(file_path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_dev in _NEVER_DEVICES:
            if entry is not None:
                self._forget(file_path)
            return None
        if entry is not None and entry.stamp == _stamp(st):
            entry.checked = now
            siblings = self._siblings(file_path)
            if siblings != entry.siblings:  # the Vary header changes
                entry.siblings = siblings
                self._unprepare(entry)
            cache.move_to_end(file_path)
            self.cache_hits += 1
            return entry
        self.cache_misses += 1
        if entry is not None:
            self._forget(file_path)
        body = None
        if st.st_size <= self.cache_max_file and st.st_size <= self.cache_budget:
            try:
                with open(file_path, "rb") as f:
                    st = os.fstat(f.fileno())
                    body = f.read(self.cache_max_file + 1)
            except OSError:
                return None
            if len(body) > self.cache_max_file:  # it grew meanwhile: stream it instead
                body = None
        entry = _Entry(file_path, st, body, now)
        entry.siblings = self._siblings(file_path)
        cache[file_path] = entry
        if body is not None:
            self.cache_bytes += _held(entry)
            self.cache_files += 1
        self._evict()
        return entry

    def _forget(self, file_path: str) -> None:
        entry = self._cache.pop(file_path)
        if entry.body is not None:
            self.cache_bytes -= _held(entry)
            self.cache_files -= 1

    def _unprepare(self, entry: _Entry) -> None:
        if entry.prepared is not None:
            self.cache_bytes -= _held(entry)
            entry.prepared.wire = None  # the body stays; its encoded answer goes
            entry.prepared = None
            self.cache_bytes += _held(entry)

    def _evict(self) -> None:
        """Drop the least recently used entries while over the byte budget or entry count."""
        cache = self._cache
        while cache and (self.cache_bytes > self.cache_budget or len(cache) > MAX_ENTRIES):
            _, entry = cache.popitem(last=False)
            if entry.body is not None:
                self.cache_bytes -= _held(entry)
                self.cache_files -= 1
            self.cache_evictions += 1

    def _siblings(self, file_path: str) -> tuple[str, ...]:
        """The encodings of ``file_path`` with a precompressed regular file inside the root."""
        if file_path.endswith((".br", ".gz")):
            return ()
        found = []
        for name, suffix in ENCODINGS:
            sibling = file_path + suffix
            try:
                if os.path.isfile(sibling) and self._inside(os.path.realpath(sibling)):
                    found.append(name)
            except (OSError, ValueError):
                pass
        return tuple(found)

    def _content_type(self, file_path: str) -> str:
        known = self._content_types.get(file_path)
        if known is None:
            ext = os.path.splitext(file_path)[1].lower()
            known = (
                self.mime_types.get(ext)
                or mimetypes.guess_type(file_path)[0]
                or "application/octet-stream"
            )
            if len(self._content_types) >= MAX_ENTRIES:
                self._content_types.clear()
            self._content_types[file_path] = known
        return known


_SUFFIX = dict(ENCODINGS)


def _devices(paths: tuple[str, ...]) -> frozenset[int]:
    """The devices of those of ``paths`` that are mount points (a bare directory
    shares the device of ``/``: refusing that device would refuse every file)."""
    found = set()
    for path in paths:
        try:
            if os.path.ismount(path):
                found.add(os.stat(path).st_dev)
        except OSError:
            pass
    return frozenset(found)


# the file systems of /proc and /sys, wherever else they are mounted (a container's /host/proc)
_NEVER_DEVICES = _devices(NEVER_SERVED)


def _never_served(real_path: str) -> bool:
    """Whether ``real_path`` (symlinks resolved) is /proc, /sys or below them."""
    return any(real_path == top or real_path.startswith(top + "/") for top in NEVER_SERVED)


def system_directory(path: str) -> bool:
    """Whether ``path`` is refused as a static root without ``allow_system_root``.

    That is, as given or once symlinks are resolved: ``/``, ``/bin``, ``/sbin``,
    ``/usr``, ``/var``, ``/root``, ``/home``, any top-level ``/lib*``, the home
    directory of the user running the server (each of them, or a directory
    above one: ``/home`` holds ``/home/me``), and ``/dev``, ``/etc``, ``/boot``,
    ``/run``, ``/proc``, ``/sys`` with everything below them. Subdirectories of
    the first group (``/var/www``, ``/home/me/site``) are fine.
    """
    exact = set(SYSTEM_DIRECTORIES)
    home = os.path.expanduser("~")
    if os.path.isabs(home):
        exact.add(home)
    exact |= {os.path.realpath(p) for p in exact}  # /bin is /usr/bin on merged-/usr systems
    trees = {*SYSTEM_TREES, *NEVER_SERVED}
    trees |= {os.path.realpath(p) for p in trees}  # /etc is /private/etc on macOS
    for candidate in {os.path.abspath(path), os.path.realpath(path)}:
        if candidate in exact:
            return True
        parent, name = os.path.split(candidate)
        if parent == "/" and name.startswith("lib"):
            return True
        if any(candidate == t or candidate.startswith(t + "/") for t in trees):
            return True
        below = os.path.join(candidate, "")
        if any(p.startswith(below) for p in exact | trees):  # "/" holds them all
            return True
    return False


WIRE_OVERHEAD = 512  # bytes of a prepared answer's head, counted in the budget

# A cached body at least this large is also kept in a sealed memory file, which plain
# TCP connections send with sendfile (no copy of the body into the socket); smaller
# ones go out in one write with their head. Where memfd is missing, every body does.
SENDFILE_MIN = 32 * 1024


def _sealed_copy(body: bytes) -> FileBody | None:
    """``body`` in a memfd that no one can change any more, or None where there is
    no memfd. It is what sendfile sends: the bytes of the cache entry, never a file
    on disk edited since it was read."""
    create = getattr(os, "memfd_create", None)
    if create is None or fcntl is None or not hasattr(fcntl, "F_ADD_SEALS"):
        return None
    try:
        fd = create("simplew-static", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError:
        return None
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view) :]
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except OSError:
        os.close(fd)
        return None
    return FileBody(fd, 0, len(body))


def _held(entry: _Entry) -> int:
    """Bytes of memory ``entry`` holds: its body, and once prepared the encoded answer
    (or, for a large body, its sealed copy: the same size)."""
    size = len(entry.body) if entry.body is not None else 0
    return size + size + WIRE_OVERHEAD if entry.prepared is not None else size


# request headers that can change a file's answer from the plain 200
_CONDITIONAL = frozenset(
    ("if-none-match", "if-modified-since", "range", "if-range", "accept-encoding")
)


class _Range(enum.Enum):
    """What ``_byte_range`` answers, besides a span or None, for a range past the file's end."""

    UNSATISFIABLE = "unsatisfiable"


_UNSATISFIABLE: Final = _Range.UNSATISFIABLE


def _decode_path(rel: str) -> str:
    """Percent-decode ``rel`` as UTF-8; raises UnicodeError when it is not."""
    try:
        raw = rel.encode("latin-1")  # the request's bytes, as the HTTP layer passes them
        return (unquote_to_bytes(raw) if b"%" in raw else raw).decode("utf-8")
    except UnicodeError:
        raw = rel.encode("utf-8")  # text that is already decoded
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
        since = _parse_date(ims)
        return since is not None and since >= entry.mtime
    return False


def _parse_date(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _if_range_holds(value: str | None, entry: _Entry) -> bool:
    """Whether a Range applies: no If-Range, or it names this very representation.

    An entity tag must match strongly; a date must equal Last-Modified.
    """
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        return value == entry.etag
    date = _parse_date(value)
    return date is not None and date == entry.mtime


def _byte_range(value: str, size: int) -> tuple[int, int] | Literal[_Range.UNSATISFIABLE] | None:
    """(first, last) byte of a single ``bytes=`` range over ``size`` bytes.

    None when the header is to be ignored (malformed, another unit, several
    ranges), ``_UNSATISFIABLE`` when no byte of it lies in the file.
    """
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not (first_text or last_text):
        return None
    # ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and "٣"
    if (first_text and not _digits(first_text)) or (last_text and not _digits(last_text)):
        return None
    if not first_text:  # "-n": the last n bytes
        n = int(last_text)
        if n == 0 or size == 0:
            return _UNSATISFIABLE
        return max(0, size - n), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    last = int(last_text) if last_text else size - 1
    if first >= size:
        return _UNSATISFIABLE
    return first, min(last, size - 1)


def _digits(text: str) -> bool:
    """Whether ``text`` is one or more ASCII digits."""
    return text.isascii() and text.isdigit()


def _accepted_codings(value: str | None) -> frozenset[str]:
    """The content codings an Accept-Encoding value allows (``q=0`` refuses one)."""
    if not value:
        return frozenset()
    allowed, refused = set(), set()
    wildcard = False
    for item in value.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, number = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(number)
                except ValueError:
                    q = 0.0
        if name == "*":
            wildcard = q > 0
        elif q > 0:
            allowed.add(name)
        else:
            refused.add(name)
    if wildcard:
        allowed.update(n for n, _ in ENCODINGS if n not in refused)
    if "x-gzip" in allowed and "gzip" not in refused:
        allowed.add("gzip")
    return frozenset(allowed)
