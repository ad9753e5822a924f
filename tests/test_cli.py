"""The ``simplew serve`` command, run as real processes.

Serving (options, APP, environment variables), the errors that end it with
status 2, SIGTERM (clients get close 1001, exit 0 within the grace period) and
``--workers 2``. Workers with Redis are tested in test_workers.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from helpers import ROOT, free_port

TIMEOUT = 5.0
PAGE = (ROOT / "www" / "push" / "index.html").read_bytes()
SIMPLEW = [sys.executable, "-m", "simplew"]


def clean_env(**extra: str) -> dict[str, str]:
    """No SIMPLEW_* variable, and this checkout's simplew even where cwd is elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPLEW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Served:
    """A ``simplew serve`` process; stopped (SIGKILL if need be) at the end of the test."""

    def __init__(
        self,
        args: list[str],
        port: int,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            (command or SIMPLEW) + args,
            cwd=cwd,
            env=env if env is not None else clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"simplew exited with {self.proc.returncode}:\n{self.proc.stdout.read()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError("simplew did not start listening") from None
                time.sleep(0.03)

    def get(self, path: str = "/") -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}{path}", timeout=TIMEOUT
            ) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def ws(self, path: str):
        return connect(
            f"ws://127.0.0.1:{self.port}{path}",
            open_timeout=TIMEOUT,
            close_timeout=TIMEOUT,
            proxy=None,
        )

    def terminate(self, timeout: float = 15) -> tuple[int, str, float]:
        """SIGTERM; (exit status, output, seconds until it exited)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


@pytest.fixture
def serve():
    started: list[Served] = []

    def start(*args: str, port: int | None = None, **kwargs) -> Served:
        port = port or free_port()
        args_list = list(args)
        if "--port" not in args_list and "env" not in kwargs:
            args_list += ["--host", "127.0.0.1", "--port", str(port)]
        served = Served(args_list, port, **kwargs)
        started.append(served)
        return served

    yield start
    for served in started:
        served.kill()


def ask(ws, message: dict) -> dict:
    ws.send(json.dumps(message))
    return json.loads(ws.recv(timeout=TIMEOUT))


def run_error(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> tuple[int, str]:
    proc = subprocess.run(
        SIMPLEW + list(args),
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode, proc.stderr


# -- serving ---------------------------------------------------------------------


def test_serve_static_and_websocket_options(serve):
    served = serve("serve", "--static", "www/push", "--ws", "/websocket")
    assert served.get("/") == (200, PAGE)
    assert served.get("/websocket")[0] == 426
    with served.ws("/websocket") as ws:
        reply = ask(ws, {"url": "/websocket/nothing/here"})
        assert reply["error"] == "unknown_url"
    assert served.get("/metrics")[0] == 404  # only with --metrics
    status, out, _ = served.terminate()
    assert status == 0, out
    assert f"listening on http://127.0.0.1:{served.port}/" in out


def test_publish_option_multicasts_without_a_python_file(serve):
    """``--publish /publish``: a backend POSTs, every client (or a room) receives."""
    served = serve("serve", "--static", "www/push", "--ws", "/websocket", "--publish", "/publish")
    url = f"http://127.0.0.1:{served.port}/publish"
    with served.ws("/websocket") as a, served.ws("/websocket") as b:
        request = urllib.request.Request(url, data=b"hello from a backend", method="POST")
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            assert response.status == 200
            assert json.loads(response.read()) == {"published": 20, "room": None}
        for ws in (a, b):
            assert ws.recv(timeout=TIMEOUT) == "hello from a backend"
        binary = urllib.request.Request(
            url,
            data=b"\x00\x01",
            method="POST",
            headers={"Content-Type": "application/octet-stream"},
        )
        urllib.request.urlopen(binary, timeout=TIMEOUT).close()
        for ws in (a, b):
            assert ws.recv(timeout=TIMEOUT) == b"\x00\x01"
        bad = urllib.request.Request(url, data=b"\xff\xfe", method="POST")
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(bad, timeout=TIMEOUT)
        assert error.value.code == 400
    status, out, _ = served.terminate()
    assert status == 0
    assert "--publish-token" not in out  # no warning on a loopback address


def post(
    port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method="POST", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def assert_refused(port: int, headers: dict[str, str], challenge: str) -> None:
    status, response_headers, body = post(port, "/publish", b"forged", headers)
    assert status == 401, body
    assert response_headers["WWW-Authenticate"] == challenge
    assert json.loads(body)["error"] == "unauthorized"


def test_publish_token_is_required(serve):
    served = serve(
        "serve", "--ws", "/websocket", "--publish", "/publish", "--publish-token", "s3cret"
    )
    with served.ws("/websocket") as ws:
        assert_refused(served.port, {}, 'Bearer realm="simplew"')
        for wrong in (
            "Bearer wrong",
            "Bearer s3cret-and-more",
            "Bearer s3cre",
            "Bearer ",
            "Basic czNjcmV0",
            "s3cret",
        ):
            assert_refused(
                served.port,
                {"Authorization": wrong},
                'Bearer realm="simplew", error="invalid_token"',
            )
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.2)  # nothing refused was published
        status, _, body = post(
            served.port, "/publish", b"signed", {"Authorization": "bearer s3cret"}
        )
        assert status == 200, body
        assert ws.recv(timeout=TIMEOUT) == "signed"
    status, out, _ = served.terminate()
    assert status == 0 and "--publish-token" not in out


def test_publish_token_and_metrics_from_the_environment_and_the_open_publish_warning(serve):
    port = free_port()
    env = clean_env(
        SIMPLEW_HOST="0.0.0.0",
        SIMPLEW_PORT=str(port),
        SIMPLEW_WS="/ws",
        SIMPLEW_PUBLISH="/publish",
        SIMPLEW_PUBLISH_TOKEN="from-env",
        SIMPLEW_METRICS="1",
    )
    served = serve("serve", port=port, env=env)
    assert_refused(port, {}, 'Bearer realm="simplew"')
    assert post(port, "/publish", b"x", {"Authorization": "Bearer from-env"})[0] == 200
    status, metrics = served.get("/metrics")
    assert status == 200 and b"simplew_http_requests_total" in metrics
    status, out, _ = served.terminate()
    assert status == 0 and "WARNING" not in out, out

    # no token on an address other machines reach: served, with a WARNING at start
    served = serve(
        "serve",
        "--ws",
        "/ws",
        "--publish",
        "/publish",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--metrics",
        port=port,
    )
    assert post(port, "/publish", b"open", {})[0] == 200
    assert served.get("/metrics")[0] == 200
    status, out, _ = served.terminate()
    assert status == 0
    assert "WARNING simplew: --publish /publish on 0.0.0.0 without --publish-token" in out, out


def test_serve_app_with_console_script(serve):
    script = shutil.which("simplew", path=str(Path(sys.executable).parent))
    command = [script] if script else SIMPLEW
    served = serve("serve", "tests.apps.cli_app:server", command=command)
    assert served.get("/") == (200, PAGE)
    with served.ws("/app") as ws:
        assert ask(ws, {"url": "/app/cli/pid", "body": "hi"}) == {
            "pid": served.proc.pid,
            "body": "hi",
        }
    assert served.terminate()[0] == 0


def test_serve_app_factory_with_extra_static(serve, tmp_path):
    (tmp_path / "extra.txt").write_text("extra file")
    served = serve("serve", "tests.apps.cli_app:make_server", "--static", f"{tmp_path}:/more")
    assert served.get("/more/extra.txt") == (200, b"extra file")
    assert served.get("/") == (200, PAGE)
    with served.ws("/app") as ws:
        assert ask(ws, {"url": "/app/cli/pid"})["pid"] == served.proc.pid
    assert served.terminate()[0] == 0


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--static", "/"], {}, "--static: refusing to serve / as a static root"),
        (["--static", "/etc:/conf"], {}, "--static: refusing to serve /etc as a static root"),
        (["--static", "/proc", "--allow-system-root"], {}, "/proc and /sys never are"),
        (
            ["--static", "/sys"],
            {"SIMPLEW_ALLOW_SYSTEM_ROOT": "1"},
            "/proc and /sys never are",
        ),
        (
            ["--static", "/"],
            {"SIMPLEW_ALLOW_SYSTEM_ROOT": "maybe"},
            "SIMPLEW_ALLOW_SYSTEM_ROOT must be 1, true, yes, on or 0, false, no, off (any case), got 'maybe'",
        ),
    ],
)
def test_static_system_root_is_a_usage_error(args, env, message):
    status, err = run_error("serve", *args, env=clean_env(**env))
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simplew: error: "), err
    assert message in lines[0]
    if "never" not in message and "maybe" not in message:
        assert "--allow-system-root" in lines[0]  # how to force it


@pytest.mark.parametrize("how", ["option", "environment"])
def test_static_system_root_forced_still_hides_proc(serve, tmp_path, how):
    (tmp_path / "page.txt").write_text("on disk")
    port = free_port()
    address = ["--host", "127.0.0.1", "--port", str(port)]
    if how == "option":
        args = ["--allow-system-root"]
        env = clean_env(SIMPLEW_KEYFILE_PASSWORD="hunter2-cli-secret")
    else:
        args = []
        env = clean_env(
            SIMPLEW_ALLOW_SYSTEM_ROOT="1", SIMPLEW_KEYFILE_PASSWORD="hunter2-cli-secret"
        )
    served = serve("serve", "--static", "/", *args, *address, port=port, env=env)
    assert served.get(str(tmp_path / "page.txt")) == (200, b"on disk")
    for path in ("/proc/self/environ", f"/proc/{served.proc.pid}/environ", "/sys/kernel/"):
        status, body = served.get(path)
        assert status == 404, path
        assert b"hunter2" not in body


def test_environment_variables(serve):
    port = free_port()
    env = clean_env(
        SIMPLEW_HOST="127.0.0.1",
        SIMPLEW_PORT=str(port),
        SIMPLEW_STATIC="www/push",
        SIMPLEW_WS="/websocket,/other",
        SIMPLEW_LOG_LEVEL="WARNING",
        SIMPLEW_SHUTDOWN_GRACE="1.5",
    )
    served = serve("serve", port=port, env=env)
    assert served.get("/") == (200, PAGE)
    for path in ("/websocket", "/other"):
        with served.ws(path) as ws:
            assert ask(ws, {"url": path + "/x"})["error"] == "unknown_url"
    status, out, _ = served.terminate()
    assert status == 0
    assert "listening" not in out  # SIMPLEW_LOG_LEVEL=warning hides INFO

    # the APP from the environment, and an option wins over its variable
    other = free_port()
    env = clean_env(SIMPLEW_APP="tests.apps.cli_app:server", SIMPLEW_PORT=str(other))
    served = serve("serve", "--host", "127.0.0.1", "--port", str(port), port=port, env=env)
    with served.ws("/app") as ws:
        assert ask(ws, {"url": "/app/cli/pid"})["pid"] == served.proc.pid
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", other), timeout=0.5).close()
    assert served.terminate()[0] == 0


# -- errors: a clear message and status 2 -------------------------------------------


def _garbage_pem(tmp_path: Path) -> str:
    path = tmp_path / "garbage.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    return str(path)


ERRORS = {
    "bad option": (["--bogus"], "unrecognized arguments: --bogus"),
    "bad port": (["--ws", "/ws", "--port", "eighty"], "invalid int value: 'eighty'"),
    "nothing to serve": ([], "give an APP"),
    "no workers": (["--ws", "/ws", "--workers", "0"], "--workers must be at least 1"),
    "bad log level": (["--ws", "/ws", "--log-level", "loud"], "invalid choice: 'loud'"),
    "missing static dir": (["--static", "no/such/dir"], "--static: no such directory: no/such/dir"),
    "duplicate ws": (["--ws", "/a", "--ws", "/a/"], "--ws: a WebSocket endpoint is already at /a"),
    "missing cert file": (
        ["--ws", "/ws", "--certfile", "/no/cert.pem", "--keyfile", "/no/key.pem"],
        "--certfile: no such file: /no/cert.pem",
    ),
    "cert without key": (
        ["--ws", "/ws", "--certfile", "README.md"],
        "--certfile and --keyfile go together",
    ),
    "module not found": (
        ["no_such_module_xyz:server"],
        "cannot import module 'no_such_module_xyz'",
    ),
    "no attribute": (
        ["tests.apps.cli_app:nope"],
        "module 'tests.apps.cli_app' has no attribute 'nope'",
    ),
    "not a server": (["simplew.cli:LOG_LEVELS"], "is a list, not a SimpleWServer"),
    "no attribute part": (["tests.apps.cli_app"], "APP must look like module:attribute"),
    "token without publish": (
        ["--ws", "/ws", "--publish-token", "t"],
        "--publish-token goes with --publish",
    ),
    "empty token": (
        ["--ws", "/ws", "--publish", "/p", "--publish-token", ""],
        "--publish-token must not be empty",
    ),
    "api without a token": (
        ["--ws", "/ws", "--api", "/api"],
        "--api: api_path needs api_token",
    ),
    "api token without api": (["--ws", "/ws", "--api-token", "t"], "--api-token goes with --api"),
    "admin without token": (["--ws", "/ws", "--admin", "/a"], "--admin needs --admin-token"),
    "admin token without admin": (
        ["--ws", "/ws", "--admin-token", "t"],
        "--admin-token goes with --admin",
    ),
}


def assert_usage_error(status: int, err: str, message: str) -> None:
    """Status 2 and one ``simplew: error: ...`` line last (argparse's usage may precede it)."""
    assert status == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("simplew: error: ") and message in lines[-1], err
    assert sum("error:" in line for line in lines) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("case", list(ERRORS))
def test_usage_errors_exit_2(case):
    args, message = ERRORS[case]
    status, err = run_error("serve", *args)
    assert_usage_error(status, err, message)


# every numeric option is checked, applied or not (--recovery-window and --history-size
# without --recovery too), and so is its environment variable
NUMBERS = {
    "port too big": (["--port", "70000"], "port must be an int from 0 to 65535, not 70000"),
    "negative port": (["--port", "-1"], "port must be an int from 0 to 65535, not -1"),
    "negative workers": (["--workers", "-2"], "--workers must be at least 1"),
    "too many workers": (["--workers", "100000"], "--workers must be at most 1024"),
    "no max connections": (["--max-connections", "0"], "max_connections must be"),
    "fractional max connections": (["--max-connections", "1.5"], "invalid int value: '1.5'"),
    "no max per ip": (["--max-connections-per-ip", "-1"], "max_connections_per_ip must be"),
    "nan grace": (["--shutdown-grace", "nan"], "shutdown_grace must be a finite number"),
    "infinite grace": (["--shutdown-grace", "inf"], "shutdown_grace must be a finite number"),
    "negative grace": (["--shutdown-grace", "-5"], "shutdown_grace must be a finite number"),
    "history size without recovery": (
        ["--history-size", "-1"],
        "history_size must be an int >= 0, not -1",
    ),
    "nan window without recovery": (
        ["--recovery-window", "nan"],
        "recovery_window must be a finite number >= 0 of seconds, not nan",
    ),
    "zero registry ttl": (["--registry-ttl", "0"], "registry_ttl must be a finite number > 0"),
    "nan window with recovery": (
        ["--recovery", "--recovery-window", "nan"],
        "recovery_window must be a finite number >= 0 of seconds, not nan",
    ),
}


@pytest.mark.parametrize("case", list(NUMBERS))
def test_numeric_options_out_of_range_exit_2(case):
    args, message = NUMBERS[case]
    status, err = run_error("serve", "--ws", "/ws", *args)
    assert_usage_error(status, err, message)


def test_unloadable_certificate(tmp_path):
    garbage = _garbage_pem(tmp_path)
    status, err = run_error(
        "serve",
        "--ws",
        "/ws",
        "--port",
        str(free_port()),
        "--certfile",
        garbage,
        "--keyfile",
        garbage,
    )
    assert status == 2
    assert "cannot load the certificate/key" in err and "Traceback" not in err


def test_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for extra in ([], ["--workers", "2"]):
            status, err = run_error(
                "serve", "--ws", "/ws", "--host", "127.0.0.1", "--port", str(port), *extra
            )
            assert status == 2, err
            assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err


def test_app_module_that_raises(tmp_path):
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "factory_app.py").write_text(
        "def make():\n    raise ValueError('factory says no')\n"
    )
    status, err = run_error("serve", "broken_app:server", cwd=tmp_path)
    assert status == 2
    assert "cannot import module 'broken_app': RuntimeError: boom at import" in err
    assert "Traceback" in err  # where it failed, for the author of the app
    status, err = run_error("serve", "factory_app:make", cwd=tmp_path)
    assert status == 2
    assert "factory_app:make() failed: ValueError: factory says no" in err


