"""Harness 6: the request scanner (simplew._fast.head) against httptools.

The scanner reads common requests ahead of httptools in ``HttpProtocol``; it
must never read one differently. Input: the bytes a client sends.

Invariants: when ``RequestScanner.scan`` takes ``n`` bytes, httptools reads
exactly one complete request from those ``n`` bytes and none from the first
``n - 1``, without an error or an upgrade, and the two agree on the method,
the path and query (``httptools.parse_url``), every header (lower-cased name,
value as reported), the body, the HTTP version and keep-alive. The request
also passes the checks http.pyx makes after httptools (one Host on HTTP/1.1,
no Transfer-Encoding or Expect, a numeric Content-Length, not CONNECT).
After the scanned request, the rest of the input is scanned the same way.
"""

from __future__ import annotations

import httptools

import support
from simplew._fast.head import RequestScanner

stats = support.stats
SCANNER = RequestScanner()


class _Reading:
    """What httptools reports of each request, read in one feed."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.messages: list[dict] = []
        self.current: dict = {}

    def on_message_begin(self) -> None:
        self.current = {"url": b"", "headers": [], "body": b""}

    def on_url(self, url: bytes) -> None:
        self.current["url"] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current["headers"].append((name, value))

    def on_body(self, body: bytes) -> None:
        self.current["body"] += body

    def on_message_complete(self) -> None:
        p = self.parser
        self.current.update(
            method=p.get_method().decode("ascii"),
            version=p.get_http_version(),
            keep_alive=p.should_keep_alive(),
            upgrade=p.should_upgrade(),
        )
        self.messages.append(self.current)


def read(data: bytes) -> tuple[list[dict], str | None]:
    """The requests httptools completes in ``data`` and the error it stopped at."""
    reading = _Reading()
    try:
        reading.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return reading.messages, "upgrade"
    except httptools.HttpParserError as exc:
        return reading.messages, f"{type(exc).__name__}: {exc}"
    return reading.messages, None


def check(data: bytes, scanner: RequestScanner = SCANNER) -> int:
    """Compare the scanner with httptools on ``data``; the requests scanned."""
    scanned = 0
    pos = 0
    while pos < len(data):
        n = scanner.scan_bytes(data, pos)
        if n == 0:
            break
        request = data[pos : pos + n]
        messages, error = read(request)
        assert error is None, f"scanned {request!r}, httptools: {error}"
        assert len(messages) == 1, f"scanned {request!r}, httptools read {len(messages)}"
        assert not read(request[:-1])[0], f"httptools completes {request[:-1]!r} already"
        m = messages[0]
        assert not m["upgrade"]
        assert m["method"] == scanner.method and m["method"] != "CONNECT"
        url = httptools.parse_url(m["url"])
        assert (url.path.decode("latin-1") if url.path else "/") == scanner.path, (m, scanner.path)
        assert (url.query.decode("latin-1") if url.query else "") == scanner.query, (
            m,
            scanner.query,
        )
        headers: dict[str, str] = {}
        for name, value in m["headers"]:
            key = name.decode("latin-1").lower()
            assert key not in headers, f"scanned a repeated header {key!r}"
            headers[key] = value.decode("latin-1")
        assert headers == scanner.headers, (headers, scanner.headers)
        assert m["body"] == scanner.body
        assert m["version"] == ("1.0" if scanner.http10 else "1.1")
        assert m["keep_alive"] == scanner.keep_alive, (request, m["keep_alive"])
        assert "host" in headers or scanner.http10
        assert "transfer-encoding" not in headers and "expect" not in headers
        assert headers.get("content-length", "0").isdigit()
        scanned += 1
        pos += n
    return scanned


def test_one_input(data: bytes) -> None:
    scanned = check(data)
    support.note(f"scanned {min(scanned, 3)}")
    if scanned == 0:
        messages, error = read(data)
        support.note(
            "left to httptools: " + ("error" if error else f"{min(len(messages), 3)} read")
        )


def seeds() -> dict[str, bytes]:
    return {
        "get": b"GET /json HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
        "query": b"GET /api/items/7?verbose=yes&x=%20y&z=a?b HTTP/1.1\r\nHost: x\r\n"
        b"Accept: */*\r\nUser-Agent: curl/8.0 \t\r\n\r\n",
        "post": b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 13\r\n\r\n{"name":"a"}\n',
        "http10": b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\nHEAD /a HTTP/1.0\r\n\r\n",
        "close": b"DELETE /x/1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        "pipelined": b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPUT /b HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 2\r\n\r\nokOPTIONS /c HTTP/1.1\r\nHost: x\r\nX-Empty:\r\n\r\n",
        "chunked": b"PATCH /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        "upgrade": b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    }


if __name__ == "__main__":
    support.main(test_one_input)
