"""simplew peer: a routed Controller for the envelope, ``server.multicast_text`` for the trigger.

    python bench/servers/simplew_server.py --port 8765 [--static-dir DIR]

``/ws`` is a routed endpoint (``{"url": "/ws/test/echo", "body": ...}`` reaches
``BenchController.echo``); ``/ctl`` gives raw messages to a callback that answers
``BCAST <count> <size> ...`` with ``count`` calls of ``server.multicast_text``;
``GET /json`` is a ``map_get`` handler returning a dict (the REST case).
Both endpoints share the server's hub, so a multicast reaches every client.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import uvloop

from _common import JSON_PATH, bcast_payloads, parse_args, ready
from simplew import Controller, SimpleWServer, WebSocketMessage, route


@route("/test")
class BenchController(Controller):
    @route("WEBSOCKET", "/echo")
    def echo(self, message: WebSocketMessage):
        return message.body  # str → TEXT as is; anything else → JSON


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    # SIMPLEW_BENCH_OPTIONS: JSON keyword arguments for SimpleWServer, to compare settings.
    options = json.loads(os.environ.get("SIMPLEW_BENCH_OPTIONS", "{}"))
    server = SimpleWServer(args.host, args.port, **options)
    if args.static_dir:
        server.add_static_content(args.static_dir, "/static", timeout=86400)
    server.add_websocket_content(BenchController, "/ws")
    server.map_get(JSON_PATH, lambda: {"message": "Hello, World!"})  # the REST case

    def on_control(session, data) -> None:
        if isinstance(data, str) and data.startswith("BCAST"):
            for payload in bcast_payloads(data):
                server.multicast_text(payload)

    server.add_websocket_content("/ctl", on_message=on_control)

    async def serve() -> None:
        await server.listen()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop)
        ready(server.port)
        await server.serve()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
