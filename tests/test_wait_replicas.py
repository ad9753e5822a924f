"""``wait_replicas``: an acknowledged publication survives a failover.

A master, two replicas and three Sentinels on loopback ports; a server with
recovery, ``redis+sentinel://`` and ``wait_replicas=1``; a ``simplew.v2``
client in three rooms. Publications go out through ``server.publish`` (which
returns a position only once the replica acknowledged it) while the master is
killed with ``kill -9``; the Sentinels promote a replica, and the other
replicates from it (until then, publications wait: one replica must have each). Every
acknowledged publication reaches the client once and in order, under the
position it was acknowledged with, and no stream is reset: nothing
acknowledged was lost. Without ``wait_replicas`` the same run may lose the
last publications before the kill (and reset their rooms): that is the
guarantee the option buys, at one more round trip per batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import TIMEOUT, wait_until
from multiproc import redis_server_path
from simplew import Controller, SimpleWServer, route
from simplew.stream import Unavailable
from topology import SentinelSetup
from v2client import V2Client

needs_redis = pytest.mark.skipif(
    redis_server_path() is None,
    reason="redis-server is not installed (apt-get install redis-server)",
)

ROOMS = ["a", "b", "c"]


@route("/replicated")
class ReplicatedRooms(Controller):
    @route("WEBSOCKET", "/join")
    def join(self, message: Any) -> Any:
        return {"joined": self.session.join(message.body)}


def test_wait_replicas_is_refused_with_a_cluster() -> None:
    server = SimpleWServer(
        "127.0.0.1",
        0,
        recovery=True,
        redis_url="redis+cluster://127.0.0.1:7000",
        wait_replicas=1,
    )
    server.add_websocket_content("/ws")
    with pytest.raises(ValueError, match="Cluster"):
        server.start()


@needs_redis
def test_no_acknowledged_publication_is_lost_in_a_failover(tmp_path: Path) -> None:
    with SentinelSetup(tmp_path, replicas=2) as redis:
        server = SimpleWServer("127.0.0.1", 0, recovery=True, redis_url=redis.url, wait_replicas=1)
        server.add_websocket_content("/ws")
        server.start()
        try:
            store = server.recovery.store
            wait_until(lambda: store.ready and store.connected, TIMEOUT, "the stream ready")
            client = V2Client()
            client.connect(f"ws://127.0.0.1:{server.port}/ws")
            for room in ROOMS:
                assert client.request("/ws/replicated/join", room) == {"joined": True}
            wait_until(
                lambda: (client.collect(0.05) or True) and all(r in client.streams for r in ROOMS),
                TIMEOUT,
                "the joins",
            )
            acknowledged: list[tuple[str | None, str, int, str]] = []
            stop = threading.Event()

            def publish() -> None:
                i = 0
                loop = server._loop
                assert loop is not None
                while not stop.is_set():
                    room = (ROOMS + [None])[i % 4]
                    text = f"p{i}"
                    future = asyncio.run_coroutine_threadsafe(server.publish(text, room), loop)
                    try:
                        position = future.result(TIMEOUT * 3)
                    except (Unavailable, TimeoutError, asyncio.TimeoutError):
                        time.sleep(0.05)  # not acknowledged: may or may not arrive
                    else:
                        assert position is not None
                        acknowledged.append((room, position.epoch, position.offset, text))
                    i += 1

            publisher = threading.Thread(target=publish, daemon=True)
            publisher.start()
            wait_until(lambda: len(acknowledged) >= 200, TIMEOUT * 3, "200 publications")
            redis.kill_master()
            before = len(acknowledged)
            wait_until(lambda: len(acknowledged) >= before + 200, 60, "publications after")
            stop.set()
            publisher.join(TIMEOUT * 4)
            last = {}
            for room, epoch, offset, _text in acknowledged:
                last[room] = (epoch, offset)
            for room, (_epoch, offset) in last.items():
                client.collect(until_offset=offset, room=room)
            assert client.resets == [], client.resets
            received = {(r, e, o): t for r, e, o, t in client.pubs}
            assert len(received) == len(client.pubs), "a position received twice"
            for room, epoch, offset, text in acknowledged:
                assert received.get((room, epoch, offset)) == text, (room, epoch, offset, text)
            for room in [None, *ROOMS]:
                offsets = [o for _e, o, _t in client.room_pubs(room)]
                assert offsets == sorted(offsets)
                assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), room
            assert store.outages >= 1
            client.close()
        finally:
            server.stop()
