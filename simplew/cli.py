"""The ``simplew`` command: ``simplew serve [APP] [options]``.

APP is ``module:attribute`` naming a :class:`SimpleWServer` (or a callable
returning one), like uvicorn's ``module:app``. Without APP, ``--static`` and
``--ws`` describe the whole server. Every option also reads an environment
variable ``SIMPLEW_<OPTION>``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import multiprocessing
import os
import socket
import sys
from typing import Any, Sequence

from simplew.server import SimpleWServer

log = logging.getLogger("simplew")


class UsageError(Exception):
    """A bad option or APP: printed without a traceback, exit status 2."""


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get("SIMPLEW_" + name.upper().replace("-", "_"), default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simplew", description="SimpleW's web server for Python")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a server")
    serve.add_argument("app", nargs="?", default=_env("app"),
                       help="module:attribute of a SimpleWServer (env SIMPLEW_APP)")
    serve.add_argument("--host", default=_env("host"), help="address to bind (env SIMPLEW_HOST)")
    serve.add_argument("--port", type=int, default=_env("port"), help="port (env SIMPLEW_PORT)")
    serve.add_argument("--workers", type=int, default=int(_env("workers", 1)),
                       help="processes sharing the port with SO_REUSEPORT (env SIMPLEW_WORKERS)")
    serve.add_argument("--static", action="append",
                       default=[s for s in (_env("static") or "").split(",") if s],
                       metavar="DIR[:PREFIX]", help="serve a directory (repeatable; env SIMPLEW_STATIC, comma-separated)")
    serve.add_argument("--ws", action="append",
                       default=[s for s in (_env("ws") or "").split(",") if s],
                       metavar="PATH", help="open a WebSocket endpoint (repeatable; env SIMPLEW_WS)")
    serve.add_argument("--redis", default=_env("redis"), help="Redis URL for cross-process multicast (env SIMPLEW_REDIS)")
    serve.add_argument("--certfile", default=_env("certfile"), help="TLS certificate (env SIMPLEW_CERTFILE)")
    serve.add_argument("--keyfile", default=_env("keyfile"), help="TLS private key (env SIMPLEW_KEYFILE)")
    serve.add_argument("--log-level", default=_env("log_level", "info"),
                       choices=["debug", "info", "warning", "error", "critical"],
                       help="logging level (env SIMPLEW_LOG_LEVEL)")
    serve.add_argument("--shutdown-grace", type=float, default=float(_env("shutdown_grace", 5.0)),
                       help="seconds to let clients close on SIGTERM (env SIMPLEW_SHUTDOWN_GRACE)")
    return parser


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
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, SimpleWServer) and callable(obj):
        obj = obj()
    if not isinstance(obj, SimpleWServer):
        raise UsageError(f"{spec} is a {type(obj).__name__}, not a SimpleWServer")
    return obj


def configure(args: argparse.Namespace) -> SimpleWServer:
    """The server described by the options (APP first, then the options on top)."""
    if args.app:
        server = load_app(args.app)
        if args.host:
            server.host = args.host
        if args.port is not None:
            server.port = args.port
    else:
        if not args.static and not args.ws:
            raise UsageError("give an APP (module:attribute), or --static and/or --ws")
        server = SimpleWServer(args.host or "0.0.0.0", 2015 if args.port is None else args.port)
    for item in args.static:
        directory, _, prefix = item.partition(":")
        if not os.path.isdir(directory):
            raise UsageError(f"--static: no such directory: {directory}")
        server.add_static_content(directory, prefix or "/", timeout=86400)
    for path in args.ws:
        server.add_websocket_content(path)
    if bool(args.certfile) != bool(args.keyfile):
        raise UsageError("--certfile and --keyfile go together")
    if args.certfile:
        import ssl
        for name in (args.certfile, args.keyfile):
            if not os.path.isfile(name):
                raise UsageError(f"no such file: {name}")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.certfile, args.keyfile)
        except ssl.SSLError as exc:
            raise UsageError(f"cannot load the certificate/key: {exc}") from exc
        server.ssl = context
    if args.redis:
        server.redis_url = args.redis
    server.shutdown_grace = args.shutdown_grace
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.workers > 1:
        server._reuse_port = True
    return server


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


def _worker(argv: Sequence[str], index: int) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format=f"%(asctime)s worker{index} %(levelname)s %(name)s: %(message)s")
    configure(args).run()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = configure(args)
        if args.workers == 1:
            _check_port(server.host, server.port, False)
            server.run()
            return 0
        _check_port(server.host, server.port, True)
    except UsageError as exc:
        print(f"simplew: error: {exc}", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_worker, args=(argv, i), name=f"simplew-worker-{i}")
               for i in range(args.workers)]
    for w in workers:
        w.start()
    import signal

    def forward(signum: int, _frame: Any) -> None:
        for w in workers:
            if w.is_alive():
                os.kill(w.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for w in workers:
        w.join()
    return max((w.exitcode or 0) for w in workers)
