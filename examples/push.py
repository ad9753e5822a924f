"""Push to all clients: the first example of the WebSockets guide.

Serves ``www/push`` (a page that connects to ``/websocket`` and logs what
happens) and a WebSocket endpoint. Press ``s`` in this console, or write a
line ``s`` to its stdin, and every connected client receives "hello";
``--interval SECONDS`` also sends it on a timer.

    python examples/push.py [--host 0.0.0.0] [--port 2015] [--interval 2]
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from _serve import options, serve
from simplew import SimpleWServer

WWW = Path(__file__).resolve().parent.parent / "www" / "push"


def watch_keys(server: SimpleWServer, fd: int, one_key_per_press: bool) -> None:
    """Multicast "hello" for each ``s`` key (terminal) or ``s`` line (pipe), until EOF."""
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 1024)  # os.read, not sys.stdin: no lock held at exit
        except OSError:
            return
        if not chunk:
            return  # EOF: stop reading keys, keep serving
        if one_key_per_press:
            presses = chunk.count(b"s")
        else:
            *lines, pending = (pending + chunk).split(b"\n")
            presses = sum(1 for line in lines if line.strip() == b"s")
        for _ in range(presses):
            server.multicast_text("hello")
            print("sent hello to every client", flush=True)


def tick(server: SimpleWServer, interval: float, done: threading.Event) -> None:
    while not done.wait(interval):
        server.multicast_text("hello")


def main() -> None:
    parser = options(__doc__)
    parser.add_argument(
        "--interval", type=float, metavar="SECONDS", help='also multicast "hello" every SECONDS'
    )
    args = parser.parse_args()

    server = SimpleWServer(args.host, args.port)
    server.add_static_content(str(WWW), "/", timeout=86400)
    server.add_websocket_content("/websocket")
    done = threading.Event()
    if args.interval:
        threading.Thread(target=tick, args=(server, args.interval, done), daemon=True).start()

    fd, saved_mode = None, None
    if sys.stdin is not None:
        fd = sys.stdin.fileno()
        is_tty = os.isatty(fd)
        if is_tty:
            try:  # one key at a time, no Enter needed
                import termios
                import tty

                saved_mode = termios.tcgetattr(fd)
                tty.setcbreak(fd)
            except (ImportError, OSError):
                saved_mode = None
        threading.Thread(target=watch_keys, args=(server, fd, is_tty), daemon=True).start()
    try:
        serve(server, note=" (press s to send hello to all clients)", done=done)
    finally:
        if saved_mode is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved_mode)


if __name__ == "__main__":
    main()
