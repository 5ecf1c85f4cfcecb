"""Shared fixtures: a fake LLM provider on loopback, real PostgreSQL databases cloned from a
migrated template, a fresh Redis namespace per test, and the app on either backend."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis
from asgi_lifespan import LifespanManager

from agent_platform.app import create_app
from agent_platform.config import Settings
from agent_platform.events import EventBus
from agent_platform.store.migrate import upgrade_sync
from tests.fakes.llm_server import FakeLLMServer

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_ADMIN_DSN = f"postgresql://postgres@{PG_HOST}:5432/postgres"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def pg_url(name: str) -> str:
    return f"postgresql+asyncpg://postgres@{PG_HOST}:5432/{name}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def admin(sql: str) -> None:
    asyncio.run(_admin(sql))


@pytest.fixture(scope="session")
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """Migrated once per session; each test clones it (CREATE DATABASE … TEMPLATE)."""
    name = f"ap_tpl_{os.getpid()}"
    admin(f"DROP DATABASE IF EXISTS {name}")
    admin(f"CREATE DATABASE {name}")
    upgrade_sync(pg_url(name))
    yield name
    admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_database(pg_template: str) -> Iterator[str]:
    name = f"ap_t_{uuid.uuid4().hex[:12]}"
    admin(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    yield pg_url(name)
    admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A fresh key prefix; what the test left under it (event streams, taken keys) goes."""
    namespace = f"t{uuid.uuid4().hex[:10]}"
    yield namespace
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


async def settled_listeners(bus: EventBus, channel: str, expected: int) -> int:
    """The count once it is `expected`, or the last one read after 5 s. (UN)SUBSCRIBE is sent
    on the subscriber's connection and counted on another: Redis may answer the count first.
    The worker only needs the count to settle; it reads it every few seconds."""
    deadline = asyncio.get_running_loop().time() + 5
    while (count := await bus.listeners(channel)) != expected:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.01)
    return count


def make_settings(llm: FakeLLMServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "anthropic_api_key": "test",
        "anthropic_base_url": llm.base_url,
        "poll_interval_s": 0.5,
        "reaper_interval_s": 0.5,
        "tenant_id": "tenant-test",
        "tenant_email": "test@example.com",
        "tenant_name": "Test User",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    """The storage a test runs against: embedded SQLite, or PostgreSQL + Redis."""
    if request.param == "sqlite":
        return {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"}
    database = request.getfixturevalue("pg_database")
    namespace = request.getfixturevalue("redis_namespace")
    return {"database_url": database, "redis_url": REDIS_URL, "redis_namespace": namespace}


@pytest.fixture
def settings(llm: FakeLLMServer, backend: dict[str, Any]) -> Settings:
    return make_settings(llm, **backend)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its worker in-process (embedded on SQLite; Redis bus on PostgreSQL)."""
    app = create_app(settings, run_worker=True, migrate_schema=True)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c
