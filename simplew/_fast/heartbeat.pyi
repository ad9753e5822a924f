import asyncio

from typing_extensions import disjoint_base

from simplew._fast.hub import Hub

@disjoint_base
class Heartbeat:
    interval: float
    timeout: float
    dropped: int
    def __init__(self, hub: Hub, interval: float, timeout: float) -> None: ...
    def wake(self, loop: asyncio.AbstractEventLoop) -> None: ...
