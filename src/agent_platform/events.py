"""EventBus: publish/subscribe on named channels. Redis pub/sub in server mode, in-memory in
embedded mode; one interface.

Used for worker wake-ups and execution notifications. Delivery is best effort: the database
is the truth, and every consumer also polls, so a lost message only delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import orjson

log = logging.getLogger(__name__)
_KEEP_SUBSCRIBED = "bus"  # a pub/sub connection must hold a subscription to be read


STREAM_MAXLEN = 512  # per execution; the database keeps the whole history anyway
STREAM_TTL_S = 3600

# One command per append, however many entries: KEYS[1] the stream; ARGV[1] its length cap,
# ARGV[2] its time to live, ARGV[3] what to publish on the channel of the same name ("" for
# nothing), ARGV[4..] the entries. As a pipeline (XADDs, EXPIRE, PUBLISH) the client packs and
# parses every command: three times the CPU for the same round trip.
_APPEND_LUA = """
for i = 4, #ARGV do
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then
    redis.call('PUBLISH', KEYS[1], ARGV[3])
end
return 0
"""


class EventBus(Protocol):
    """Pub/sub channels (wake-ups, ends of executions) and bounded per-execution streams (the
    live tail behind SSE). Everything here is a notification; the database holds the data."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...
    def subscribe(
        self, channel: str
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[dict[str, Any]]]: ...
    async def append(
        self, stream: str, *messages: dict[str, Any], publish: dict[str, Any] | None = None
    ) -> None:
        """Add to the stream; with `publish`, also publish it on the channel of the same name
        (one round trip for both)."""
        ...

    async def tail(self, stream: str) -> str: ...
    async def read(
        self, stream: str, after_id: str, timeout_s: float
    ) -> tuple[str, list[dict[str, Any]]]: ...
    async def ping(self) -> bool: ...
    async def take(self, key: str, ttl_s: float) -> bool:
        """True for one caller of `key` per `ttl_s`, whichever process it runs in: which of
        the workers that heard a broadcast acts on it."""
        ...

    async def listeners(self, channel: str) -> int:
        """How many processes are subscribed to `channel` (1 in embedded mode)."""
        ...


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


class _MemoryStream:
    def __init__(self) -> None:
        self.entries: list[tuple[int, dict[str, Any]]] = []
        self.next_id = 1
        self.changed = asyncio.Condition()


class InMemoryBus:
    """The embedded-mode bus: the api and the in-process worker share this object."""

    max_streams = 10_000  # oldest streams are dropped first (readers fall back to the DB)
    max_taken = 10_000  # taken keys kept before the expired ones are swept

    def __init__(self) -> None:
        self._fanout = _Fanout()
        self._streams: OrderedDict[str, _MemoryStream] = OrderedDict()
        self._taken: dict[str, float] = {}  # key -> when it may be taken again

    def _stream(self, name: str) -> _MemoryStream:
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = _MemoryStream()
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
        return stream

    async def append(
        self, stream: str, *messages: dict[str, Any], publish: dict[str, Any] | None = None
    ) -> None:
        s = self._stream(stream)
        async with s.changed:
            for message in messages:
                s.entries.append((s.next_id, message))
                s.next_id += 1
            del s.entries[:-STREAM_MAXLEN]
            s.changed.notify_all()
        if publish is not None:
            await self.publish(stream, publish)

    async def tail(self, stream: str) -> str:
        s = self._streams.get(stream)
        return str(s.next_id - 1) if s else "0"

    async def read(
        self, stream: str, after_id: str, timeout_s: float
    ) -> tuple[str, list[dict[str, Any]]]:
        s = self._stream(stream)
        after = int(after_id)

        def fresh() -> list[tuple[int, dict[str, Any]]]:
            return [entry for entry in s.entries if entry[0] > after]

        async with s.changed:
            if not fresh():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(s.changed.wait_for(lambda: bool(fresh())), timeout_s)
            found = fresh()
        if not found:
            return after_id, []
        return str(found[-1][0]), [message for _, message in found]

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

    async def listeners(self, channel: str) -> int:
        return 1  # one process

    async def take(self, key: str, ttl_s: float) -> bool:
        now = time.monotonic()
        if self._taken.get(key, 0.0) > now:
            return False
        if len(self._taken) >= self.max_taken:
            self._taken = {k: until for k, until in self._taken.items() if until > now}
        self._taken[key] = now + ttl_s
        return True


