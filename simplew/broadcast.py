"""Multicast and rooms: where one message for many clients goes.

``server.multicast_text`` / ``multicast_binary`` hop to the loop thread and
call :meth:`Broadcast.publish`, which takes one of three paths:

- recovery on (:mod:`simplew.recovery`): the message is a publication of the
  stream. Without Redis it gets the next offset and is fanned out here at
  once; with Redis (:mod:`simplew.stream`) it is written to Redis first and
  every process, this one included, delivers it when Redis hands it back, in
  offset order;
- a Redis backplane without recovery (:mod:`simplew.backplane`): fanned out
  here at once, then sent to the other processes, whose backplane hands it
  to their :meth:`Broadcast.fan_out`;
- neither: fanned out here.

The fan-out itself (one prebuilt frame for every client, rooms) is
:class:`simplew._fast.hub.Hub`.
"""

from __future__ import annotations

from typing import Any

from simplew._fast.context import ServerContext


class Broadcast:
    """The multicast paths of one server (loop thread only)."""

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.backplane: Any = None  # simplew.backplane.RedisBackplane or simplew.stream.RedisStream

    def publish(self, opcode: int, payload: bytes, room: str | None, wait: bool = False) -> Any:
        """Multicast ``payload`` (opcode 1 TEXT, 2 BINARY) to everyone or to ``room``.
        With recovery, returns what :meth:`simplew.recovery.Recovery.publish` does
        (its position, or a future of it with Redis); None otherwise."""
        recovery = self.context.recovery
        if recovery is not None:
            return recovery.publish(opcode, payload, room, wait)  # a publication of a stream
        self.fan_out(opcode, payload, room)
        if self.backplane is not None:
            self.backplane.publish(opcode, payload, room)
        return None

    def fan_out(self, opcode: int, payload: bytes, room: str | None) -> None:
        """Send to this process's clients only (also a multicast from another process)."""
        hub = self.context.hub
        if room is None:
            hub.multicast(opcode, payload)
        else:
            hub.multicast_room(room, opcode, payload)