FLAG_VALUES = "must be 1, true, yes, on or 0, false, no, off (any case)"


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("SIMPLEW_PORT", "http", "SIMPLEW_PORT must be an int, got 'http'"),
        ("SIMPLEW_PORT", "", "SIMPLEW_PORT must be an int, got ''"),
        ("SIMPLEW_PORT", "70000", "port must be an int from 0 to 65535, not 70000"),
        ("SIMPLEW_WORKERS", "many", "SIMPLEW_WORKERS must be an int, got 'many'"),
        ("SIMPLEW_WORKERS", "0", "--workers must be at least 1"),
        ("SIMPLEW_MAX_CONNECTIONS", "lots", "SIMPLEW_MAX_CONNECTIONS must be an int, got 'lots'"),
        ("SIMPLEW_MAX_CONNECTIONS", "-1", "max_connections must be"),
        ("SIMPLEW_MAX_CONNECTIONS_PER_IP", "0", "max_connections_per_ip must be"),
        ("SIMPLEW_HISTORY_SIZE", "1e3", "SIMPLEW_HISTORY_SIZE must be an int, got '1e3'"),
        ("SIMPLEW_HISTORY_SIZE", "-1", "history_size must be an int >= 0, not -1"),
        ("SIMPLEW_RECOVERY_WINDOW", "nan", "recovery_window must be a finite number"),
        ("SIMPLEW_RECOVERY_WINDOW", "later", "SIMPLEW_RECOVERY_WINDOW must be a number"),
        ("SIMPLEW_SHUTDOWN_GRACE", "soon", "SIMPLEW_SHUTDOWN_GRACE must be a number, got 'soon'"),
        ("SIMPLEW_SHUTDOWN_GRACE", "inf", "shutdown_grace must be a finite number"),
        ("SIMPLEW_LOG_LEVEL", "loud", "SIMPLEW_LOG_LEVEL must be one of"),
        ("SIMPLEW_METRICS", "maybe", f"SIMPLEW_METRICS {FLAG_VALUES}, got 'maybe'"),
        ("SIMPLEW_RECOVERY", "n", f"SIMPLEW_RECOVERY {FLAG_VALUES}, got 'n'"),
        ("SIMPLEW_RECOVERY", "disabled", f"SIMPLEW_RECOVERY {FLAG_VALUES}, got 'disabled'"),
    ],
)
def test_bad_environment_variables_exit_2(variable, value, message):
    status, err = run_error("serve", "--ws", "/ws", env=clean_env(**{variable: value}))
    assert_usage_error(status, err, message)


