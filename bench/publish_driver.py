"""Publications into Redis from one in-process server, for comparing commits.

    python bench/publish_driver.py all|hot [--socket /tmp/rb/r.sock]

A server with recovery on and ``redis_url`` a Redis Unix socket (start one:
``redis-server --port 0 --unixsocket SOCK --save "" --daemonize yes``); 100,000 multicasts
to everyone (``all``) or to room ``hot`` in bursts of 1,000, no client, three rounds; prints
publications/s and Redis CPU per publication (``INFO cpu``). It runs against simplew.v1
(8c990a9) as well as simplew.v2: run it from a checkout of each with ``PYTHONPATH`` set to
that checkout (bench/RESULTS.md, issue 17, section 2).
"""

import asyncio
import sys
import time

import redis

from simplew import SimpleWServer

ROOM = None if sys.argv[1] == "all" else "hot"
SOCKET = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--socket" else "/tmp/rb/r.sock"


async def main() -> None:
    s = SimpleWServer("127.0.0.1", 0, recovery=True, redis_url=f"unix://{SOCKET}", access_log=False)
    s.add_websocket_content("/ws")
    await s.listen()
    st = s.recovery.store
    while not (st.ready and st.connected):
        await asyncio.sleep(0.01)
    pending = (
        (lambda: sum(len(sh.pending) for sh in st.shards))
        if hasattr(st, "shards")
        else (lambda: len(st._pending))
    )
    r = redis.Redis(unix_socket_path=SOCKET)

    def cpu():
        i = r.info("cpu")
        return i["used_cpu_user"] + i["used_cpu_sys"]

    for _round in range(3):
        c0 = cpu()
        t0 = time.perf_counter()
        n = 0
        while n < 100000:
            for _ in range(1000):
                s.multicast_text("x" * 64, room=ROOM)
                n += 1
            await asyncio.sleep(0)
            while pending() > 20000:
                await asyncio.sleep(0.001)
        while pending():
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.2)
        dt = time.perf_counter() - t0
        c1 = cpu()
        print(f"  {n / dt:.0f}/s redis us/pub {(c1 - c0) / n * 1e6:.2f}")
    await st.close()


asyncio.run(main())
