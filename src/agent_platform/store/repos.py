"""Every SQL statement about executions and steps that the API side needs.

Queue statements (claim, heartbeat, fenced writes, reaper) live in `queue/jobs.py`.
Every read filters by `tenant_id`: another tenant's row is simply not found.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, Table, bindparam, func, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_platform.domain import Execution, ExecutionStatus, StepType, StoredStep
from agent_platform.store import fastpath
from agent_platform.store.db import json_dumps
from agent_platform.store.tables import events, executions, steps


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def execution_from_row(row: Any) -> Execution:
    m = row._mapping
    return Execution(
        id=str(m["id"]),
        tenant_id=m["tenant_id"],
        status=ExecutionStatus(m["status"]),
        task=m["task"],
        tools=m["tools"],
        model=m["model"],
        max_steps=m["max_steps"],
        metadata=m["request_metadata"] or {},
        timeout_s=m["timeout_s"],
        created_at=as_utc(m["created_at"]),  # type: ignore[arg-type]
        attempt=m["attempt"],
        max_attempts=m["max_attempts"],
        result=m["result"],
        error=m["error"],
        error_code=m["error_code"],
        stop_reason=m["stop_reason"],
        input_tokens=m["input_tokens"],
        output_tokens=m["output_tokens"],
        started_at=as_utc(m["started_at"]),
        completed_at=as_utc(m["completed_at"]),
        worker_id=m["worker_id"],
        lease_until=as_utc(m["lease_until"]),
        session_id=str(m["session_id"]) if m["session_id"] else None,
        cancel_requested_at=as_utc(m["cancel_requested_at"]),
        webhook_url=m["webhook_url"],
        webhook_steps=m["webhook_steps"],
        idempotency_key=m["idempotency_key"],
    )


def step_from_row(row: Any) -> StoredStep:
    m = row._mapping
    return StoredStep(
        step=m["step"],
        type=StepType(m["type"]),
        started_at=as_utc(m["started_at"]),  # type: ignore[arg-type]
        duration_ms=m["duration_ms"],
        model_output=m["model_output"],
        thought=m["thought"],
        code=m["code"],
        observation=m["observation"],
        tool_calls=m["tool_calls"] or [],
        error=m["error"],
        input_tokens=m["input_tokens"],
        output_tokens=m["output_tokens"],
        retries=m["retries"],
        final_answer=m["final_answer"],
        note=m["note"],
        partial=m["partial"],
        attempt=m["attempt"],
    )


def parse_id(value: str) -> str | None:
    """Canonical form of an execution id, or None when it is not a UUID (→ 404, not 500)."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        return None


_INSERT_EXECUTION = executions.insert()
_GET_EXECUTION = select(executions).where(
    executions.c.id == bindparam("eid"), executions.c.tenant_id == bindparam("tid")
)
_LIST_STEPS = (
    select(steps)
    .where(steps.c.execution_id == bindparam("eid"), steps.c.tenant_id == bindparam("tid"))
    .order_by(steps.c.attempt, steps.c.step)
)


_INSERT_EVENT = events.insert()
_CREATE_SQL: dict[str, str] = {}


async def create_execution(conn: AsyncConnection, ex: Execution, event: dict[str, Any]) -> None:
    """The row and its first event (`seq` 1, type `execution`); on PostgreSQL one statement,
    so outside a transaction it commits in one round trip."""
    row = _execution_values(ex)
    if conn.dialect.name != "postgresql":
        await conn.execute(_INSERT_EXECUTION, row)
        await conn.execute(_INSERT_EVENT, _first_event(ex, event))
        return
    compiled = fastpath.compile_statement(conn, _INSERT_EXECUTION, frozenset(row))
    sql = _CREATE_SQL.get(compiled.sql)
    if sql is None:
        n = len(compiled.names)
        sql = _CREATE_SQL[compiled.sql] = f"""
WITH created AS ({compiled.sql} RETURNING id)
INSERT INTO events (execution_id, seq, tenant_id, type, data, created_at)
SELECT id, 1, ${n + 1}::varchar, 'execution', ${n + 2}::json, ${n + 3}::timestamptz FROM created
"""
    await fastpath.fetch(
        conn, sql, *compiled.args(row), ex.tenant_id, json_dumps(event), ex.created_at
    )


def _first_event(ex: Execution, event: dict[str, Any]) -> dict[str, Any]:
    return {
        "execution_id": ex.id,
        "seq": 1,
        "tenant_id": ex.tenant_id,
        "type": "execution",
        "data": event,
        "created_at": ex.created_at,
    }


async def insert_execution(conn: AsyncConnection, ex: Execution) -> None:
    await fastpath.execute(conn, _INSERT_EXECUTION, _execution_values(ex))


