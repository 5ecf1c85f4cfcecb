"""The PostgreSQL connection pool: a fixed set of connections, reused under bursts."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from agent_platform.store.db import Database


async def test_a_burst_waits_for_the_pool_instead_of_opening_connections(pg_database: str) -> None:
    """Forty concurrent statements on a pool of two use the same two backends: connections
    beyond the pool would be opened and closed again, each a server process fork."""
    db = Database(pg_database, pool_size=2)
    try:

        async def backend_pid() -> int:
            async with db.connect() as conn:
                pid = (await conn.execute(text("SELECT pg_backend_pid(), pg_sleep(0.005)"))).one()
                return int(pid[0])

        pids = await asyncio.gather(*(backend_pid() for _ in range(40)))
        assert len(set(pids)) == 2
    finally:
        await db.dispose()
