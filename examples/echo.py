"""A plain echo WebSocket: every message is sent back as it came.

Text comes back as text and binary as binary. Used as the server under test
by WebSocket conformance and load tools.

    python examples/echo.py --port 9001 [--host 0.0.0.0]
"""

from __future__ import annotations

from _serve import options, serve
from simplew import SimpleWServer


def main() -> None:
    parser = options(__doc__)
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=16 * 1024 * 1024,
        help="bytes; 16 MiB by default, the largest message Autobahn sends",
    )
    parser.add_argument(
        "--no-compression",
        dest="compression",
        action="store_false",
        help="refuse permessage-deflate (negotiated by default here)",
    )
    args = parser.parse_args()

    # no keep-alive pings: conformance tools record an unsolicited PING as an unexpected event
    server = SimpleWServer(
        args.host,
        args.port,
        max_message_size=args.max_message_size,
        max_write_buffer=64 << 20,
        compression=args.compression,
        ping_interval=None,
    )
    server.add_websocket_content("/", on_message=lambda session, data: session.send(data))
    serve(server, "ws")


if __name__ == "__main__":
    main()