def _execution_values(ex: Execution) -> dict[str, Any]:
    return dict(
        id=ex.id,
        tenant_id=ex.tenant_id,
        status=ex.status.value,
        task=ex.task,
        tools=ex.tools,
        model=ex.model,
        max_steps=ex.max_steps,
        request_metadata=ex.metadata,
        timeout_s=ex.timeout_s,
        attempt=0,
        max_attempts=ex.max_attempts,
        input_tokens=0,
        output_tokens=0,
        event_seq=1,  # the `execution` event the submitter writes beside the row
        created_at=ex.created_at,
        updated_at=ex.created_at,
        session_id=ex.session_id,
        webhook_url=ex.webhook_url,
        webhook_steps=ex.webhook_steps,
        idempotency_key=ex.idempotency_key,
    )


# The execution and its steps in one round trip: the steps as an array of anonymous rows of the
# columns named here, which asyncpg decodes by the type each value carries (the JSON column
# through the codec SQLAlchemy installed). Rows of the table's own type would be decoded by a
# description cached per connection, which a migration of `steps` would make stale.
_STEP_READ = (
    "step", "type", "started_at", "duration_ms", "model_output", "thought", "code",
    "observation", "tool_calls", "error", "input_tokens", "output_tokens", "retries",
    "final_answer", "note", "partial", "attempt",
)  # fmt: skip
_GET_EXECUTION_WITH_STEPS = f"""
SELECT e.*, ARRAY(
    SELECT ROW({", ".join(f"s.{column}" for column in _STEP_READ)}) FROM steps AS s
    WHERE s.execution_id = e.id AND s.tenant_id = e.tenant_id
    ORDER BY s.attempt, s.step
) AS stored_steps
FROM executions AS e
WHERE e.id = $1::uuid AND e.tenant_id = $2::varchar
"""


async def get_execution(
    conn: AsyncConnection, tenant_id: str, execution_id: str, *, with_steps: bool = True
) -> Execution | None:
    if with_steps and conn.dialect.name == "postgresql":
        records = await fastpath.fetch(conn, _GET_EXECUTION_WITH_STEPS, execution_id, tenant_id)
        if not records:
            return None
        ex = execution_from_row(fastpath.Row(records[0]))
        stored = [
            step_from_row(fastpath.Row(dict(zip(_STEP_READ, values, strict=True))))
            for values in records[0]["stored_steps"]
        ]
        _attach_steps(ex, stored)
        return ex
    row = (
        await fastpath.execute(conn, _GET_EXECUTION, {"eid": execution_id, "tid": tenant_id})
    ).first()
    if row is None:
        return None
    ex = execution_from_row(row)
    if with_steps and ex.attempt > 0:
        _attach_steps(ex, await list_steps(conn, tenant_id, ex.id))
    return ex


def _attach_steps(ex: Execution, stored: list[StoredStep]) -> None:
    ex.steps = effective_steps(stored)
    ex.abandoned_steps = abandoned_steps(stored, ex.attempt)


def abandoned_steps(stored: list[StoredStep], attempt: int) -> list[StoredStep]:
    """What earlier attempts left unfinished: model output of a step their worker never
    completed (the step was redone by a later attempt)."""
    return [s for s in stored if s.partial and s.attempt < attempt]


def effective_steps(stored: list[StoredStep]) -> list[StoredStep]:
    """The execution's history: for each step number, the newest attempt's version.

    A resumed attempt continues after the steps its predecessors completed, so this is
    those steps followed by its own; steps an abandoned attempt redid stay in the table."""
    latest: dict[int, StoredStep] = {}
    for step in stored:
        if step.partial:  # in flight, or left behind by a dead attempt
            continue
        kept = latest.get(step.step)
        if kept is None or step.attempt > kept.attempt:
            latest[step.step] = step
    return [latest[n] for n in sorted(latest)]


async def get_status(conn: AsyncConnection, tenant_id: str, execution_id: str) -> str | None:
    return (
        await conn.execute(
            select(executions.c.status).where(
                executions.c.id == execution_id, executions.c.tenant_id == tenant_id
            )
        )
    ).scalar_one_or_none()


async def list_steps(
    conn: AsyncConnection, tenant_id: str, execution_id: str, *, attempt: int | None = None
) -> list[StoredStep]:
    if attempt is None:
        rows = await fastpath.execute(conn, _LIST_STEPS, {"eid": execution_id, "tid": tenant_id})
        return [step_from_row(r) for r in rows]
    query = select(steps).where(
        steps.c.execution_id == execution_id,
        steps.c.tenant_id == tenant_id,
        steps.c.attempt == attempt,
    )
    rows = await conn.execute(query.order_by(steps.c.step))
    return [step_from_row(r) for r in rows]


_STEPS_IN_RANGE = select(steps).where(
    steps.c.execution_id == bindparam("eid"),
    steps.c.tenant_id == bindparam("tid"),
    steps.c.attempt.between(bindparam("a0"), bindparam("a1")),
    steps.c.step.between(bindparam("s0"), bindparam("s1")),
)


