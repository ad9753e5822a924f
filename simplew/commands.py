"""The command channel of the server API: acts on the connections of every process.

Every process with the API (:mod:`simplew.api`) and Redis subscribes to
``simplew:{api}:commands`` and to its own reply channel
``simplew:{api}:replies:<process id>``, on the shard of the broadcast stream (one
hash tag: one slot and node of a Cluster, where they are shard channels). :meth:`Commands.ask` publishes a
command; Redis answers the publish with the number of subscribers that got it;
each of them acts on its own sessions and publishes its answer on the asking
process's reply channel; ``ask`` returns the answers once that many came, or
what came within ``REPLY_TIMEOUT`` seconds. Loop thread only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import Callable
from typing import Any

from simplew.backplane import BACKOFF_MAX, BACKOFF_MIN, _close_quietly, _describe, cancel_quietly
from simplew.engines import PREFIX, Engine

log = logging.getLogger("simplew.api")

CHANNEL = PREFIX + ":{api}:commands"
REPLY_TIMEOUT = 2.0  # seconds an ask waits for the processes' answers


def reply_channel(process_id: str) -> str:
    return f"{PREFIX}:{{api}}:replies:{process_id}"


class _Asked:
    __slots__ = ("answers", "expected", "done")

    def __init__(self) -> None:
        self.answers: list[Any] = []
        self.expected: int | None = None  # known once the publish is answered
        self.done = asyncio.Event()

    def check(self) -> None:
        if self.expected is not None and len(self.answers) >= self.expected:
            self.done.set()


class Commands:
    """This process's end of the command channel: it answers commands with
    ``act(op, args)`` and asks every process (itself included)."""

    def __init__(
        self,
        redis_url: str | list[str],
        process_id: str,
        act: Callable[[str, dict[str, Any]], Any],
    ) -> None:
        self.engine = Engine.from_urls(redis_url)
        self.shard = self.engine.shard_of(None)  # the broadcast stream's, as every process agrees
        self.process_id = process_id
        self.replies = reply_channel(process_id)
        self.act = act
        self.connected = False  # both channels subscribed
        self.closed = False
        self.asked: dict[str, _Asked] = {}
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="simplew-api")

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        failures = 0
        while not self.closed:
            subscriber = None
            try:
                await self.engine.client(
                    self.shard
                ).ping()  # a Cluster client learns its slots here
                subscriber = self.engine.subscriber(self.shard)
                await subscriber.subscribe(CHANNEL, self.replies)
                confirmed = 0
                while not self.closed:
                    message = await subscriber.get_message(timeout=1.0, confirmations=True)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        confirmed += 1
                        self.connected = confirmed >= 2
                        if self.connected and failures:
                            log.info("API command channel: connected again")
                            failures = 0
                        backoff = BACKOFF_MIN
                        continue
                    await self._on_message(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.closed and failures == 0:
                    log.warning("API command channel: %s; retrying", _describe(exc))
                failures += 1
            finally:
                self.connected = False
                await _close_quietly(subscriber)
            if not self.closed:
                await asyncio.sleep(backoff * (1 + random.random() / 4))
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _on_message(self, channel: Any, data: bytes) -> None:
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        try:
            message = json.loads(data)
            ident = message["id"]
        except (ValueError, TypeError, KeyError):
            log.warning("API command channel: a malformed message dropped")
            return
        if channel == self.replies:
            asked = self.asked.get(ident)
            if asked is not None:
                asked.answers.append(message.get("result"))
                asked.check()
            return
        try:
            result = self.act(message["op"], message["args"])
        except Exception:
            log.exception("API command %r failed", message.get("op"))
            result = None
        answer = json.dumps({"id": ident, "result": result}, separators=(",", ":"))
        client = self.engine.client(self.shard)
        await client.execute_command(
            self.engine.publish_command, reply_channel(str(message.get("from"))), answer
        )

    async def ask(self, op: str, args: dict[str, Any]) -> list[Any]:
        """Every process's answer to ``op`` (those that answered within
        ``REPLY_TIMEOUT``); ConnectionError when the channel is down."""
        if not self.connected:
            raise ConnectionError("the API command channel is not connected to Redis")
        ident = os.urandom(8).hex()
        asked = self.asked[ident] = _Asked()
        try:
            command = {"id": ident, "from": self.process_id, "op": op, "args": args}
            receivers = await self.engine.client(self.shard).execute_command(
                self.engine.publish_command, CHANNEL, json.dumps(command, separators=(",", ":"))
            )
            asked.expected = int(receivers)
            asked.check()
            try:
                await asyncio.wait_for(asked.done.wait(), REPLY_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning(
                    "API command %s: %d of %d processes answered in %g s",
                    op,
                    len(asked.answers),
                    asked.expected,
                    REPLY_TIMEOUT,
                )
            return [answer for answer in asked.answers if answer is not None]
        finally:
            del self.asked[ident]

    async def close(self) -> None:
        self.closed = True
        await cancel_quietly(self.task)
        self.task = None
        await self.engine.aclose()
