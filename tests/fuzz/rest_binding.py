"""Harness 5: REST parameter binding (simplew.rest ``_bind`` and
``message._convert`` through ``Router.dispatch``).

Input: ``METHOD TARGET\\n`` then the body, bytes read as latin-1 like the
HTTP front does; TARGET is the path and query string. A request with a body
has ``Content-Type: application/json``, unless the first line holds a tab:
``METHOD TARGET\\tTYPE\\n`` sends TYPE instead (none when TYPE is empty), so
JSON-bound routes are reached as well as their 415. The request goes to
the server facade's ``http_handler`` (CORS, ops, router, static), and an
awaitable answer is awaited.

Invariants: no exception escapes, nothing logged at ERROR; the answer is a
(status, headers, body) tuple with a status out of the documented set (200,
201, 204, 301, 304, 400, 401, 403, 404, 405, 409, 426), never 500 (the handlers
raise AssertionError when a bound argument lacks its declared type); 415 only
for a body under a type that is not JSON; header
names and values hold no line break; every JSON answer parses with a strict
parser (no ``NaN``, ``Infinity`` or number past a float's range), and every
4xx from the router is a JSON object with an ``error`` string. The handlers
check that each float they get is finite and that each int was written in
ASCII digits with an optional sign. JSON bodies are mutated structurally
(json_mutator.py) as well as byte by byte.
"""

from __future__ import annotations

import support
from targets import server

stats = support.stats
STATUSES = {200, 201, 204, 301, 304, 400, 401, 403, 404, 405, 409, 415, 426}

from simplew.request import Request  # noqa: E402  (imported instrumented by targets)


def test_one_input(data: bytes) -> None:
    head, _, body = data.partition(b"\n")
    line, tab, content_type = head.decode("latin-1").partition("\t")
    method, _, target = line.partition(" ")
    path, _, query = target.partition("?")
    if not path.startswith("/"):
        path = "/" + path
    headers = {"host": "fuzz"}
    if not tab:
        content_type = "application/json" if body else ""
    if content_type:
        headers["content-type"] = content_type
    if body[:1] == b"\x00":  # a CORS request
        headers["origin"] = "http://a.example"
    request = Request(method or "GET", path, query, headers, body)
    s = server()
    result = s.http_handler(request)
    if not isinstance(result, tuple):
        result = support.loop().run_until_complete(result)
    support.GUARD.check()
    status, out_headers, content = result
    support.note(f"status {status}")
    assert status in STATUSES, f"{status}: {content[:300]!r}"
    if status == 415:  # only for a body whose type is not application/json or .../...+json
        media = content_type.partition(";")[0].strip().lower()
        kind, _, subtype = media.partition("/")
        json_type = kind == "application" and (
            subtype == "json" or (len(subtype) > 5 and subtype.endswith("+json"))
        )
        assert body and not json_type, data
    for name, value in out_headers:
        line = f"{name}: {value}"
        assert "\r" not in line and "\n" not in line, f"line break in header {line!r}"
    ctype = dict(out_headers).get("Content-Type", "")
    if ctype == "application/json":  # every JSON answer is JSON: no NaN, no Infinity
        payload = support.strict_json(content)
        if 400 <= status < 500:
            assert isinstance(payload, dict) and isinstance(payload.get("error"), str), payload


def seeds() -> dict[str, bytes]:
    return {
        "get_item": b"GET /api/items/7?verbose=on&limit=3&ratio=0.5&kind=b&mode=y"
        b"&when=2024-01-02T03:04:05Z&day=2024-02-03"
        b"&uid=12345678-1234-5678-1234-567812345678&name=%C3%A9\n",
        "get_item_bad": b"GET /api/items/x?limit=&kind=c\n",
        "delete_item": b"DELETE /api/items/12345678123456781234567812345678\n",
        "nums": b"GET /api/nums?n=1&n=2&n=-3&t=1.5&t=inf&s=a&s=a\n",
        "pair": b"GET /api/pair?p=1&p=two\n",
        "opt": b"GET /api/opt/3/2.5\n",
        "opt_encoded": b"GET /api/opt/%33/nan/\n",
        "create_user": b'POST /api/users\n{"name":"a","age":3,"role":"admin","address":{"street":"s",'
        b'"zip":9},"pair":[1,"x"],"flags":["f"],"born":"2020-01-01"}',
        "create_user_bad": b'POST /api/users\n{"name":"a","age":true}',
        "put_counts": b'PUT /api/users/b%20c\n{"x":1,"y":2}',
        "raw": b"POST /api/raw\n\x00\x01\x02",
        "create_user_text_plain": b'POST /api/users\ttext/plain;charset=UTF-8\n{"name":"a","age":3}',
        "create_user_no_type": b'POST /api/users\t\n{"name":"a","age":3}',
        "create_user_json_type": b"POST /api/users\tApplication/Vnd.X+JSON; charset=utf-8\n"
        b'{"name":"a","age":3}',
        "maybe_empty_text_plain": b"POST /api/maybe\ttext/plain\n",
        "create_user_plus_json_not_application": b"POST /api/users\ttext/x+json\nnull",
        "float_query_overflow": b"GET /api/items/7?ratio=1e999\n",
        "float_query_nan": b"GET /api/nums?n=1&t=2.5&t=NaN\n",
        "float_path_infinity": b"GET /api/opt/3/-Infinity\n",
        "int_arabic_indic_path": b"GET /api/items/%D9%A7?limit=%D9%A3\n",
        "int_underscore_query": b"GET /api/nums?n=1_000&n=%207\n",
        "body_nan": b'POST /api/users\n{"name":"a","age":3,"scores":{"m":NaN}}',
        "body_infinity": b'PUT /api/users/x\n{"a":1,"b":-Infinity}',
        "body_overflow": b'POST /api/users\n{"name":"a","age":3,"scores":{"m":1e999}}',
        "body_int_past_float": b'POST /api/users\n{"name":"a","age":3,"scores":{"m":1'
        + b"0" * 400
        + b"}}",
        "text": b"POST /api/text\nhello",
        "list": b"POST /api/list?scale=2\n[1,2,3]",
        "maybe_empty": b"POST /api/maybe\n",
        "maybe": b'POST /api/maybe\n{"street":"s","zip":1}',
        "slow": b"GET /api/slow?n=5\n",
        "teapot": b"GET /api/teapot?code=409\n",
        "secure": b"GET /api/secure\n",
        "method_not_allowed": b"PATCH /api/nums\n",
        "head": b"HEAD /api/items/1\n",
        "options": b"OPTIONS /api/users\n\x00",
        "hello": b"GET /hello?name=x\n",
        "static": b"GET /sub/\n",
    }


def _split(data: bytes) -> tuple[bytes, bytes]:
    head, newline, body = data.partition(b"\n")
    return head + newline, body


if __name__ == "__main__":
    from json_mutator import make_mutator

    support.main(
        test_one_input,
        make_mutator(
            _split,
            ("name", "age", "role", "address", "street", "zip", "pair", "flags", "born", "x"),
        ),
    )
