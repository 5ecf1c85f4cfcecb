"""The event bus on Redis and in memory: what an append leaves behind and who hears of it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from agent_platform.events import STREAM_MAXLEN, STREAM_TTL_S, EventBus, InMemoryBus, RedisBus
from tests.conftest import REDIS_URL, settled_listeners


@pytest.fixture(params=["memory", "redis"])
async def bus(request: pytest.FixtureRequest, redis_namespace: str) -> AsyncIterator[EventBus]:
    bus: EventBus = (
        InMemoryBus()
        if request.param == "memory"
        else RedisBus(REDIS_URL, namespace=redis_namespace)
    )
    await bus.start()
    yield bus
    await bus.close()


async def test_append_is_read_in_order_after_the_tail(bus: EventBus) -> None:
    stream = f"ex:{uuid.uuid4()}"
    await bus.append(stream, {"seq": 1})
    cursor = await bus.tail(stream)
    await bus.append(stream, {"seq": 2}, {"seq": 3})
    cursor, messages = await bus.read(stream, cursor, timeout_s=1)
    assert messages == [{"seq": 2}, {"seq": 3}]
    assert await bus.read(stream, cursor, timeout_s=0.05) == (cursor, [])


async def test_append_with_publish_reaches_subscribers_of_the_channel(bus: EventBus) -> None:
    stream = f"ex:{uuid.uuid4()}"
    async with bus.subscribe(stream) as queue:
        await bus.append(stream, {"seq": 7}, publish={"status": "succeeded"})
        assert await asyncio.wait_for(queue.get(), timeout=2) == {"status": "succeeded"}
        await bus.append(stream, {"seq": 8})  # no publish: subscribers hear nothing
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(queue.get(), timeout=0.1)
    _, messages = await bus.read(stream, "0-0" if isinstance(bus, RedisBus) else "0", 0.1)
    assert messages == [{"seq": 7}, {"seq": 8}]


async def test_redis_streams_are_capped_and_expire(redis_namespace: str) -> None:
    bus = RedisBus(REDIS_URL, namespace=redis_namespace)
    await bus.start()
    client = redis.from_url(REDIS_URL)
    try:
        stream = f"ex:{uuid.uuid4()}"
        for start in range(0, 3 * STREAM_MAXLEN, 100):
            await bus.append(stream, *({"seq": n} for n in range(start, start + 100)))
        key = f"{redis_namespace}:{stream}"
        assert STREAM_MAXLEN <= await client.xlen(key) < 2 * STREAM_MAXLEN
        assert 0 < await client.ttl(key) <= STREAM_TTL_S
    finally:
        await client.delete(f"{redis_namespace}:{stream}")
        await client.aclose()
        await bus.close()


async def test_take_is_granted_to_one_caller_per_key(bus: EventBus) -> None:
    key = f"k:{uuid.uuid4()}"
    granted = await asyncio.gather(*(bus.take(key, 5.0) for _ in range(10)))
    assert granted.count(True) == 1
    assert await bus.take(f"k:{uuid.uuid4()}", 5.0)  # another key
    short = f"k:{uuid.uuid4()}"
    assert await bus.take(short, 0.05)
    assert not await bus.take(short, 0.05)
    await asyncio.sleep(0.1)
    assert await bus.take(short, 0.05)  # expired: it can be taken again


async def test_take_is_shared_between_processes_on_redis(redis_namespace: str) -> None:
    one, other = RedisBus(REDIS_URL, redis_namespace), RedisBus(REDIS_URL, redis_namespace)
    key = f"k:{uuid.uuid4()}"
    try:
        assert await one.take(key, 5.0)
        assert not await other.take(key, 5.0)
    finally:
        await one.close()
        await other.close()


async def test_listeners_count_the_processes_subscribed_to_a_channel(
    redis_namespace: str,
) -> None:
    buses = [RedisBus(REDIS_URL, redis_namespace) for _ in range(3)]
    for bus in buses:
        await bus.start()
    try:
        assert await buses[0].listeners("wake") == 0
        async with (
            buses[0].subscribe("wake"),
            buses[1].subscribe("wake"),
            buses[1].subscribe("wake"),  # a second subscriber in one process
        ):
            assert await settled_listeners(buses[2], "wake", 2) == 2
        assert await settled_listeners(buses[2], "wake", 0) == 0
    finally:
        for bus in buses:
            await bus.close()
    assert await InMemoryBus().listeners("wake") == 1
