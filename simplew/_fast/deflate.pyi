"""permessage-deflate (RFC 7692): negotiation, per-connection codecs, multicast."""

from collections.abc import Iterable
from typing import Final

from typing_extensions import Buffer, Self, disjoint_base

EXTENSION_NAME: Final[str]
DEFAULT_LEVEL: Final[int]
DEFAULT_MEM_LEVEL: Final[int]

class MessageTooBig(ValueError):
    close_code: int  # 1009

class InflateError(ValueError):
    close_code: int  # 1002

@disjoint_base
class DeflateSettings:
    @property
    def server_no_context_takeover(self) -> bool: ...
    @property
    def client_no_context_takeover(self) -> bool: ...
    @property
    def server_max_window_bits(self) -> int: ...
    @property
    def client_max_window_bits(self) -> int: ...
    @property
    def key(self) -> tuple[bool, bool, int, int]: ...
    # Cython's __cinit__: the arguments go to __new__
    def __new__(
        cls,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int = 15,
        client_max_window_bits: int = 15,
    ) -> Self: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

def negotiate(
    header_value: str | Iterable[str] | None,
    *,
    enabled: bool = True,
    server_no_context_takeover: bool = False,
    client_no_context_takeover: bool = False,
    server_max_window_bits: int = 15,
    client_max_window_bits: int | None = None,
) -> tuple[str, DeflateSettings] | tuple[None, None]: ...

@disjoint_base
class Inflater:
    @property
    def settings(self) -> DeflateSettings: ...
    @property
    def max_size(self) -> int: ...
    def __init__(self, settings: DeflateSettings, max_size: int) -> None: ...
    def inflate(self, data: Buffer, fin: bool) -> bytes: ...
    def reset(self) -> None: ...

@disjoint_base
class Deflater:
    @property
    def settings(self) -> DeflateSettings: ...
    @property
    def level(self) -> int: ...
    @property
    def mem_level(self) -> int: ...
    def __init__(self, settings: DeflateSettings, level: int = 6, mem_level: int = 8) -> None: ...
    def deflate(self, payload: Buffer) -> bytes: ...
    def reset(self) -> None: ...

def deflate_standalone(
    payload: Buffer, wbits: int = 15, level: int = 6, mem_level: int = 8
) -> bytes: ...
def deflate_once(
    settings: DeflateSettings | tuple[bool, bool, int, int], payload: Buffer
) -> bytes: ...
