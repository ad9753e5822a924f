"""uvicorn + Starlette peer: ``GET /json`` answers a dict through ``JSONResponse``.

    python bench/servers/starlette_server.py --port 8080

uvicorn with its httptools parser and uvloop (both installed), one worker,
access log off: the usual Python ASGI stack answering the same JSON as the
other HTTP peers. Bench only (``pip install uvicorn starlette``).
"""

from __future__ import annotations

import json

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from _common import JSON_BODY, JSON_PATH, parse_args, ready

PAYLOAD = json.loads(JSON_BODY)


async def answer(request) -> JSONResponse:
    return JSONResponse(PAYLOAD)


app = Starlette(routes=[Route(JSON_PATH, answer)])


class ReadyServer(uvicorn.Server):
    """Prints the harness's READY line once uvicorn listens."""

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        ready(self.servers[0].sockets[0].getsockname()[1])


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )
    ReadyServer(config).run()


if __name__ == "__main__":
    main()
