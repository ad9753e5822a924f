"""The ``simplew`` command: ``simplew serve [APP] [options]``.

APP is ``module:attribute`` naming a :class:`SimpleWServer` (or a callable
returning one), like uvicorn's ``module:app``. Without APP, ``--static`` and
``--ws`` describe the whole server. Every option also reads an environment
variable ``SIMPLEW_<OPTION>``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import ipaddress
import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from simplew.engines import parse_redis_urls
from simplew.server import REDIS_EXTRA, SimpleWServer
from simplew.workers import supervise

log = logging.getLogger("simplew")


class UsageError(Exception):
    """A bad option or APP: printed without a traceback, exit status 2."""


class _FromEnv(str):
    """The value of an environment variable, which knows its variable's name."""

    variable: str


def _env(name: str, default: Any = None) -> Any:
    """``SIMPLEW_<NAME>`` as a :class:`_FromEnv` if it is set, else ``default``.

    :func:`parse_args` turns what is left of these into plain ``str``.
    """
    variable = "SIMPLEW_" + name.upper().replace("-", "_")
    value = os.environ.get(variable)
    if value is None:
        return default
    found = _FromEnv(value)
    found.variable = variable
    return found


class _FlagFromEnv(_FromEnv):
    """The value of a boolean's variable: :func:`parse_args` reads it with ``FLAGS``."""


def _env_flag(name: str) -> Any:
    """The default of a ``store_true`` option: ``SIMPLEW_<NAME>``, read once parsed."""
    value = _env(name)
    if value is None:
        return False
    flag = _FlagFromEnv(value)
    flag.variable = value.variable
    return flag


MAX_WORKERS = 1024  # processes of --workers, at most: a typo must not fork-bomb the host

LOG_LEVELS = ["debug", "info", "warning", "error", "critical"]
# the values of a boolean variable (any case); an empty variable is the same as an unset one
FLAGS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
    "": False,
}
FLAG_VALUES = "1, true, yes, on or 0, false, no, off (any case)"


