import asyncio
from collections.abc import Iterable
from typing import Any

from typing_extensions import disjoint_base

@disjoint_base
class OriginPolicy:
    entries: tuple[str, ...]
    def __init__(self, entries: str | Iterable[str]) -> None: ...
    def allows(self, origin: str) -> bool: ...

@disjoint_base
class Admission:
    max_connections: int | None
    max_connections_per_ip: int | None
    origins: OriginPolicy | None
    endpoint_origins: dict[str, OriginPolicy]
    open_connections: int
    rejected_total: int
    rejected_per_ip: int
    rejected_origins: int
    tracks_hosts: bool
    def __init__(
        self,
        max_connections: int | None = None,
        max_connections_per_ip: int | None = None,
        allowed_origins: str | Iterable[str] | None = None,
    ) -> None: ...
    def release(self, host: Any) -> None: ...
    def open_by_host(self) -> dict[str, int]: ...
    def allows_origin(self, endpoint_path: str, origin: str | None) -> bool: ...

# At run time a picows.picows.WSProtocol, which picows's stub does not declare: typed here
# as its nearest declared base.
class CountedWSProtocol(asyncio.BufferedProtocol):
    admission: Admission | None
    host: Any
    def __init__(self, *args: Any) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
