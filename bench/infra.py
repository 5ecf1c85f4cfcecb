"""The run's own PostgreSQL databases (`bench_*`) and Redis namespace, always removed after,
and what the run records of both servers (versions, the cost of a round trip).

PostgreSQL and Redis are shared with other users of the machine: the benchmark creates
uniquely named databases and a unique REDIS_NAMESPACE, and drops/deletes only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Database:
    name: str

    @property
    def url(self) -> str:
        """The platform's DATABASE_URL (SQLAlchemy + asyncpg)."""
        return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"

    @property
    def dsn(self) -> str:
        """For asyncpg directly (bulk loading)."""
        return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"


def run_id() -> str:
    return secrets.token_hex(4)


async def _connect_admin_db() -> asyncpg.Connection:
    """A connection to the server's `postgres` database (creating databases, reading facts)."""
    return await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")


async def _admin(sql: str) -> None:
    conn = await _connect_admin_db()
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def server_versions() -> dict[str, str]:
    """PostgreSQL's and Redis's versions, for the run's record."""

    async def postgres() -> str:
        conn = await _connect_admin_db()
        try:
            return str(await conn.fetchval("SHOW server_version")).split()[0]
        finally:
            await conn.close()

    client = redis.Redis.from_url(REDIS_URL)
    try:
        redis_version = str(client.info("server")["redis_version"])
    finally:
        client.close()
    return {"postgresql": asyncio.run(postgres()), "redis": redis_version}


def wake_up_costs(samples: int, idle_s: float = 0.2) -> dict[str, Any]:
    """p50 in ms of one round trip to PostgreSQL (`SELECT 1`) and to Redis (`PING`), back to
    back and after `idle_s` of idleness. On a virtual machine a process waiting on an idle
    core answers several times slower than one on a busy core, and an execution's serial
    path is about thirty such hand-offs: this says what the machine charges for each."""
    import redis.asyncio as aioredis

    async def p50(call: Callable[[], Awaitable[object]], pause: float) -> float:
        times = []
        for _ in range(samples):
            if pause:
                await asyncio.sleep(pause)
            started = time.perf_counter()
            await call()
            times.append((time.perf_counter() - started) * 1000)
        return round(sorted(times)[len(times) // 2], 3)

    async def measure() -> dict[str, dict[str, float]]:
        conn = await _connect_admin_db()
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            calls = {"postgresql": lambda: conn.fetchval("SELECT 1"), "redis": client.ping}
            out = {}
            for name, call in calls.items():
                await call()  # connected and warm
                out[name] = {"busy": await p50(call, 0.0), "after_idle": await p50(call, idle_s)}
            return out
        finally:
            await conn.close()
            await client.aclose()

    return {"idle_s": idle_s, "p50_ms": asyncio.run(measure())}


@contextlib.contextmanager
def pg_database(name: str) -> Iterator[Database]:
    """Create `name` (must start with `bench_`), drop it (forcefully) on the way out."""
    if not name.startswith("bench_") or not name.replace("_", "").isalnum():
        raise ValueError(f"refusing to manage database {name!r}")
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield Database(name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def redis_namespace(namespace: str) -> Iterator[str]:
    """A REDIS_NAMESPACE for the run; its keys (`<namespace>:*`) are deleted afterwards."""
    try:
        yield namespace
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{namespace}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.delete(*batch)
                    batch = []
            if batch:
                client.delete(*batch)
        finally:
            client.close()
