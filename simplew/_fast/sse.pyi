from typing import Any

from typing_extensions import disjoint_base

from simplew._fast.admission import Admission
from simplew._fast.connection import Endpoint, WebSocketConnection
from simplew._fast.context import ServerContext
from simplew._fast.request import Request

HEARTBEAT: float
MAX_ROOMS: int
RETRY: bytes
PING: bytes
LIVE_EPOCH: str

def event_body(opcode: int, payload: bytes) -> bytes: ...

@disjoint_base
class SseEndpoint(Endpoint):
    heartbeat: float
    max_rooms: int
    def __init__(
        self,
        path: str,
        context: ServerContext | None = None,
        heartbeat: float = 15.0,
        max_rooms: int = 16,
    ) -> None: ...
    @property
    def connections(self) -> int: ...
    def stop(self) -> None: ...

@disjoint_base
class SseConnection(WebSocketConnection):
    @property
    def wanted(self) -> list[str]: ...
    @property
    def left(self) -> list[str]: ...
    def __init__(
        self,
        endpoint: SseEndpoint,
        request: Request,
        wanted: list[str],
        left: list[str],
        held: dict[str | None, tuple[str, int]],
        user: Any = None,
    ) -> None: ...
    def attach(
        self,
        transport: Any,
        admission: Admission | None,
        host: Any,
        date: bytes,
        headers: list[tuple[str, str]],
    ) -> None: ...
    def connection_made(self, transport: Any) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool: ...
    def connection_lost(self, exc: BaseException | None) -> None: ...
    def begin(self) -> None: ...
    def started(self) -> None: ...
    def joined_live(self, room: str) -> None: ...
    def position(self) -> dict[str | None, tuple[str, int]]: ...
