"""The app bench/backplane.py serves with ``simplew serve backplane_app:server``
(cwd bench/servers), once per case: 1 worker, 1 worker + Redis, 2 workers + Redis.

``/ws``: clients that only receive. ``/ctl``: the control client's
``BCAST <count> <size> <round> <t_ns>`` (see _common.py) makes the worker it
landed on call ``server.multicast_text`` ``count`` times; with ``--redis`` each
multicast also reaches the other worker's clients through the backplane.
"""

from __future__ import annotations

from _common import bcast_payloads
from simplew import Session, SimpleWServer

server = SimpleWServer("127.0.0.1", 8765)


def on_control(session: Session, data) -> None:
    if isinstance(data, str) and data.startswith("BCAST"):
        for payload in bcast_payloads(data):
            server.multicast_text(payload)


server.add_websocket_content("/ws", on_message=lambda session, data: None)
server.add_websocket_content("/ctl", on_message=on_control)
