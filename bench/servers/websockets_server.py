"""websockets 17 peer (asyncio implementation): ``broadcast()`` over a set of connections.

    python bench/servers/websockets_server.py --port 8765 [--static-dir DIR]

Written as websockets's docs recommend ("Broadcasting" topic: keep a set of
connections in the handler, call ``broadcast(CONNECTIONS, message)``). Default
options (keepalive pings every 20 s, permessage-deflate offered but not
requested by the load generator). Static files come from ``process_request``
(a non-101 response; websockets closes the connection after it).
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import signal

import uvloop
from websockets.asyncio.server import broadcast, serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from _common import ECHO_URL, bcast_payloads, parse_args, ready, reply_text

CONNECTIONS: set = set()


async def echo(websocket, body) -> None:
    await websocket.send(reply_text(body))


ROUTES = {ECHO_URL: echo}


async def handler(websocket) -> None:
    CONNECTIONS.add(websocket)
    try:
        async for message in websocket:
            if isinstance(message, str) and message.startswith("BCAST"):
                for payload in bcast_payloads(message):
                    broadcast(CONNECTIONS, payload)
                continue
            envelope = json.loads(message)
            route = ROUTES.get(envelope.get("url"))
            if route is not None:
                await route(websocket, envelope.get("body"))
    finally:
        CONNECTIONS.discard(websocket)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    static: dict[str, Response] = {}
    if args.static_dir:
        for name in os.listdir(args.static_dir):
            path = os.path.join(args.static_dir, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    body = f.read()
                ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
                static["/static/" + name] = (body, ctype)

    def process_request(connection, request):
        if request.path.startswith("/static/"):
            found = static.get(request.path)
            if found is None:
                return connection.respond(404, "not found\n")
            body, ctype = found
            return Response(
                200,
                "OK",
                Headers([("Content-Type", ctype), ("Content-Length", str(len(body)))]),
                body,
            )
        return None

    async def main_async() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with serve(
            handler, args.host, args.port, process_request=process_request, backlog=4096
        ) as server:
            ready(list(server.sockets)[0].getsockname()[1])
            await stop.wait()

    uvloop.run(main_async())


if __name__ == "__main__":
    main()
