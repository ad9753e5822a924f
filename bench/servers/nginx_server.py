"""nginx peer for the static-file case: Debian's nginx with a generated config.

    python bench/servers/nginx_server.py --port 8765 --static-dir DIR

The config is ``bench/servers/nginx-static.conf``: one process (``master_process off``:
the worker itself, so the harness pins and measures the process it is given), ``sendfile on``,
``tcp_nopush on``, no access log, keep-alive
without a request limit; ``DIR`` is served under ``/static/``. The config, pid
and error log live in a temporary directory removed on exit. The READY line
carries nginx's pid.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import parse_args

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = (Path(__file__).parent / "nginx-static.conf").read_text()


def wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not listen in time")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    static = Path(args.static_dir or tempfile.mkdtemp(prefix="nginx-empty-")).resolve()
    tmp = tempfile.mkdtemp(prefix="simplew-bench-nginx-")
    conf = Path(tmp) / "nginx.conf"
    config = CONFIG
    for name, value in (("tmp", tmp), ("host", args.host), ("port", args.port), ("static", static)):
        config = config.replace("{" + name + "}", str(value))
    conf.write_text(config)
    proc = subprocess.Popen(
        [NGINX, "-p", tmp, "-c", str(conf), "-e", f"{tmp}/error.log"], stdin=subprocess.DEVNULL
    )

    def forward(signum, frame) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # main() reaps it and cleans up

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        wait_for_port(args.host, args.port, proc)
        sys.stdout.write(f"READY {args.port} {proc.pid}\n")  # the harness measures nginx itself
        sys.stdout.flush()
        proc.wait()
    except RuntimeError as exc:
        err = Path(tmp) / "error.log"
        sys.stderr.write(f"{exc}\n{err.read_text() if err.exists() else ''}")
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sys.exit(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
