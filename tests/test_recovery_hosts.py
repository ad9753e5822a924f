"""Recovery across two simulated hosts.

Each host is a network namespace with only its own loopback up (no veth link,
no address: nothing can leave the machine); a third namespace runs Redis,
reached only through its Unix socket (``--redis unix:///.../redis.sock``).
Each host runs ``simplew serve --recovery`` and its own client processes. A
simplew.v2 client collects on host 1, then resumes on host 2 while host 1 keeps
publishing: it gets every offset of the broadcast stream once, in order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from multiproc import ROOT, redis_server_path, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or redis_server_path() is None,
    reason="needs root, iproute2 and redis-server",
)

PORT = 8765  # the same port on both hosts: each namespace has its own


def ns_exec(ns: str, *argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv], cwd=ROOT, start_new_session=True, **kwargs
    )


def ns_run(ns: str, *argv: str, timeout: float = 30) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        cwd=ROOT,
        timeout=timeout,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def hosts(tmp_path):
    names = [f"sw{os.getpid()}-{role}" for role in ("h1", "h2", "redis")]
    procs: list[subprocess.Popen] = []
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    try:
        yield names, procs, tmp_path
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False)


def test_a_client_moves_between_hosts_sharing_redis(hosts):
    (h1, h2, rns), procs, tmp = hosts
    sock = tmp / "redis.sock"
    procs.append(
        ns_exec(
            rns,
            redis_server_path(),
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--loglevel",
            "warning",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    wait_until(sock.exists, 10, "redis socket")
    url = f"unix://{sock}"
    logs = []
    for host in (h1, h2):
        log = open(tmp / f"{host}.log", "w")
        logs.append(log)
        procs.append(
            ns_exec(
                host,
                sys.executable,
                "-m",
                "simplew",
                "serve",
                "tests.apps.feed:server",
                "--recovery",
                "--redis",
                url,
                "--host",
                "127.0.0.1",
                "--port",
                str(PORT),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    for host in (h1, h2):
        wait_until(lambda host=host: _answers(host), 15, f"server on {host}")
    state = tmp / "client.json"
    client = [sys.executable, "tests/v2client.py", f"ws://127.0.0.1:{PORT}/ws", str(state)]
    publisher = ns_exec(
        h1,
        sys.executable,
        "tests/v2client.py",
        "--publish",
        str(PORT),
        "200",
        "3.5",
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(publisher)
    ns_run(h1, *client, "1.0")  # on host 1
    time.sleep(0.5)  # away: host 1 keeps publishing
    ns_run(h2, *client, "1.0")  # back, on host 2
    output, _ = publisher.communicate(timeout=30)
    ns_run(h2, *client, "1.0")  # again on host 2, after the last publication
    result = json.loads(state.read_text())
    welcomes = result["welcomes"]
    assert [w["recovered"] for w in welcomes] == [False, True, True], welcomes
    assert len({w["session"] for w in welcomes}) == 1
    # the broadcast stream (the client is in no room) is continued by each resume
    assert all(w["streams"][0][0] is None and w["streams"][0][3] for w in welcomes[1:])
    import redis

    from simplew.engines import Engine

    r = redis.Redis.from_url(url)
    epoch, top = r.hmget(Engine.key(None, "meta"), "epoch", "top")
    r.close()
    epoch, top = epoch.decode(), int(top)
    assert top >= 500, output
    assert {w["streams"][0][1] for w in welcomes} == {epoch}
    first = welcomes[0]["streams"][0][2] + 1
    assert result["offsets"] == list(range(first, top + 1))
    assert {(room, e) for room, e, _o, _t in result["pubs"]} == {(None, epoch)}
    assert not result["resets"]
    for log in logs:
        log.close()
    for host in (h1, h2):
        text = (tmp / f"{host}.log").read_text()
        assert "Traceback" not in text, text


def _answers(ns: str) -> bool:
    result = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-c",
            f"import socket; socket.create_connection(('127.0.0.1', {PORT}), 1)",
        ],
        capture_output=True,
    )
    return result.returncode == 0
