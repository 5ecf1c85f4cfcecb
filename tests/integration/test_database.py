"""The PostgreSQL connection pool, reads that must survive a migration on live connections,
and the plans the hot statements settle on."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_platform.domain import utcnow
from agent_platform.queue import jobs, pg_writes
from agent_platform.store import repos
from agent_platform.store.db import Database
from tests.integration.test_queue import TENANT, new_execution, step


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


async def test_a_read_connection_runs_each_statement_on_its_own(pg_database: str) -> None:
    """`connect()` opens no transaction: no BEGIN and ROLLBACK round trips around a read,
    and no snapshot held from one statement to the next."""
    db = Database(pg_database, pool_size=1)
    # how long ago this session's transaction began, as its second statement starts
    held = text(
        "SELECT extract(epoch FROM query_start - xact_start) FROM pg_stat_activity"
        " WHERE pid = pg_backend_pid()"
    )
    try:
        for _ in range(2):  # and the pooled connection comes back the same way
            async with db.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(0.1)"))
                assert (await conn.execute(held)).scalar_one() < 0.05
        async with db.begin() as conn:  # transactions are still transactions
            await conn.execute(text("SELECT pg_sleep(0.1)"))
            assert (await conn.execute(held)).scalar_one() >= 0.1
    finally:
        await db.dispose()


async def test_reading_an_execution_survives_a_migration_of_its_tables(pg_database: str) -> None:
    """A connection that has read an execution with its steps reads it again after columns
    were added to `steps` and `executions` (as a rolling deploy's migration does)."""
    db = Database(pg_database, pool_size=1)
    try:
        ex = new_execution()
        async with db.begin() as conn:
            await repos.insert_execution(conn, ex)
        async with db.begin() as conn:
            ((claimed, _),) = await jobs.claim(
                conn, worker_id="w", limit=1, lease_s=30, now=ex.created_at, is_postgres=True
            )
            await jobs.record_step(conn, claimed, step(1), now=ex.created_at)
        for migrated in (False, True):
            if migrated:
                async with db.begin() as conn:
                    await conn.execute(text("ALTER TABLE steps ADD COLUMN extra_a int"))
                    await conn.execute(text("ALTER TABLE executions ADD COLUMN extra_b int"))
            async with db.connect() as conn:
                read = await repos.get_execution(conn, TENANT, ex.id)
            assert read is not None
            assert [(s.step, s.input_tokens) for s in read.steps] == [(1, 10)]
    finally:
        await db.dispose()


async def test_a_write_cancelled_at_any_moment_leaves_the_next_one_committed(
    pg_database: str,
) -> None:
    """A worker cancels an execution's heartbeat when the execution ends, whatever the
    heartbeat is doing. Cancelled while its transaction was being begun, the pooled connection
    used to keep a half-begun transaction: every later write on it became a savepoint inside
    a transaction that never committed and kept its row locks (executions stuck `running`)."""
    db = Database(pg_database, pool_size=1)  # every write below shares one connection
    reader = Database(pg_database, pool_size=1)
    try:
        ex = new_execution()
        async with db.begin() as conn:
            await repos.insert_execution(conn, ex)
            ((claimed, _),) = await jobs.claim(
                conn, worker_id="w", limit=1, lease_s=30, now=ex.created_at, is_postgres=True
            )

        async def heartbeat(now_s: int) -> None:
            async with db.begin() as conn:
                now = ex.created_at + timedelta(seconds=now_s)
                assert await jobs.heartbeat(conn, ex.id, claimed.attempt, lease_s=30, now=now)

        for attempt in range(200):  # cancelled after 0..7 hand-backs to the event loop
            task = asyncio.create_task(heartbeat(0))
            for _ in range(attempt % 8):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await heartbeat(attempt + 1)
            async with reader.connect() as conn:
                lease_until = (
                    await conn.execute(
                        text("SELECT lease_until FROM executions WHERE id = :id"), {"id": ex.id}
                    )
                ).scalar_one()
            assert lease_until == ex.created_at + timedelta(seconds=attempt + 1 + 30), attempt
    finally:
        await db.dispose()
        await reader.dispose()


async def load_finished_history(db: Database, rows: int = 20_000) -> None:
    """A deployment's history of finished executions, vacuumed and analyzed as autovacuum
    does (while none is queued or running)."""
    async with db.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO executions (id, tenant_id, status, task, model, max_steps, "
            "request_metadata, timeout_s, max_attempts, created_at, updated_at) "
            "SELECT md5(i::text)::uuid, 'tenant-' || i % 10, 'completed', 't', 'm', 3, "
            f"'{{}}', 60, 2, now(), now() FROM generate_series(1, {rows}) i"
        )
    async with db.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.exec_driver_sql("VACUUM ANALYZE executions")
        await autocommit.exec_driver_sql("VACUUM ANALYZE steps")


async def generic_plan(conn: AsyncConnection, name: str, sql: str, params: int) -> str:
    """The plan a prepared statement settles on after its first executions (its generic
    plan, which does not depend on the parameters' values)."""
    await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
    await conn.exec_driver_sql(f"PREPARE {name} AS {sql}")
    nulls = ", ".join(["NULL"] * params)
    result = await conn.exec_driver_sql(f"EXPLAIN EXECUTE {name}({nulls})")
    return "\n".join(row[0] for row in result)


async def test_the_workers_writes_find_their_execution_by_primary_key(pg_database: str) -> None:
    """A step write and an end are fenced on `status = 'running'`. With statistics taken while
    few executions ran, PostgreSQL preferred the reaper's small index of running rows to the
    primary key, and each write scanned every running execution (and ever more of them as
    more ran). The reaper keeps its index."""
    db = Database(pg_database, pool_size=1)
    try:
        await load_finished_history(db)
        async with db.begin() as conn:
            for _ in range(5):
                await repos.insert_execution(conn, new_execution())
            await jobs.claim(
                conn, worker_id="w", limit=5, lease_s=30, now=utcnow(), is_postgres=True
            )
        async with db.connect() as conn:
            plans = {
                "write_step": await generic_plan(conn, "write_step", pg_writes.RECORD_STEP, 20),
                "finish": await generic_plan(conn, "finish", pg_writes.FINISH, 27),
            }
            reaper = await conn.exec_driver_sql(
                "EXPLAIN SELECT id FROM executions WHERE status = 'running' AND lease_until < now()"
            )
            plans["reaper"] = "\n".join(row[0] for row in reaper)
        for name in ("write_step", "finish"):
            assert "Index Scan using pk_executions on executions" in plans[name], plans[name]
            assert "ix_executions_running_lease" not in plans[name], plans[name]
        assert "ix_executions_running_lease" in plans["reaper"], plans["reaper"]
    finally:
        await db.dispose()


async def test_the_claims_prepared_plan_uses_the_queue_index(pg_database: str) -> None:
    """A prepared statement settles on a generic plan, which can use the partial index of
    queued rows only if the claim names the status in its text. As a parameter it could
    not: PostgreSQL then planned every claim anew (~0.7 ms), or settled on a scan."""
    db = Database(pg_database, pool_size=1)
    try:
        await load_finished_history(db)
        async with db.connect() as conn:
            claim = jobs._CLAIM[True].compile(dialect=conn.dialect)
            params = len(claim.positiontup or ())
            plan = await generic_plan(conn, "claim", str(claim), params)
        assert "ix_executions_queued" in plan, plan
    finally:
        await db.dispose()