async def steps_by_key(
    conn: AsyncConnection, tenant_id: str, execution_id: str, keys: set[tuple[int, int]]
) -> dict[tuple[int, int], StoredStep]:
    """The execution's steps with these `(step, attempt)` keys: a reader that follows a long
    execution reads each new step once, not every step on every new one. One statement over
    the keys' range (new steps are consecutive), the keys picked from it."""
    if not keys:
        return {}
    attempts = [attempt for _, attempt in keys]
    numbers = [step for step, _ in keys]
    params = {
        "eid": execution_id,
        "tid": tenant_id,
        "a0": min(attempts),
        "a1": max(attempts),
        "s0": min(numbers),
        "s1": max(numbers),
    }
    found = (step_from_row(r) for r in await fastpath.execute(conn, _STEPS_IN_RANGE, params))
    return {(s.step, s.attempt): s for s in found if (s.step, s.attempt) in keys}


def newest_page(table: Table, *where: Any) -> Select[Any]:
    """`table`'s rows matching `where`, newest first (`created_at`, then `id`), one page of
    them (`limit`, `offset` parameters), each with the `total` that match; past the last page
    a single row with the total and nothing else (`id` NULL, see `page_and_total`). One
    statement: one round trip, and one snapshot (a separate count could include a row that
    changed after the page was read)."""
    total = select(func.count().label("total")).select_from(table).where(*where).cte("total")
    page = (
        select(table)
        .where(*where)
        .order_by(table.c.created_at.desc(), table.c.id.desc())
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
        .cte("page")
    )
    return (
        select(total.c.total, page)
        .select_from(total.outerjoin(page, true()))
        .order_by(page.c.created_at.desc(), page.c.id.desc())
    )


def page_and_total(rows: Any) -> tuple[list[Any], int]:
    """The page's rows and the total, from what a `newest_page` statement returned."""
    rows = list(rows)
    return [r for r in rows if r._mapping["id"] is not None], int(rows[0]._mapping["total"])


_LIST = {
    by_status: newest_page(
        executions,
        executions.c.tenant_id == bindparam("tid"),
        *([executions.c.status == bindparam("status")] if by_status else []),
    )
    for by_status in (False, True)
}


async def list_executions(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    status: ExecutionStatus | None,
    limit: int,
    offset: int,
) -> tuple[list[Execution], int]:
    params: dict[str, Any] = {"tid": tenant_id, "limit": limit, "offset": offset}
    if status is not None:
        params["status"] = status.value
    rows, total = page_and_total(await fastpath.execute(conn, _LIST[status is not None], params))
    return [execution_from_row(r) for r in rows], total


async def steps_for(conn: AsyncConnection, tenant_id: str, items: list[Execution]) -> None:
    """Attach each execution's effective steps in one query (list endpoint)."""
    wanted = {ex.id: ex for ex in items if ex.attempt > 0}
    if not wanted:
        return
    rows = await conn.execute(
        select(steps)
        .where(steps.c.tenant_id == tenant_id, steps.c.execution_id.in_(list(wanted)))
        .order_by(steps.c.execution_id, steps.c.attempt, steps.c.step)
    )
    for row in rows:
        wanted[str(row._mapping["execution_id"])].steps.append(step_from_row(row))
    for ex in wanted.values():
        ex.steps = effective_steps(ex.steps)


async def session_turns(
    conn: AsyncConnection, tenant_id: str, session_id: str, *, before: datetime, limit: int = 50
) -> list[Execution]:
    """The session's finished executions before `before`, oldest first, with their steps."""
    rows = await conn.execute(
        select(executions)
        .where(
            executions.c.tenant_id == tenant_id,
            executions.c.session_id == session_id,
            executions.c.created_at < before,
            executions.c.status.in_([s.value for s in ExecutionStatus if s.is_final]),
        )
        .order_by(executions.c.created_at.desc())
        .limit(limit)
    )
    turns = [execution_from_row(r) for r in rows][::-1]
    await steps_for(conn, tenant_id, turns)
    return turns


async def cancel_if_queued(
    conn: AsyncConnection, tenant_id: str, execution_id: str, *, now: datetime
) -> Execution | None:
    """A queued execution becomes `cancelled` at once (no worker involved)."""
    row = await conn.execute(
        update(executions)
        .where(
            executions.c.id == execution_id,
            executions.c.tenant_id == tenant_id,
            executions.c.status == ExecutionStatus.QUEUED.value,
        )
        .values(
            status=ExecutionStatus.CANCELLED.value,
            error="the execution was cancelled",
            error_code="cancelled",
            stop_reason="cancelled",
            cancel_requested_at=now,
            completed_at=now,
            updated_at=now,
        )
        .returning(*executions.c)
    )
    found = row.first()
    return execution_from_row(found) if found else None


async def request_cancel(
    conn: AsyncConnection, tenant_id: str, execution_id: str, *, now: datetime
) -> bool:
    """Flag a running execution; its worker stops it (signal first, this flag as fallback)."""
    result = await conn.execute(
        update(executions)
        .where(
            executions.c.id == execution_id,
            executions.c.tenant_id == tenant_id,
            executions.c.status == ExecutionStatus.RUNNING.value,
        )
        .values(cancel_requested_at=func.coalesce(executions.c.cancel_requested_at, now))
    )
    return result.rowcount == 1
