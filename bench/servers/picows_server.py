"""Raw picows peer (the floor): a set of transports and a loop of ``transport.send``.

    python bench/servers/picows_server.py --port 8765 [--static-dir DIR]

Any path upgrades. ``BCAST ...`` sends each payload to every transport; an
envelope ``{"url": "/ws/test/echo", "body": ...}`` is parsed with ``json.loads``,
dispatched on its url through a dict and answered. Static files under /static/
are answered through picows's non-101 response (``Connection: close`` each time:
picows has no HTTP keep-alive).
"""

from __future__ import annotations

import json
import mimetypes
import os

import uvloop
from picows import (
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from _common import ECHO_URL, bcast_payloads, parse_args, reply_text, serve_until_signal

CLIENTS: set[WSTransport] = set()


def echo(transport: WSTransport, body) -> None:
    transport.send(WSMsgType.TEXT, reply_text(body).encode())


ROUTES = {ECHO_URL: echo}


class Listener(WSListener):
    def on_ws_connected(self, transport: WSTransport) -> None:
        CLIENTS.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        CLIENTS.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.TEXT:
            text = frame.get_payload_as_utf8_text()
            if text.startswith("BCAST"):
                for payload in bcast_payloads(text):
                    data = payload.encode()
                    for client in CLIENTS:
                        client.send(WSMsgType.TEXT, data)
                return
            envelope = json.loads(text)
            handler = ROUTES.get(envelope.get("url"))
            if handler is not None:
                handler(transport, envelope.get("body"))
        elif msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    static: dict[str, tuple[bytes, str]] = {}
    if args.static_dir:
        for name in os.listdir(args.static_dir):
            path = os.path.join(args.static_dir, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
                    static["/static/" + name] = (f.read(), ctype)

    def factory(request: WSUpgradeRequest):
        path = request.path.decode()
        if path.startswith("/static/"):
            found = static.get(path)
            if found is None:
                return WSUpgradeResponseWithListener(
                    WSUpgradeResponse.create_error_response(404, b"not found\n"), None
                )
            body, ctype = found
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_ok_response(body, {"Content-Type": ctype}), None
            )
        return Listener()

    async def serve() -> None:
        await serve_until_signal(
            await ws_create_server(factory, args.host, args.port, backlog=4096)
        )

    uvloop.run(serve())


if __name__ == "__main__":
    main()
