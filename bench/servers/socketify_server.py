"""socketify peer (uWebSockets): every client subscribes to one topic, ``app.publish`` broadcasts.

    python bench/servers/socketify_server.py --port 8765 [--static-dir DIR]

As socketify's docs show: ``app.ws("/*", {...})`` with open/message handlers,
``ws.subscribe`` in open, ``app.publish(topic, message, OpCode.TEXT)``,
``app.static`` for files. Compression off; ``idle_timeout`` raised to uWS's
maximum (960 s) because the fan-out clients never send, and uWS closes a
connection that has received nothing for ``idle_timeout`` (default 120 s).
"""

from __future__ import annotations

import json
import os
import signal

from socketify import App, AppListenOptions, CompressOptions, OpCode

from _common import ECHO_URL, bcast_payloads, parse_args, ready, reply_text

TOPIC = "all"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    app = App()

    def echo(ws, body) -> None:
        ws.send(reply_text(body), OpCode.TEXT)

    routes = {ECHO_URL: echo}

    def ws_open(ws) -> None:
        ws.subscribe(TOPIC)

    def ws_message(ws, message, opcode) -> None:
        if opcode != OpCode.TEXT:
            return
        if isinstance(message, bytes):
            message = message.decode()
        if message.startswith("BCAST"):
            for payload in bcast_payloads(message):
                app.publish(TOPIC, payload, OpCode.TEXT)
            return
        envelope = json.loads(message)
        route = routes.get(envelope.get("url"))
        if route is not None:
            route(ws, envelope.get("body"))

    app.ws(
        "/*",
        {
            "compression": CompressOptions.DISABLED,
            "max_payload_length": 1 << 20,
            "idle_timeout": 960,
            "open": ws_open,
            "message": ws_message,
        },
    )
    if args.static_dir:
        app.static("/static", args.static_dir)

    def on_listen(config) -> None:
        ready(config.port)

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    app.listen(AppListenOptions(port=args.port, host=args.host), on_listen)
    app.run()


if __name__ == "__main__":
    main()