@pytest.mark.parametrize(
    "value, on", [("off", False), ("FALSE", False), ("", False), ("On", True), ("YES", True)]
)
def test_boolean_variables_are_read_one_way(serve, value, on):
    """SIMPLEW_RECOVERY (like SIMPLEW_METRICS): 1/true/yes/on, 0/false/no/off in any
    case, empty is off. With recovery on, a publication is kept in the history."""
    port = free_port()
    env = clean_env(
        SIMPLEW_HOST="127.0.0.1",
        SIMPLEW_PORT=str(port),
        SIMPLEW_WS="/ws",
        SIMPLEW_PUBLISH="/publish",
        SIMPLEW_RECOVERY=value,
        SIMPLEW_METRICS="Yes",
    )
    served = serve("serve", port=port, env=env)
    assert post(port, "/publish", b"kept?")[0] == 200
    status, metrics = served.get("/metrics")
    assert status == 200, metrics
    kept = 1 if on else 0
    assert f"\nsimplew_history_publications {kept}\n".encode() in metrics, metrics


# -- SIGTERM ----------------------------------------------------------------------


def test_sigterm_closes_clients_with_1001_and_exits_0(serve):
    served = serve("serve", "--ws", "/websocket", "--shutdown-grace", "3")
    with ExitStack() as stack:
        clients = [stack.enter_context(served.ws("/websocket")) for _ in range(3)]
        status, out, elapsed = served.terminate()
        for ws in clients:
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=TIMEOUT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert status == 0, out
    assert elapsed < 2.5  # clients that answer the CLOSE do not hold it up


