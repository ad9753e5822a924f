"""A reconnect storm: every simplew.v2 client of a server resumes at once.

    python bench/storm.py --clients 2000 --rooms-per-client 10 --processes 4 --rate 50 --mode restart
    python bench/storm.py --clients 2000 --rooms-per-client 10 --processes 4 --rate 50 --mode cut

Starts ``redis-server`` (Unix socket) and one server (``bench/v2app.py``, recovery
on, pinned to CPU 0; the client processes to CPU 1), connects ``--clients``
simplew.v2 clients (websockets, asyncio) over ``--processes`` client processes;
each joins ``--rooms-per-client`` of ``--rooms`` rooms. ``--rate`` publications a
second go round-robin to the broadcast stream and every room. Then either
``restart``: the server is stopped (SIGTERM: 1001 to every client) and a new
process started on the same port (sessions and streams live in Redis); or ``cut``:
every client's TCP connection is aborted at once (the server stays). Each client
reconnects with full-jitter backoff (0.5 s doubling to 20 s) and resumes
(``?resume=1`` and a ``resume`` message with its position in each stream).

Reports: sessions recovered, streams recovered (in the last welcomes), time from the
event until every client resumed, server CPU per resume (``restart``: the new
process's CPU from its start, imports included, and from its port opening; ``cut``:
the server's CPU over the storm), and, once the publisher stopped, each client's
position in each stream against the stream's top in Redis: publications lost (a gap,
or a position left behind), doubled, or of another epoch. Exit status 1 unless every
session and stream recovered and none was lost or doubled. Prints JSON, then a
Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH))


def client_rooms(index: int, per_client: int, rooms: int) -> list[str]:
    step = max(1, rooms // per_client)
    return sorted({f"s{(index + k * step) % rooms}" for k in range(per_client)})


# -- one client process ---------------------------------------------------------------


async def client(url: str, state: dict, stop: asyncio.Event, cut: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    attempt = 0
    while not stop.is_set():
        resume = state["session"] is not None
        try:
            async with connect(
                url + ("?resume=1" if resume else ""),
                subprotocols=["simplew.v2"],
                compression=None,
                open_timeout=10,
                close_timeout=1,
                max_queue=None,
                max_size=None,
            ) as ws:
                if resume:
                    rooms = sorted((r for r in state["held"] if r), key=lambda r: r.encode())
                    streams = [[r, *state["held"][r]] for r in ["", *rooms]]
                    streams[0][0] = None
                    await ws.send(
                        json.dumps(
                            {"type": "resume", "session": state["session"], "streams": streams},
                            separators=(",", ":"),
                        )
                    )
                # one cut per client: a reconnection after it is left alone
                cutter = asyncio.ensure_future(
                    cut.wait() if state["cuts"] == 0 else asyncio.Event().wait()
                )
                reader = asyncio.ensure_future(_read(ws, state, resume))
                done, _ = await asyncio.wait({cutter, reader}, return_when="FIRST_COMPLETED")
                if cutter in done:
                    ws.transport.abort()
                    state["cuts"] += 1
                cutter.cancel()
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                attempt = 0
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


async def _read(ws, state: dict, resume: bool) -> None:
    held = state["held"]
    async for raw in ws:
        message = json.loads(raw)
        kind = message["type"]
        if kind == "pub":
            room = message["room"] or ""
            position = held.get(room)
            if position is None:
                state["strays"] += 1
            elif message["epoch"] != position[0]:
                state["other_epoch"] += 1
            elif message["offset"] <= position[1]:
                state["dups"] += 1
            else:
                if message["offset"] != position[1] + 1:
                    state["gaps"] += message["offset"] - position[1] - 1
                position[1] = message["offset"]
                state["count"] += 1
        elif kind == "welcome":
            entries = message["streams"]
            state["welcomes"].append(
                [message["recovered"], sum(1 for e in entries if e[3]), len(entries), time.time()]
            )
            state["session"] = message["session"]
            for room, epoch, offset, recovered, _missed in entries:
                key = room or ""
                if resume and not recovered and key in held:
                    state["lost_streams"] += 1
                if not (resume and recovered):
                    held[key] = [epoch, offset]
            for room in message.get("left", []):
                held.pop(room, None)
            if not resume:
                await ws.send(json.dumps({"url": "/ws/bench/join", "body": state["rooms"]}))
        elif kind == "join":
            held[message["room"]] = [message["epoch"], message["offset"]]
        elif kind == "reset":
            state["resets"] += 1
            held[message["room"] or ""] = [message["epoch"], message["offset"]]
        elif kind == "leave":
            held.pop(message["room"], None)


async def client_process(url: str, first: int, count: int, status_path: str, args: list) -> None:
    per_client, rooms = int(args[0]), int(args[1])
    stop = asyncio.Event()
    cut = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, cut.set)
    states = [
        {
            "session": None,
            "rooms": client_rooms(first + i, per_client, rooms),
            "held": {},
            "welcomes": [],
            "count": 0,
            "dups": 0,
            "gaps": 0,
            "strays": 0,
            "other_epoch": 0,
            "resets": 0,
            "lost_streams": 0,
            "cuts": 0,
        }
        for i in range(count)
    ]
    tasks = []
    for state in states:
        tasks.append(asyncio.ensure_future(client(url, state, stop, cut)))
        await asyncio.sleep(0.002)  # no SYN flood at the start
    while not stop.is_set():
        summary = {
            "ready": sum(1 for s in states if len(s["held"]) == len(s["rooms"]) + 1),
            "resumed": sum(1 for s in states if len(s["welcomes"]) > 1 and s["welcomes"][-1][0]),
            "welcomes": sum(len(s["welcomes"]) for s in states),
            "held": [s["held"] for s in states],
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
            out.append({"ready": 0, "resumed": 0, "welcomes": 0, "held": []})
    return out


def tops(redis_port: int, rooms: list[str | None]) -> dict[str, list]:
    import redis as redis_py

    from simplew.engines import Engine

    r = redis_py.Redis(host="127.0.0.1", port=redis_port)
    out = {}
    for room in rooms:
        meta = r.hgetall(Engine.key(room, "meta"))
        if meta:
            out[room or ""] = [meta[b"epoch"].decode(), int(meta[b"top"])]
    r.close()
    return out


def run(args: argparse.Namespace) -> dict:
    from loadgen import cpu_ns
    from multiproc import port_open, wait_until
    from v2bench import App, start_redis, stop_redis, taskset
    from v2client import HttpPublisher

    tmp = tempfile.mkdtemp(prefix="simplew-storm-")
    redis = start_redis(Path(tmp), unix=True)
    server = App(redis["url"], cpus=args.server_cpus).wait_ready()
    port = server.port
    per = [
        args.clients // args.processes + (1 if i < args.clients % args.processes else 0)
        for i in range(args.processes)
    ]
    firsts = [sum(per[:i]) for i in range(args.processes)]
    status = [os.path.join(tmp, f"client{i}.json") for i in range(args.processes)]
    url = f"ws://127.0.0.1:{port}/ws"
    workers = [
        subprocess.Popen(
            [
                *taskset(args.client_cpus),
                sys.executable,
                __file__,
                "--worker",
                url,
                str(first),
                str(n),
                path,
                str(args.rooms_per_client),
                str(args.rooms),
            ]
        )
        for first, n, path in zip(firsts, per, status)
    ]
    rooms: list[str | None] = [None, *(f"s{k}" for k in range(args.rooms))]
    publisher = None
    result: dict = {
        "mode": args.mode,
        "clients": args.clients,
        "rooms_per_client": args.rooms_per_client,
        "rooms": args.rooms,
        "processes": args.processes,
        "rate": args.rate,
    }
    try:
        started = time.monotonic()
        wait_until(
            lambda: sum(s["ready"] for s in read_status(status)) == args.clients,
            300,
            "every client connected and in its rooms",
            interval=0.2,
        )
        result["connect_s"] = round(time.monotonic() - started, 2)
        publisher = HttpPublisher([port], args.rate, rooms=rooms)
        publisher.start()
        time.sleep(2.0)
        if args.mode == "restart":
            server.stop()  # SIGTERM: 1001 to every client
            event = time.monotonic()
            server = App(redis["url"], cpus=args.server_cpus, port=port)
            wait_until(lambda: port_open(port), 30, "the new server", interval=0.01)
            cpu_at_open = cpu_ns(server.pid)
        else:
            cpu_at_open = cpu_ns(server.pid)
            for w in workers:
                w.send_signal(signal.SIGUSR1)
            event = time.monotonic()
        wait_until(
            lambda: sum(s["resumed"] for s in read_status(status)) == args.clients,
            300,
            "every client resumed",
            interval=0.05,
        )
        result["storm_s"] = round(time.monotonic() - event, 2)
        cpu = cpu_ns(server.pid)
        if args.mode == "restart":
            result["server_cpu_s_from_start"] = round(cpu / 1e9, 2)
        result["server_cpu_s_storm"] = round((cpu - cpu_at_open) / 1e9, 2)
        result["server_cpu_ms_per_resume"] = round((cpu - cpu_at_open) / 1e6 / args.clients, 3)
        time.sleep(1.0)
        publisher.stop()
        result["publications"] = publisher.sent
        publisher = None
        final = tops(redis["port"], rooms)

        def caught_up() -> bool:
            for s in read_status(status):
                for held in s["held"]:
                    for room, position in held.items():
                        if final.get(room, position) != position:
                            return False
            return True

        try:
            wait_until(caught_up, 60, "every client at every stream's top", interval=0.2)
        except AssertionError:
            pass
        behind = 0
        for s in read_status(status):
            for held in s["held"]:
                for room, position in held.items():
                    top = final.get(room)
                    if top is not None and top[0] == position[0]:
                        behind += max(0, top[1] - position[1])
        result["behind_top"] = behind
    finally:
        if publisher is not None:
            publisher.stop()
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=60)
        server.stop()
        stop_redis(redis)
    states = [s for path in status for s in json.loads(Path(path + ".final").read_text())]
    shutil.rmtree(tmp, ignore_errors=True)
    last = [s["welcomes"][-1] for s in states if len(s["welcomes"]) > 1]
    result["sessions_recovered"] = sum(1 for w in last if w[0])
    result["streams_recovered"] = sum(w[1] for w in last)
    result["streams_held"] = sum(w[2] for w in last)
    result["reconnects"] = sum(len(s["welcomes"]) - 1 for s in states)
    result["not_recovered_welcomes"] = sum(1 for s in states for w in s["welcomes"][1:] if not w[0])
    result["received"] = sum(s["count"] for s in states)
    for key in ("dups", "gaps", "strays", "other_epoch", "resets", "lost_streams"):
        result[key] = sum(s[key] for s in states)
    result["lost"] = result["gaps"] + result["behind_top"]
    return result


def markdown(r: dict) -> str:
    from v2bench import table

    cpu = f"{r['server_cpu_ms_per_resume']:.3f}"
    if "server_cpu_s_from_start" in r:
        cpu += f" ({r['server_cpu_s_from_start']:.2f} s from the process start)"
    return table(
        [
            "mode",
            "clients × rooms",
            "sessions recovered",
            "streams recovered",
            "time to all resumed",
            "server CPU ms/resume",
            "pubs received",
            "lost",
            "doubled",
            "reconnects",
        ],
        [
            [
                r["mode"],
                f"{r['clients']:,} × {r['rooms_per_client']} (of {r['rooms']})",
                f"{r['sessions_recovered']:,} / {r['clients']:,}",
                f"{r['streams_recovered']:,} / {r['streams_held']:,}",
                f"{r['storm_s']} s",
                cpu,
                f"{r['received']:,}",
                r["lost"],
                r["dups"],
                f"{r['reconnects']:,}",
            ]
        ],
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        import uvloop

        url, first, count, path = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        uvloop.run(client_process(url, first, count, path, sys.argv[6:]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rooms-per-client", type=int, default=10)
    parser.add_argument("--rooms", type=int, default=100, help="rooms in all")
    parser.add_argument("--rate", type=float, default=50.0, help="publications per second")
    parser.add_argument("--mode", choices=["restart", "cut"], default="restart")
    parser.add_argument("--server-cpus", default="0", help="taskset of the server")
    parser.add_argument("--client-cpus", default="1", help="taskset of the client processes")
    args = parser.parse_args()
    result = run(args)
    print(markdown(result))
    print()
    print(json.dumps(result))  # last: tests/test_storm.py reads it
    ok = (
        result["sessions_recovered"] == args.clients
        and result["streams_recovered"] == result["streams_held"]
        and result["lost"] == 0
        and result["dups"] == 0
        and result["not_recovered_welcomes"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
