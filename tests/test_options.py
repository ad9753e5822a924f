"""ServerOptions: the one validated set of settings the constructor and the CLI share."""

from __future__ import annotations

import dataclasses
import inspect
import math
import subprocess
import sys

import pytest

from helpers import ROOT
from simplew import SimpleWServer
from simplew.options import ServerOptions

FIELDS = {field.name: field for field in dataclasses.fields(ServerOptions)}


def test_constructor_parameters_are_the_options_fields():
    """Same names, same defaults: the constructor's signature is the
    public API, ServerOptions validates and documents it."""
    params = list(inspect.signature(SimpleWServer.__init__).parameters.values())[1:]
    assert {p.name: p.default for p in params} == {n: f.default for n, f in FIELDS.items()}


def test_every_option_is_documented_in_its_class_and_in_docs():
    source = inspect.getsource(ServerOptions)
    reference = (ROOT / "docs" / "configuration.md").read_text()
    for name in FIELDS:
        head, _, rest = source.partition(f"\n    {name}: ")
        assert rest, name
        after_field = rest.split("\n", 1)[1].lstrip()
        assert after_field.startswith('"""'), f"{name} has no docstring"
        assert f"`{name}`" in reference, f"docs/configuration.md does not list {name}"


def test_server_attributes_read_and_write_the_options():
    server = SimpleWServer("127.0.0.1", 0, recovery=True, shutdown_grace=1.5)
    assert server.options.host == "127.0.0.1" and server.host == "127.0.0.1"
    assert server.recovery_enabled is True and server.shutdown_grace == 1.5
    server.history_size = 7
    assert server.options.history_size == 7
    server.access_log = False
    assert server.options.access_log is False and server.context.access_log is None


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"port": 70000}, "port must be an int from 0 to 65535"),
        ({"port": -1}, "port must be an int from 0 to 65535"),
        ({"port": "80"}, "port must be an int"),
        ({"shutdown_grace": math.nan}, "shutdown_grace must be a finite number"),
        ({"shutdown_grace": math.inf}, "shutdown_grace must be a finite number"),
        ({"shutdown_grace": -5}, "shutdown_grace must be a finite number >= 0"),
        ({"recovery_window": math.nan}, "recovery_window must be a finite number"),
        ({"ping_interval": 0}, "ping_interval must be a finite number > 0"),
        ({"idle_timeout": -1}, "idle_timeout must be a finite number >= 0"),
        ({"max_message_size": 0}, "max_message_size must be an int >= 1"),
        ({"history_size": -1}, "history_size must be an int >= 0"),
        ({"slow_client_policy": "drop"}, "slow_client_policy must be one of"),
        ({"compression_level": 10}, "compression_level must be an int from -1 to 9"),
        ({"max_connections": 0}, "max_connections must be an int >= 1"),
        ({"max_sse_rooms": 0}, "max_sse_rooms must be an int >= 1"),
        ({"sse_heartbeat": 0}, "sse_heartbeat must be a finite number > 0"),
        ({"publish_timeout": 0}, "publish_timeout must be a finite number > 0"),
    ],
)
def test_values_that_cannot_work_are_refused(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SimpleWServer(**{"host": "127.0.0.1", "port": 0, **settings})
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ServerOptions().replace(**settings)


def test_none_and_zero_where_they_mean_off():
    options = ServerOptions(
        idle_timeout=None, header_timeout=0, ping_interval=None, max_write_buffer=0, port=0
    )
    assert options.idle_timeout is None and options.max_write_buffer == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "70000"], "port must be an int from 0 to 65535"),
        (["--port", "-1"], "port must be an int from 0 to 65535"),
        (["--shutdown-grace", "nan"], "shutdown_grace must be a finite number"),
        (["--shutdown-grace", "inf"], "shutdown_grace must be a finite number"),
        (["--shutdown-grace", "-5"], "shutdown_grace must be a finite number >= 0"),
        (["--recovery", "--recovery-window", "nan"], "recovery_window must be a finite number"),
        (["--sse", "/events", "--sse-heartbeat", "0"], "sse_heartbeat must be a finite number > 0"),
        (["--recovery", "--publish-timeout", "-1"], "publish_timeout must be a finite number > 0"),
    ],
)
def test_cli_values_out_of_range_are_one_error_line(args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "simplew", "serve", "--ws", "/ws", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("simplew: error: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
