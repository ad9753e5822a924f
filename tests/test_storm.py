"""A reconnect storm: 2,000 simplew.v2 clients (each in 10 rooms) in 4 processes,
the server restarted under them (with Redis); all recover within 30 s, nothing lost.

Runs ``bench/storm.py`` (which reports the time and the server's CPU).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from multiproc import ROOT, redis_server_path

CLIENTS = 2000


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20_000), hard))


@pytest.mark.skipif(redis_server_path() is None, reason="redis-server is not installed")
@pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_NOFILE)[1] < CLIENTS + 1000,
    reason="the hard limit of open files is too low for 2,000 connections",
)
@pytest.mark.timeout(240)
def test_two_thousand_clients_recover_after_a_restart():
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "storm.py"),
            "--clients",
            str(CLIENTS),
            "--processes",
            "4",
            "--rate",
            "20",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        preexec_fn=_raise_fd_limit,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(report)
    assert report["lost"] == 0 and report["dups"] == 0, report
    assert report["sessions_recovered"] == CLIENTS, report
    assert report["streams_recovered"] == report["streams_held"], report
    assert report["not_recovered_welcomes"] == 0
    assert report["reconnects"] >= CLIENTS
    assert report["storm_s"] < 30, report