def test_sigterm_exits_within_grace_despite_a_silent_client(serve):
    grace = 1.0
    served = serve("serve", "--ws", "/websocket", "--shutdown-grace", str(grace))
    silent = socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    silent.sendall(
        (
            f"GET /websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert silent.recv(4096).startswith(b"HTTP/1.1 101")
    try:
        status, out, elapsed = served.terminate()
        assert status == 0, out
        assert grace * 0.8 < elapsed < grace + 2.0
        close = silent.recv(4096)
        assert close[0] == 0x88 and close[2:4] == b"\x03\xe9", close  # CLOSE 1001 was sent
    finally:
        silent.close()


# -- workers -----------------------------------------------------------------------


def test_two_workers_both_serve(serve):
    served = serve("serve", "tests.apps.cli_app:server", "--workers", "2")
    pids: set[int] = set()
    with ExitStack() as stack:
        clients = []
        for _ in range(64):
            ws = stack.enter_context(served.ws("/app"))
            clients.append(ws)
            pids.add(ask(ws, {"url": "/app/cli/pid"})["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2, "every connection reached the same worker"
        assert served.proc.pid not in pids  # the parent only supervises
        assert served.get("/") == (200, PAGE)
        status, out, _ = served.terminate()
        for ws in clients:
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=TIMEOUT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert status == 0, out
    assert "worker0" in out and "worker1" in out
