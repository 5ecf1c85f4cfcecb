"""EventBus: publish/subscribe on named channels. Redis pub/sub in server mode, in-memory in
embedded mode; one interface.

Used for worker wake-ups and execution notifications. Delivery is best effort: the database
is the truth, and every consumer also polls, so a lost message only delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import orjson

log = logging.getLogger(__name__)
_KEEP_SUBSCRIBED = "bus"  # a pub/sub connection must hold a subscription to be read


class EventBus(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...
    def subscribe(
        self, channel: str
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[dict[str, Any]]]: ...
    async def ping(self) -> bool: ...


class _Fanout:
    """Local subscribers per channel; each gets its own queue."""

    def __init__(self) -> None:
        self.queues: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)

    def deliver(self, channel: str, message: dict[str, Any]) -> None:
        for queue in self.queues.get(channel, ()):
            queue.put_nowait(message)

    def add(self, channel: str) -> tuple[asyncio.Queue[dict[str, Any]], bool]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=0)
        first = not self.queues[channel]
        self.queues[channel].add(queue)
        return queue, first

    def remove(self, channel: str, queue: asyncio.Queue[dict[str, Any]]) -> bool:
        """Returns True when the channel has no subscriber left."""
        subscribers = self.queues.get(channel)
        if subscribers is None:
            return False
        subscribers.discard(queue)
        if not subscribers:
            del self.queues[channel]
            return True
        return False


class InMemoryBus:
    """The embedded-mode bus: the api and the in-process worker share this object."""

    def __init__(self) -> None:
        self._fanout = _Fanout()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        self._fanout.deliver(channel, message)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue, _ = self._fanout.add(channel)
        try:
            yield queue
        finally:
            self._fanout.remove(channel, queue)

    async def ping(self) -> bool:
        return True


class RedisBus:
    """Redis pub/sub with one connection per process and a reader task fanning out locally."""

    def __init__(self, url: str, namespace: str = "ap") -> None:
        import redis.asyncio as redis

        self._prefix = f"{namespace}:"

        self._redis = redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._fanout = _Fanout()
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self._pubsub.subscribe(self._prefix + _KEEP_SUBSCRIBED)
        self._reader = asyncio.create_task(self._read(), name="redis-bus-reader")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        try:
            await self._redis.publish(self._prefix + channel, orjson.dumps(message))
        except Exception as exc:  # best effort: consumers poll the database too
            log.warning("redis publish to %s failed: %s", channel, exc)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue, first = self._fanout.add(channel)
        try:
            if first:
                async with self._lock:
                    with contextlib.suppress(Exception):
                        await self._pubsub.subscribe(self._prefix + channel)
            yield queue
        finally:
            if self._fanout.remove(channel, queue):
                async with self._lock:
                    with contextlib.suppress(Exception):
                        await self._pubsub.unsubscribe(self._prefix + channel)

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), timeout=2))
        except Exception:
            return False

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("redis bus read failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            channel = channel.removeprefix(self._prefix)
            try:
                payload = orjson.loads(message["data"])
            except orjson.JSONDecodeError:
                continue
            self._fanout.deliver(channel, payload)


def make_bus(redis_url: str | None, namespace: str = "ap") -> EventBus:
    return RedisBus(redis_url, namespace) if redis_url else InMemoryBus()
