import asyncio

from simplew._fast.hub import Hub

class Heartbeat:
    interval: float
    timeout: float
    dropped: int
    def __init__(self, hub: Hub, interval: float, timeout: float) -> None: ...
    def wake(self, loop: asyncio.AbstractEventLoop) -> None: ...