class RedisBus:
    """Redis pub/sub with one connection per process and a reader task fanning out locally."""

    def __init__(self, url: str, namespace: str = "ap") -> None:
        import redis.asyncio as redis

        self._prefix = f"{namespace}:"

        self._redis = redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        # blocking reads (XREAD BLOCK) need connections without a short socket timeout
        self._reader_redis = redis.from_url(url, socket_connect_timeout=5)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._append = self._redis.register_script(_APPEND_LUA)  # EVALSHA, loaded on first use
        self._fanout = _Fanout()
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._families: set[str] = set()  # pattern-subscribed channel families

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
        with contextlib.suppress(Exception):
            await self._reader_redis.aclose()

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        try:
            await self._redis.publish(self._prefix + channel, orjson.dumps(message))
        except Exception as exc:  # best effort: consumers poll the database too
            log.warning("redis publish to %s failed: %s", channel, exc)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """Channels named `<family>:<id>` (one per execution) are served by one pattern
        subscription per family, made on first use and kept: a request waiting for its
        execution costs no SUBSCRIBE/UNSUBSCRIBE round trips. Other channels (wake-ups,
        cancels) are subscribed while someone listens."""
        family, sep, _ = channel.partition(":")
        queue, first = self._fanout.add(channel)
        try:
            if sep:
                if family not in self._families:
                    async with self._lock:
                        if family not in self._families:
                            with contextlib.suppress(Exception):
                                await self._pubsub.psubscribe(f"{self._prefix}{family}:*")
                                self._families.add(family)
            elif first:
                async with self._lock:
                    with contextlib.suppress(Exception):
                        await self._pubsub.subscribe(self._prefix + channel)
            yield queue
        finally:
            if self._fanout.remove(channel, queue) and not sep:
                async with self._lock:
                    with contextlib.suppress(Exception):
                        await self._pubsub.unsubscribe(self._prefix + channel)

    async def append(
        self, stream: str, *messages: dict[str, Any], publish: dict[str, Any] | None = None
    ) -> None:
        key = self._prefix + stream
        args = [STREAM_MAXLEN, STREAM_TTL_S, b"" if publish is None else orjson.dumps(publish)]
        args += [orjson.dumps(message) for message in messages]
        try:
            await self._append(keys=[key], args=args)
        except Exception as exc:  # best effort: readers also poll the database
            log.warning("redis stream append to %s failed: %s", key, exc)

    async def tail(self, stream: str) -> str:
        try:
            last = await self._redis.xrevrange(self._prefix + stream, count=1)
        except Exception:
            return "0-0"
        return _decode(last[0][0]) if last else "0-0"

    async def read(
        self, stream: str, after_id: str, timeout_s: float
    ) -> tuple[str, list[dict[str, Any]]]:
        key = self._prefix + stream
        try:
            reply = await self._reader_redis.xread(
                {key: after_id}, count=100, block=max(1, int(timeout_s * 1000))
            )
        except Exception as exc:
            log.warning("redis stream read of %s failed: %s", key, exc)
            await asyncio.sleep(min(timeout_s, 1.0))
            return after_id, []
        messages: list[dict[str, Any]] = []
        last = after_id
        for _key, entries in reply or ():
            for entry_id, fields in entries:
                last = _decode(entry_id)
                raw = fields.get(b"m") or fields.get("m")
                if raw is not None:
                    messages.append(orjson.loads(raw))
        return last, messages

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), timeout=2))
        except Exception:
            return False

    async def listeners(self, channel: str) -> int:
        # each process holds one subscription per channel and fans it out locally
        [(_, count)] = await self._redis.pubsub_numsub(self._prefix + channel)
        return int(count)

    async def take(self, key: str, ttl_s: float) -> bool:
        try:
            taken = await self._redis.set(
                f"{self._prefix}take:{key}", b"1", nx=True, px=max(1, round(ttl_s * 1000))
            )
        except Exception as exc:  # fail open: a second taker's claim only finds nothing
            log.warning("redis take of %s failed: %s", key, exc)
            return True
        return bool(taken)

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
            if message is None or message.get("type") not in ("message", "pmessage"):
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


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def make_bus(redis_url: str | None, namespace: str = "ap") -> EventBus:
    return RedisBus(redis_url, namespace) if redis_url else InMemoryBus()