def _number(convert: type[int] | type[float]) -> Any:
    """An argparse ``type`` that also names the variable of a value from the environment.

    Only the syntax is checked here; the range is checked where the value is applied
    (:class:`~simplew.options.ServerOptions` and the like), for options and variables alike.
    """
    what = "an int" if convert is int else "a number"

    def parse(text: str) -> int | float:
        try:
            return convert(text)
        except ValueError:
            if isinstance(text, _FromEnv):  # argparse would name the option
                raise UsageError(f"{text.variable} must be {what}, got {str(text)!r}") from None
            raise

    parse.__name__ = convert.__name__  # argparse: "invalid int value: 'x'"
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse's errors end in the one ``simplew: error: ...`` line our own errors print."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"simplew: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="simplew", description="SimpleW's web server for Python")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a server")
    serve.add_argument(
        "app",
        nargs="?",
        default=_env("app"),
        help="module:attribute of a SimpleWServer (env SIMPLEW_APP)",
    )
    serve.add_argument("--host", default=_env("host"), help="address to bind (env SIMPLEW_HOST)")
    serve.add_argument(
        "--port", type=_number(int), default=_env("port"), help="port (env SIMPLEW_PORT)"
    )
    serve.add_argument(
        "--workers",
        type=_number(int),
        default=_env("workers", "1"),
        help="processes sharing the port with SO_REUSEPORT; one that dies is "
        "restarted (env SIMPLEW_WORKERS)",
    )
    serve.add_argument(
        "--static",
        action="append",
        default=[s for s in (_env("static") or "").split(",") if s],
        metavar="DIR[:PREFIX]",
        help="serve a directory (repeatable; env SIMPLEW_STATIC, comma-separated)",
    )
    serve.add_argument(
        "--allow-system-root",
        action="store_true",
        default=_env_flag("allow_system_root"),
        help="let --static serve a system directory such as / or /etc (never /proc "
        "or /sys; env SIMPLEW_ALLOW_SYSTEM_ROOT=1)",
    )
    serve.add_argument(
        "--ws",
        action="append",
        default=[s for s in (_env("ws") or "").split(",") if s],
        metavar="PATH",
        help="open a WebSocket endpoint (repeatable; env SIMPLEW_WS)",
    )
    serve.add_argument(
        "--sse",
        action="append",
        default=[s for s in (_env("sse") or "").split(",") if s],
        metavar="PATH",
        help="serve Server-Sent Events at PATH: GET PATH?room=a&room=b streams the "
        "publications of everyone and of those rooms (repeatable; env SIMPLEW_SSE)",
    )
    serve.add_argument(
        "--max-sse-rooms",
        type=_number(int),
        default=_env("max_sse_rooms", "16"),
        metavar="N",
        help="rooms one SSE request may follow (env SIMPLEW_MAX_SSE_ROOMS)",
    )
    serve.add_argument(
        "--sse-heartbeat",
        type=_number(float),
        default=_env("sse_heartbeat", "15"),
        metavar="SECONDS",
        help="seconds between the ': ping' comments of an SSE stream (env SIMPLEW_SSE_HEARTBEAT)",
    )
    serve.add_argument(
        "--publish",
        default=_env("publish"),
        metavar="PATH",
        help="POST PATH[?room=R] multicasts the request body: text, or binary when "
        "Content-Type is application/octet-stream (env SIMPLEW_PUBLISH)",
    )
    serve.add_argument(
        "--publish-token",
        default=_env("publish_token"),
        metavar="TOKEN",
        help="the --publish POST must carry 'Authorization: Bearer TOKEN' "
        "(env SIMPLEW_PUBLISH_TOKEN keeps it off the command line)",
    )
    serve.add_argument(
        "--api",
        default=_env("api"),
        metavar="PATH",
        help="serve the server API (POST PATH/publish, /history, /disconnect...; "
        "docs/api.md); needs --api-token (env SIMPLEW_API)",
    )
    serve.add_argument(
        "--api-token",
        default=_env("api_token"),
        metavar="TOKEN",
        help="the bearer token of --api requests (env SIMPLEW_API_TOKEN keeps it off "
        "the command line)",
    )
    serve.add_argument(
        "--metrics",
        action="store_true",
        default=_env_flag("metrics"),
        help="serve Prometheus metrics at GET /metrics (env SIMPLEW_METRICS=1)",
    )
    serve.add_argument(
        "--admin",
        default=_env("admin"),
        metavar="PATH",
        help="serve the live admin page at GET PATH; needs --admin-token (env SIMPLEW_ADMIN)",
    )
    serve.add_argument(
        "--admin-token",
        default=_env("admin_token"),
        metavar="TOKEN",
        help="the bearer token of the admin page's data (env SIMPLEW_ADMIN_TOKEN keeps it "
        "off the command line)",
    )
    serve.add_argument(
        "--registry-ttl",
        type=_number(float),
        default=_env("registry_ttl"),
        metavar="S",
        help="with --redis: seconds a process that stopped writing stays listed in the "
        "deployment's registry (default 10; env SIMPLEW_REGISTRY_TTL)",
    )
    serve.add_argument(
        "--redis",
        action="append",
        default=None,
        metavar="URL",
        help="the Redis deployment every process shares, for cross-process multicast "
        "and recovery: redis://, rediss:// or unix:// (one instance; repeat --redis for "
        "client-side shards), redis+cluster://host:port[,host:port...] (a Redis "
        "Cluster), or redis+sentinel://host:port[,host:port...]/service_name[/db] (the "
        "master a set of Sentinels names) (env SIMPLEW_REDIS, comma-separated)",
    )
    serve.add_argument(
        "--recovery",
        action="store_true",
        default=_env_flag("recovery"),
        help="simplew.v2 clients recover what they missed while away (env SIMPLEW_RECOVERY=1)",
    )
    serve.add_argument(
        "--recovery-window",
        type=_number(float),
        default=_env("recovery_window", "120"),
        metavar="S",
        help="seconds a session can be recovered after its connection "
        "is gone (env SIMPLEW_RECOVERY_WINDOW)",
    )
    serve.add_argument(
        "--history-size",
        type=_number(int),
        default=_env("history_size", "10000"),
        metavar="N",
        help="publications kept for recovery, per stream (env SIMPLEW_HISTORY_SIZE)",
    )
    serve.add_argument(
        "--history-ttl",
        type=_number(float),
        default=_env("history_ttl", "300"),
        metavar="S",
        help="seconds a publication stays recoverable (env SIMPLEW_HISTORY_TTL)",
    )
    serve.add_argument(
        "--publish-timeout",
        type=_number(float),
        default=_env("publish_timeout", "10"),
        metavar="S",
        help="with --recovery and --redis: seconds a publication may wait for Redis to "
        "store it before --publish answers 503 (env SIMPLEW_PUBLISH_TIMEOUT)",
    )
    serve.add_argument(
        "--wait-replicas",
        type=_number(int),
        default=_env("wait_replicas", "0"),
        metavar="N",
        help="with --recovery and --redis: deliver a publication only once N replicas of "
        "its shard have it (Redis WAIT; not with a Cluster) (env SIMPLEW_WAIT_REPLICAS)",
    )
    serve.add_argument(
        "--max-rooms-per-session",
        type=_number(int),
        default=_env("max_rooms_per_session", "128"),
        metavar="N",
        help="rooms a session may be in at once, 0: no limit (env SIMPLEW_MAX_ROOMS_PER_SESSION)",
    )
    serve.add_argument(
        "--certfile", default=_env("certfile"), help="TLS certificate (env SIMPLEW_CERTFILE)"
    )
    serve.add_argument(
        "--keyfile", default=_env("keyfile"), help="TLS private key (env SIMPLEW_KEYFILE)"
    )
    serve.add_argument(
        "--keyfile-password",
        default=_env("keyfile_password"),
        help="password of an encrypted --keyfile (env SIMPLEW_KEYFILE_PASSWORD)",
    )
    serve.add_argument(
        "--log-level",
        type=str.lower,
        default=_env("log_level", "info"),
        choices=LOG_LEVELS,
        help="logging level (env SIMPLEW_LOG_LEVEL)",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=_number(float),
        default=_env("shutdown_grace", "5"),
        help="seconds to let clients close on SIGTERM (env SIMPLEW_SHUTDOWN_GRACE)",
    )
    # connection limits and WebSocket origins (simplew._fast.admission)
    serve.add_argument(
        "--allowed-origin",
        action="append",
        default=[s.strip() for s in (_env("allowed_origin") or "").split(",") if s.strip()],
        metavar="ORIGIN",
        help="an origin allowed to open a WebSocket, like "
        "https://example.com or https://*.example.com (repeatable; default: any; "
        "env SIMPLEW_ALLOWED_ORIGIN, comma-separated)",
    )
    serve.add_argument(
        "--max-connections",
        type=_number(int),
        default=_env("max_connections"),
        metavar="N",
        help="open connections, HTTP and WebSocket, beyond which "
        "new ones get 503 (default: no limit; env SIMPLEW_MAX_CONNECTIONS)",
    )
    serve.add_argument(
        "--max-connections-per-ip",
        type=_number(int),
        default=_env("max_connections_per_ip"),
        metavar="N",
        help="the same limit for each client address "
        "(default: no limit; env SIMPLEW_MAX_CONNECTIONS_PER_IP)",
    )
    # the client's address behind a proxy (simplew._fast.proxy)
    serve.add_argument(
        "--forwarded-allow-ips",
        default=_env("forwarded_allow_ips"),
        metavar="IPS",
        help="trusted proxies, comma-separated addresses, CIDRs or '*': only their "
        "Forwarded/X-Forwarded-For headers and PROXY headers are believed "
        "(default: none; env SIMPLEW_FORWARDED_ALLOW_IPS)",
    )
    serve.add_argument(
        "--proxy-protocol",
        action="store_true",
        default=_env_flag("proxy_protocol"),
        help="every connection starts with a PROXY protocol v1/v2 header from a peer of "
        "--forwarded-allow-ips (plain TCP only) (env SIMPLEW_PROXY_PROTOCOL=1)",
    )
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The options, with the values from environment variables checked as the options are."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # a bad number in a variable: UsageError
        if args.log_level not in LOG_LEVELS:  # from SIMPLEW_LOG_LEVEL: argparse checks options
            raise UsageError(
                f"SIMPLEW_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {args.log_level!r}"
            )
        for name, value in vars(args).items():
            if isinstance(value, _FlagFromEnv):  # the variable of a --flag not given
                if value.lower() not in FLAGS:
                    raise UsageError(f"{value.variable} must be {FLAG_VALUES}, got {str(value)!r}")
                setattr(args, name, FLAGS[value.lower()])
            elif isinstance(value, _FromEnv):  # plain str from here on
                setattr(args, name, str(value))
    except UsageError as exc:
        parser.exit(2, f"simplew: error: {exc}\n")
    return args


