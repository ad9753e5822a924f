"""A reconnect storm: every simplew.v1 client of a server comes back at once.

    python bench/storm.py --clients 2000 --processes 4 --rate 20

Starts ``redis-server`` and ``simplew serve tests.apps.feed:server --recovery
--redis ...``, connects ``--clients`` simplew.v1 clients spread over
``--processes`` client processes, publishes ``--rate`` multicasts a second,
then restarts the server (SIGTERM: close 1001 to all, a new process on the
same port). Each client reconnects with full-jitter backoff (0.5 s doubling
to 20 s) and resumes. Reports the time until every client recovered, the new
server's CPU time meanwhile, and checks that each client got every offset
after its first welcome exactly once, in order. Exit status 1 if not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


# -- one client process ---------------------------------------------------------------


async def client(url: str, state: dict, stop: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    attempt = 0
    while not stop.is_set():
        query = ""
        if state["session"]:
            query = f"?session={state['session']}&epoch={state['epoch']}&offset={state['offset']}"
        try:
            async with connect(
                url + query,
                subprotocols=["simplew.v1"],
                compression=None,
                open_timeout=10,
                close_timeout=1,
                max_queue=None,
            ) as ws:
                async for raw in ws:
                    message = json.loads(raw)
                    if message["type"] == "welcome":
                        state["welcomes"].append([message["recovered"], time.time()])
                        state["session"], state["epoch"] = message["session"], message["epoch"]
                        state["offset"] = message["offset"]
                        if state["first"] is None:
                            state["first"] = message["offset"]
                        attempt = 0
                    elif message["type"] == "pub":
                        if message["offset"] <= state["offset"]:
                            state["dups"] += 1
                            continue
                        if message["offset"] != state["offset"] + 1:
                            state["jumps"] += 1  # fine for rooms; here everything is for all
                        state["offset"] = message["offset"]
                        state["count"] += 1
        except Exception:
            pass
        if stop.is_set():
            break
        delay = random.uniform(0, min(20.0, 0.5 * 2**attempt))
        attempt += 1
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except asyncio.TimeoutError:
            pass


async def client_process(url: str, count: int, status_path: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    states = [
        {
            "session": None,
            "epoch": None,
            "offset": 0,
            "first": None,
            "welcomes": [],
            "count": 0,
            "dups": 0,
            "jumps": 0,
        }
        for _ in range(count)
    ]
    tasks = []
    for state in states:
        tasks.append(asyncio.ensure_future(client(url, state, stop)))
        await asyncio.sleep(0.002)  # no SYN flood at the start
    while not stop.is_set():
        summary = {
            "connected": sum(1 for s in states if s["welcomes"]),
            "welcomes": sum(len(s["welcomes"]) for s in states),
            "recovered": sum(1 for s in states if len(s["welcomes"]) > 1 and s["welcomes"][-1][0]),
            "offsets": [s["offset"] for s in states],
        }
        Path(status_path + ".tmp").write_text(json.dumps(summary))
        os.replace(status_path + ".tmp", status_path)
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except asyncio.TimeoutError:
            pass
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    Path(status_path + ".final").write_text(json.dumps(states))


# -- the coordinator -----------------------------------------------------------------


def read_status(paths: list[str]) -> list[dict]:
    out = []
    for path in paths:
        try:
            out.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError):
            out.append({"connected": 0, "welcomes": 0, "recovered": 0, "offsets": []})
    return out


def run(args: argparse.Namespace) -> dict:
    import tempfile

    from loadgen import cpu_ns
    from multiproc import RedisServer, ServerProcess, wait_until
    from v2client import HttpPublisher

    tmp = tempfile.mkdtemp(prefix="simplew-storm-")
    redis = RedisServer().start()
    server = ServerProcess(
        "--recovery", app="tests.apps.feed:server", redis_url=redis.url
    ).wait_ready()
    port = server.port
    per = [
        args.clients // args.processes + (1 if i < args.clients % args.processes else 0)
        for i in range(args.processes)
    ]
    status = [os.path.join(tmp, f"client{i}.json") for i in range(args.processes)]
    workers = [
        subprocess.Popen([sys.executable, __file__, "--worker", server.url, str(n), path])
        for n, path in zip(per, status)
    ]
    publisher = None
    result: dict = {"clients": args.clients, "processes": args.processes, "rate": args.rate}
    try:
        started = time.monotonic()
        wait_until(
            lambda: sum(s["connected"] for s in read_status(status)) == args.clients,
            120,
            "every client connected",
            interval=0.1,
        )
        result["connect_s"] = round(time.monotonic() - started, 2)
        publisher = HttpPublisher([port], args.rate)
        publisher.start()
        time.sleep(2.0)
        server.stop()  # SIGTERM: 1001 to every client
        killed = time.monotonic()
        server = ServerProcess(
            "--recovery", app="tests.apps.feed:server", redis_url=redis.url, port=port
        )
        wait_until(
            lambda: sum(s["recovered"] for s in read_status(status)) == args.clients,
            60,
            "every client recovered",
            interval=0.1,
        )
        result["storm_s"] = round(time.monotonic() - killed, 2)
        # the new process's CPU from its start (imports included) to the last recovery
        result["server_cpu_s"] = round(cpu_ns(server.proc.pid) / 1e9, 2)
        time.sleep(1.0)
        publisher.stop()
        publisher = None
        import redis as redis_client

        r = redis_client.Redis.from_url(redis.url)
        top = int(r.hget("simplew:meta", "top"))
        r.close()
        wait_until(
            lambda: all(o == top for s in read_status(status) for o in s["offsets"]),
            30,
            "every client at the last offset",
            interval=0.1,
        )
        result["publications"] = top
    finally:
        if publisher is not None:
            publisher.stop()
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=30)
        server.cleanup()
        redis.stop()
    states = [s for path in status for s in json.loads(Path(path + ".final").read_text())]
    bad = [s for s in states if s["count"] != top - s["first"] or s["dups"] or s["jumps"]]
    result["clients_with_losses"] = len(bad)
    result["reconnects"] = sum(len(s["welcomes"]) - 1 for s in states)
    result["not_recovered_welcomes"] = sum(1 for s in states for w in s["welcomes"][1:] if not w[0])
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        import uvloop

        uvloop.run(client_process(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rate", type=float, default=20.0, help="publications per second")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result))
    ok = result["clients_with_losses"] == 0 and result["not_recovered_welcomes"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
