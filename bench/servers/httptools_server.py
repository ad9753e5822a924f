"""Raw uvloop + httptools peer (the HTTP floor): every request gets one fixed JSON response.

    python bench/servers/httptools_server.py --port 8080

An ``asyncio.Protocol`` feeding an ``httptools.HttpRequestParser``; on each
complete request it writes the same pre-built ``200`` with a 27-byte JSON body
(``Connection: close`` when the client asked for it). No routing, no request
object, no JSON encoding: what an HTTP/1.1 server on this stack cannot go below.
"""

from __future__ import annotations

import asyncio

import httptools
import uvloop

from _common import JSON_BODY, parse_args, serve_until_signal

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(JSON_BODY)).encode()
    + b"\r\n\r\n"
    + JSON_BODY
)
RESPONSE_CLOSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


class FixedJson(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.transport.close()

    def on_message_complete(self) -> None:
        if self.parser.should_keep_alive():
            self.transport.write(RESPONSE)
        else:
            self.transport.write(RESPONSE_CLOSE)
            self.transport.close()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        await serve_until_signal(
            await loop.create_server(FixedJson, args.host, args.port, backlog=4096)
        )

    uvloop.run(serve())


if __name__ == "__main__":
    main()