def load_app(spec: str) -> SimpleWServer:
    """Import ``module:attribute`` and return the server it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"APP must look like module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc}") from exc
    except Exception as exc:  # the module itself failed: show where
        traceback.print_exc()
        raise UsageError(
            f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, SimpleWServer) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            traceback.print_exc()
            raise UsageError(f"{spec}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, SimpleWServer):
        raise UsageError(f"{spec} is a {type(obj).__name__}, not a SimpleWServer")
    return obj


def configure(args: argparse.Namespace) -> SimpleWServer:
    """The server described by the options (APP first, then the options on top)."""
    if args.app:
        server = load_app(args.app)
    else:
        if not args.static and not args.ws:
            raise UsageError("give an APP (module:attribute), or --static and/or --ws")
        server = SimpleWServer()
    address: dict[str, Any] = {}
    if args.host:
        address["host"] = args.host
    if args.port is not None:
        address["port"] = args.port
    try:
        server.options = server.options.replace(**address)  # validated
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for item in args.static:
        directory, _, prefix = item.partition(":")
        if not os.path.isdir(directory):
            raise UsageError(f"--static: no such directory: {directory}")
        try:
            server.add_static_content(
                directory, prefix or "/", timeout=86400, allow_system_root=args.allow_system_root
            )
        except ValueError as exc:  # a system directory, or /proc and /sys
            raise UsageError(f"--static: {exc}") from None
    for path in args.ws:
        try:
            server.add_websocket_content(path)
        except ValueError as exc:
            raise UsageError(f"--ws: {exc}") from None
    for path in args.sse:
        try:
            server.add_sse_content(path)
        except ValueError as exc:
            raise UsageError(f"--sse: {exc}") from None
    if args.publish_token is not None and not args.publish:
        raise UsageError("--publish-token goes with --publish")
    if args.publish_token == "":
        raise UsageError("--publish-token must not be empty")
    if args.publish:
        if not args.publish.startswith("/"):
            raise UsageError(f"--publish: the path must start with '/': {args.publish}")
        server.map_post(args.publish, _publisher(server, args.publish_token))
    if args.api is not None or args.api_token is not None:
        if args.api is None:
            raise UsageError("--api-token goes with --api")
        try:
            server.options = server.options.replace(api_path=args.api, api_token=args.api_token)
        except ValueError as exc:
            raise UsageError(f"--api: {exc}") from None
    if args.metrics:
        server.enable_metrics()
    try:  # connection limits and WebSocket origins (per process with --workers)
        from simplew._fast.admission import OriginPolicy

        if args.allowed_origin:
            server.admission.origins = OriginPolicy(args.allowed_origin)
        if args.max_connections is not None:
            server.admission.max_connections = args.max_connections
        if args.max_connections_per_ip is not None:
            server.admission.max_connections_per_ip = args.max_connections_per_ip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if bool(args.certfile) != bool(args.keyfile):
        raise UsageError("--certfile and --keyfile go together")
    if args.certfile:
        import ssl

        for option, name in (("--certfile", args.certfile), ("--keyfile", args.keyfile)):
            if not os.path.isfile(name):
                raise UsageError(f"{option}: no such file: {name}")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            # a password callback: an encrypted key never prompts on the terminal
            context.load_cert_chain(
                args.certfile, args.keyfile, password=lambda: args.keyfile_password or ""
            )
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(f"cannot load the certificate/key: {exc}") from exc
        server.ssl = context
    redis = args.redis if args.redis else _env("redis")
    if redis:
        try:
            urls = parse_redis_urls(redis)
        except ValueError as exc:
            raise UsageError(f"--redis: {exc}") from None
        if importlib.util.find_spec("redis") is None:
            raise UsageError(f"--redis needs the Redis client: {REDIS_EXTRA}")
        server.redis_url = urls if len(urls) > 1 else urls[0]
    settings: dict[str, Any] = {"shutdown_grace": args.shutdown_grace}
    settings["max_rooms_per_session"] = args.max_rooms_per_session
    if args.forwarded_allow_ips is not None:
        settings["forwarded_allow_ips"] = [
            s.strip() for s in args.forwarded_allow_ips.split(",") if s.strip()
        ]
    if args.proxy_protocol:
        settings["proxy_protocol"] = True
    if args.admin_token is not None and not args.admin:
        raise UsageError("--admin-token goes with --admin")
    if args.admin:
        if not (args.admin_token or server.admin_token):
            raise UsageError("--admin needs --admin-token (or SIMPLEW_ADMIN_TOKEN)")
        settings["admin_path"] = args.admin
        settings["admin_token"] = args.admin_token or server.admin_token
    if args.registry_ttl is not None:
        settings["registry_ttl"] = args.registry_ttl
    settings["max_sse_rooms"] = args.max_sse_rooms
    settings["sse_heartbeat"] = args.sse_heartbeat
    recovery = {
        "recovery_window": args.recovery_window,
        "history_size": args.history_size,
        "history_ttl": args.history_ttl,
        "wait_replicas": args.wait_replicas,
        "publish_timeout": args.publish_timeout,
    }
    if args.recovery:
        settings.update(recovery=True, **recovery)
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.workers > MAX_WORKERS:
        raise UsageError(f"--workers must be at most {MAX_WORKERS}, got {args.workers}")
    if args.workers > 1:
        settings["reuse_port"] = True
    try:
        server.options.replace(**recovery)  # checked even where not applied (no --recovery)
        server.options = server.options.replace(**settings)  # validated
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return server


def _publisher(server: SimpleWServer, token: str | None) -> Any:
    """The handler of ``--publish``: multicast the body of a POST (to ``?room=`` if given).

    With a ``token``, a POST without ``Authorization: Bearer <token>`` gets 401 and
    publishes nothing; the token is compared in constant time.

    The answer comes once the publication is stored (``server.publish``): with
    recovery, ``{"published": bytes, "room": ..., "epoch": ..., "offset": ...}``, its
    position; without, ``{"published": bytes, "room": ...}``. When Redis cannot store
    it now (its shard is down): 503 with ``Retry-After``, and nothing is published.
    """
    from simplew.auth import bearer_challenge, bearer_matches
    from simplew.rest import HttpError, Response
    from simplew.stream import Unavailable

    expected = token.encode("utf-8") if token else None

    async def publish(request: Any) -> Any:
        if expected is not None and not bearer_matches(request.headers, expected):
            return Response(
                401,
                {
                    "error": "unauthorized",
                    "message": "publishing needs 'Authorization: Bearer <token>'",
                },
                {"WWW-Authenticate": bearer_challenge(request.headers, "simplew")},
            )
        room = request.query.get("room") or None
        data: str | bytes
        if request.headers.get("content-type", "").startswith("application/octet-stream"):
            data = bytes(request.body)
        else:
            try:
                data = request.body.decode("utf-8")
            except UnicodeDecodeError:
                raise HttpError(400, "a text message must be UTF-8") from None
        try:
            position = await server.publish(data, room=room)
        except Unavailable as exc:
            return Response(
                503,
                {"error": "unavailable", "message": str(exc)},
                {"Retry-After": str(exc.retry_after)},
            )
        except ValueError as exc:  # a room name the server refuses
            raise HttpError(400, str(exc)) from None
        answer: dict[str, Any] = {"published": len(request.body), "room": room}
        if position is not None:
            answer.update(epoch=position.epoch, offset=position.offset)
        return answer

    return publish


def _check_port(host: str, port: int, reuse_port: bool) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_open_publish(args: argparse.Namespace, server: SimpleWServer) -> None:
    if args.publish and not args.publish_token and not _is_loopback(server.host):
        log.warning(
            "--publish %s on %s without --publish-token: anyone who reaches this "
            "port can multicast to every client",
            args.publish,
            server.host,
        )


def _worker(argv: Sequence[str], index: int, listening: Any) -> None:
    """One process of ``--workers N``: ``listening.set()`` tells the parent it has booted."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s worker{index} %(levelname)s %(name)s: %(message)s",
    )
    try:
        server = configure(args)  # the APP again, in this process: it may fail here only
    except UsageError as exc:
        print(f"simplew: error: worker{index}: {exc}", file=sys.stderr)
        sys.exit(2)
    threading.Thread(
        target=_report_listening, args=(server, listening), name="simplew-boot", daemon=True
    ).start()
    server.run()


def _report_listening(server: SimpleWServer, listening: Any) -> None:
    while not server.is_started:  # run() gives no other sign
        time.sleep(0.02)
    listening.set()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        server = configure(args)
        _warn_open_publish(args, server)
        if args.workers == 1:
            _check_port(server.host, server.port, False)
            try:
                server.run()
            except OSError as exc:  # lost a race for the port, or the like
                raise UsageError(f"cannot listen on {server.host}:{server.port}: {exc}") from None
            return 0
        _check_port(server.host, server.port, True)
    except UsageError as exc:
        print(f"simplew: error: {exc}", file=sys.stderr)
        return 2
    return supervise(_worker, argv, args.workers, kill_after=server.shutdown_grace + 10)
