"""Data-scale scenario: the read path with a large `executions` table.

Rows are generated inside PostgreSQL (`INSERT ... SELECT generate_series`), which loads a
million executions in about 20 seconds, where going through the API would take hours. Each
execution looks like a real run of the fake provider's default script: `completed`, 3 steps
(two `action` steps and the `final_answer` step) with the same texts and token counts. The
event log is not loaded: neither read measured here touches it.

Secondary indexes and non-primary-key constraints are dropped for the load and recreated from
their own definitions afterwards (one sort per index instead of 3 million random B-tree
inserts), then `VACUUM ANALYZE` sets the visibility map and statistics as autovacuum would on
a live system, and a `CHECKPOINT` writes the 1.3 GB out before the measurement starts.
Ids are `md5('bench-' || i)::uuid` so the client can compute which ids exist.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from typing import Any

import asyncpg

TENANTS = 100
SERVED_TENANT = 42  # the api under test serves this tenant (TENANT_ID, instance mode)
STEPS_PER_EXECUTION = 3
CHUNK = 250_000


def tenant_name(index: int) -> str:
    return f"tenant-{index:03d}"


def execution_id(i: int) -> str:
    """The id row `i` gets in PostgreSQL: `md5('bench-' || i)::uuid`."""
    return str(uuid.UUID(hashlib.md5(f"bench-{i}".encode()).hexdigest()))


EXECUTION_COLUMNS = {
    "id": "md5('bench-' || i)::uuid",
    "tenant_id": f"'tenant-' || lpad((i % {TENANTS})::text, 3, '0')",
    "status": "'completed'",
    "task": "'What is 2 + 2? Just give me the number. #' || i",
    "tools": "'[]'::json",
    "model": "'claude-sonnet-5-5'",
    "max_steps": "10",
    "request_metadata": """'{"source": "bench"}'::json""",
    "timeout_s": "300",
    "result": "'4'",
    "stop_reason": "'final_answer'",
    "attempt": "1",
    "max_attempts": "4",
    "worker_id": "'bench-loader'",
    "input_tokens": "4760",
    "output_tokens": "33",
    "created_at": "ts",
    "started_at": "ts + interval '8 ms'",
    "completed_at": "ts + interval '77 ms'",
    "updated_at": "ts + interval '77 ms'",
    "event_seq": "8",
    "webhook_steps": "false",
}

_MODEL_OUTPUT = (
    "CASE s WHEN 1 THEN E'Thought: I will compute it.\\n<code>\\nresult = 2 + 2\\n"
    "print(result)\\n</code>' WHEN 2 THEN E'Thought: I have the answer.\\n<code>\\n"
    "final_answer(str(result))\\n</code>' END"
)
STEP_COLUMNS = {
    "execution_id": "md5('bench-' || i)::uuid",
    "tenant_id": f"'tenant-' || lpad((i % {TENANTS})::text, 3, '0')",
    "attempt": "1",
    "step": "s",
    "type": "CASE s WHEN 3 THEN 'final_answer' ELSE 'action' END",
    "model_output": _MODEL_OUTPUT,
    "thought": "CASE s WHEN 1 THEN 'I will compute it.' WHEN 2 THEN 'I have the answer.' END",
    "code": (
        "CASE s WHEN 1 THEN E'result = 2 + 2\\nprint(result)' "
        "WHEN 2 THEN 'final_answer(str(result))' END"
    ),
    "observation": (
        "CASE s WHEN 1 THEN E'Execution logs:\\n4\\nLast output from code snippet:\\nNone' "
        "WHEN 2 THEN E'Execution logs:\\nLast output from code snippet:\\n4' ELSE '4' END"
    ),
    "tool_calls": "'[]'::json",
    "final_answer": "CASE s WHEN 3 THEN '4' END",
    "input_tokens": "CASE s WHEN 1 THEN 2345 WHEN 2 THEN 2415 ELSE 0 END",
    "output_tokens": "CASE s WHEN 1 THEN 17 WHEN 2 THEN 16 ELSE 0 END",
    "retries": "0",
    "started_at": "ts + s * interval '20 ms'",
    "duration_ms": "CASE s WHEN 1 THEN 18 WHEN 2 THEN 2 ELSE 0 END",
}


async def _check_columns(conn: asyncpg.Connection, table: str, given: dict[str, str]) -> None:
    """Fail clearly if the schema gained a required column this loader does not fill."""
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1 "
        "AND is_nullable = 'NO' AND column_default IS NULL",
        table,
    )
    missing = sorted({r["column_name"] for r in rows} - set(given))
    if missing:
        raise RuntimeError(f"bench/datascale.py: {table} has new required columns {missing}")


async def _detach(conn: asyncpg.Connection, table: str) -> list[str]:
    """Drop `table`'s secondary indexes and non-PK constraints; return SQL that recreates
    them (indexes first, then constraints, which may use them)."""
    constraints = await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
        "WHERE conrelid = $1::regclass AND contype IN ('u', 'f')",
        table,
    )
    indexes = await conn.fetch(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = $1 "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
        table,
    )
    for c in constraints:
        await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{c["conname"]}"')
    for i in indexes:
        await conn.execute(f'DROP INDEX "{i["indexname"]}"')
    recreate = [i["indexdef"] for i in indexes]
    for c in constraints:
        recreate.append(f'ALTER TABLE {table} ADD CONSTRAINT "{c["conname"]}" {c["def"]}')
    return recreate


async def bulk_load(dsn: str, rows: int) -> dict[str, Any]:
    """Load `rows` executions (and 3 steps each) across TENANTS tenants; returns timings."""
    conn = await asyncpg.connect(dsn)
    timings: dict[str, Any] = {"rows": rows, "tenants": TENANTS}
    try:
        await _check_columns(conn, "executions", EXECUTION_COLUMNS)
        await _check_columns(conn, "steps", STEP_COLUMNS)
        t = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '256MB'")
        recreate = await _detach(conn, "executions") + await _detach(conn, "steps")
        ex_cols = ", ".join(EXECUTION_COLUMNS)
        ex_vals = ", ".join(EXECUTION_COLUMNS.values())
        st_cols = ", ".join(STEP_COLUMNS)
        st_vals = ", ".join(STEP_COLUMNS.values())
        base = "timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second'"
        for lo in range(1, rows + 1, CHUNK):  # bounded: rows / CHUNK statements per table
            hi = min(rows, lo + CHUNK - 1)
            await conn.execute(
                f"INSERT INTO executions ({ex_cols}) SELECT {ex_vals} FROM "
                f"(SELECT i, {base} AS ts FROM generate_series({lo}, {hi}) i) g"
            )
            await conn.execute(
                f"INSERT INTO steps ({st_cols}) SELECT {st_vals} FROM "
                f"(SELECT i, {base} AS ts FROM generate_series({lo}, {hi}) i) g, "
                f"generate_series(1, {STEPS_PER_EXECUTION}) s"
            )
        timings["insert_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        for sql in recreate:  # the steps' foreign key needs only the (kept) primary key
            await conn.execute(sql)
        timings["index_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        await conn.execute("VACUUM ANALYZE executions")
        await conn.execute("VACUUM ANALYZE steps")
        await conn.execute("CHECKPOINT")  # write the load out now, not during the measurement
        timings["vacuum_analyze_s"] = round(time.perf_counter() - t, 1)
        size = await conn.fetchval(
            "SELECT pg_total_relation_size('executions') + pg_total_relation_size('steps')"
        )
        timings["size_mb"] = round(size / 2**20)
        timings["steps_rows"] = await conn.fetchval("SELECT count(*) FROM steps")
    finally:
        await conn.close()
    return timings


def request_paths(rows: int, sample: int, seed: int = 7) -> list[tuple[str, str]]:
    """Alternating `GET /execution/{id}` (a random execution of the served tenant) and
    `GET /executions?limit=50` (its newest page, with the total count)."""
    rng = random.Random(seed)
    own = range(SERVED_TENANT, rows + 1, TENANTS)  # i % TENANTS == SERVED_TENANT
    paths: list[tuple[str, str]] = []
    for _ in range(sample):
        paths.append(("get_execution", f"/api/v1/agent/execution/{execution_id(rng.choice(own))}"))
        paths.append(("list_executions", "/api/v1/agent/executions?limit=50"))
    return paths
