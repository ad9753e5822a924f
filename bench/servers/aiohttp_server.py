"""aiohttp peer: ``web.WebSocketResponse`` handlers, a set of sockets in the app, ``send_str`` loop.

    python bench/servers/aiohttp_server.py --port 8765 [--static-dir DIR]

Written as aiohttp's docs show (``app[websockets]`` set, ``await ws.send_str``
for each client, ``web.static`` for files), on uvloop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import weakref

import uvloop
from aiohttp import WSMsgType, web

from _common import ECHO_URL, bcast_payloads, parse_args, ready, reply_text

websockets_key = web.AppKey("websockets", weakref.WeakSet)


async def echo(ws: web.WebSocketResponse, body) -> None:
    await ws.send_str(reply_text(body))


ROUTES = {ECHO_URL: echo}


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    clients = request.app[websockets_key]
    clients.add(ws)
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            data = msg.data
            if data.startswith("BCAST"):
                for payload in bcast_payloads(data):
                    for client in set(clients):
                        await client.send_str(payload)
                continue
            envelope = json.loads(data)
            route = ROUTES.get(envelope.get("url"))
            if route is not None:
                await route(ws, envelope.get("body"))
    finally:
        clients.discard(ws)
    return ws


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    app = web.Application()
    app[websockets_key] = weakref.WeakSet()
    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/ctl", websocket_handler)
    if args.static_dir:
        app.router.add_static("/static", args.static_dir)

    async def main_async() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port, backlog=4096)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ready(runner.addresses[0][1])
        await stop.wait()
        await runner.cleanup()

    uvloop.run(main_async())


if __name__ == "__main__":
    main()
