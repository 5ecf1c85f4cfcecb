"""The queue's SQL: claim, heartbeat, fenced step/finish writes, release and the reaper.

The execution row is the job. A claim bumps `attempt`, which is the fencing token: every
later write by a worker says `WHERE id = :id AND attempt = :attempt AND status = 'running'`,
so a worker that lost its lease can never overwrite a newer attempt. Every state change
appends to the execution's event log in the same transaction (see `store/event_log.py`).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from agent_platform.domain import (
    Execution,
    ExecutionStatus,
    RunOutcome,
    StepRecord,
    StopReason,
)
from agent_platform.errors import LeaseLost
from agent_platform.store import event_log
from agent_platform.store.event_log import Event, EventType
from agent_platform.store.repos import execution_from_row
from agent_platform.store.tables import executions, steps
from agent_platform.webhooks import outbox

RUNNING = ExecutionStatus.RUNNING.value
QUEUED = ExecutionStatus.QUEUED.value


def _fenced(execution_id: str, attempt: int) -> ColumnElement[bool]:
    return and_(
        executions.c.id == execution_id,
        executions.c.attempt == attempt,
        executions.c.status == RUNNING,
    )


def _session_turn() -> ColumnElement[bool]:
    """One execution per session at a time, in submission order: a session's queued
    execution is claimable only when nothing of its session runs or was queued before it."""
    other = executions.alias("other")
    blocked = exists().where(
        other.c.session_id == executions.c.session_id,
        other.c.id != executions.c.id,
        or_(
            other.c.status == RUNNING,
            and_(other.c.status == QUEUED, other.c.created_at < executions.c.created_at),
        ),
    )
    return or_(executions.c.session_id.is_(None), ~blocked)


async def claim(
    conn: AsyncConnection,
    *,
    worker_id: str,
    limit: int,
    lease_s: float,
    now: datetime,
    is_postgres: bool,
) -> list[Execution]:
    """Atomically take up to `limit` queued executions, oldest first."""
    picked = (
        select(executions.c.id)
        .where(executions.c.status == QUEUED, _session_turn())
        .order_by(executions.c.created_at)
        .limit(limit)
    )
    if is_postgres:
        picked = picked.with_for_update(skip_locked=True)
    result = await conn.execute(
        update(executions)
        .where(executions.c.id.in_(picked.scalar_subquery()), executions.c.status == QUEUED)
        .values(
            status=RUNNING,
            attempt=executions.c.attempt + 1,
            worker_id=worker_id,
            lease_until=now + timedelta(seconds=lease_s),
            started_at=func.coalesce(executions.c.started_at, now),
            updated_at=now,
        )
        .returning(*executions.c)
    )
    claimed = [execution_from_row(r) for r in result]
    for ex in claimed:
        await event_log.append_status(
            conn, ex.id, ex.tenant_id, RUNNING, now=now, attempt=ex.attempt
        )
    return claimed


async def heartbeat(
    conn: AsyncConnection, execution_id: str, attempt: int, *, lease_s: float, now: datetime
) -> tuple[bool, bool]:
    """Extend the lease. Returns (still ours, cancel requested)."""
    row = (
        await conn.execute(
            update(executions)
            .where(_fenced(execution_id, attempt))
            .values(lease_until=now + timedelta(seconds=lease_s))
            .returning(executions.c.cancel_requested_at)
        )
    ).first()
    if row is None:
        return False, False
    return True, row[0] is not None


async def record_step(
    conn: AsyncConnection,
    execution: Execution,
    step: StepRecord,
    *,
    lease_s: float,
    now: datetime,
) -> Event | None:
    """Store one step, fenced by attempt, and count its tokens once.

    A step is written twice: `partial` when the model answers (so a crash keeps the output
    and its cost), then complete when its code has run, replacing the partial row. The
    execution row is updated first so the transaction holds its lock before touching steps
    (it doubles as a heartbeat). Returns the `step` event (none for a partial write)."""
    fenced = await conn.execute(
        update(executions)
        .where(_fenced(execution.id, execution.attempt))
        .values(lease_until=now + timedelta(seconds=lease_s), updated_at=now)
    )
    if fenced.rowcount != 1:
        raise LeaseLost(execution.id)
    values = asdict(step)
    values["type"] = step.type.value
    completed_partial = False
    if not step.partial:
        done = await conn.execute(
            update(steps)
            .where(
                steps.c.execution_id == execution.id,
                steps.c.attempt == execution.attempt,
                steps.c.step == step.step,
                steps.c.partial.is_(True),
            )
            .values(**values)
        )
        completed_partial = done.rowcount == 1
    if not completed_partial:
        await conn.execute(
            steps.insert().values(
                execution_id=execution.id,
                tenant_id=execution.tenant_id,
                attempt=execution.attempt,
                **values,
            )
        )
        await conn.execute(
            update(executions)
            .where(executions.c.id == execution.id)
            .values(
                input_tokens=executions.c.input_tokens + step.input_tokens,
                output_tokens=executions.c.output_tokens + step.output_tokens,
            )
        )
    if step.partial:
        return None
    if execution.webhook_steps and execution.webhook_url:
        await outbox.enqueue(
            conn,
            tenant_id=execution.tenant_id,
            execution_id=execution.id,
            url=execution.webhook_url,
            event_type=outbox.STEP_EVENT,
            payload=outbox.step_payload(execution, step),
            now=now,
        )
    return await event_log.append(
        conn,
        execution.id,
        execution.tenant_id,
        EventType.STEP,
        {"step": step.step, "attempt": execution.attempt},
        now=now,
    )


async def finish(
    conn: AsyncConnection, execution: Execution, outcome: RunOutcome, *, now: datetime
) -> list[Event]:
    """Write the final status and result, fenced by attempt."""
    result = await conn.execute(
        update(executions)
        .where(_fenced(execution.id, execution.attempt))
        .values(
            status=outcome.status.value,
            result=outcome.result,
            error=outcome.error,
            error_code=outcome.error_code,
            stop_reason=outcome.stop_reason.value if outcome.stop_reason else None,
            completed_at=now,
            lease_until=None,
            updated_at=now,
        )
    )
    if result.rowcount != 1:
        raise LeaseLost(execution.id)
    return await record_end(conn, execution, outcome, now=now)


async def record_end(
    conn: AsyncConnection, execution: Execution, outcome: RunOutcome, *, now: datetime
) -> list[Event]:
    """What every end of an execution writes beside its row, in the same transaction: the
    last events, and the webhook delivery (a durable outbox: it cannot be lost)."""
    appended = await event_log.append_status(
        conn, execution.id, execution.tenant_id, outcome.status.value, now=now, final=True
    )
    if execution.webhook_url:
        await outbox.enqueue(
            conn,
            tenant_id=execution.tenant_id,
            execution_id=execution.id,
            url=execution.webhook_url,
            event_type=outbox.final_event_type(outcome.status),
            payload=outbox.final_payload(execution, outcome, now),
            now=now,
        )
    return appended


async def release(conn: AsyncConnection, execution: Execution, *, now: datetime) -> bool:
    """Give the execution back to the queue (graceful drain), fenced by attempt.

    The next claim bumps `attempt` and resumes after the steps recorded so far."""
    result = await conn.execute(
        update(executions)
        .where(_fenced(execution.id, execution.attempt))
        .values(status=QUEUED, worker_id=None, lease_until=None, updated_at=now)
    )
    if result.rowcount != 1:
        return False
    await event_log.append_status(
        conn, execution.id, execution.tenant_id, QUEUED, now=now, reason="released"
    )
    return True


async def reap(conn: AsyncConnection, *, now: datetime) -> tuple[list[str], list[str]]:
    """Rescue executions whose worker stopped heartbeating.

    Returns (requeued ids, failed ids): requeued while attempts remain, else failed."""
    expired = and_(executions.c.status == RUNNING, executions.c.lease_until < now)
    lost = RunOutcome(
        status=ExecutionStatus.FAILED,
        error="the worker running this execution stopped responding and no attempts are left",
        error_code="worker_lost",
        stop_reason=StopReason.ERROR,
    )
    failed = [
        execution_from_row(row)
        for row in await conn.execute(
            update(executions)
            .where(expired, executions.c.attempt >= executions.c.max_attempts)
            .values(
                status=lost.status.value,
                error=lost.error,
                error_code=lost.error_code,
                stop_reason=StopReason.ERROR.value,
                completed_at=now,
                lease_until=None,
                updated_at=now,
            )
            .returning(*executions.c)
        )
    ]
    for execution in failed:
        await record_end(conn, execution, lost, now=now)
    requeued = (
        await conn.execute(
            update(executions)
            .where(expired, executions.c.attempt < executions.c.max_attempts)
            .values(status=QUEUED, worker_id=None, lease_until=None, updated_at=now)
            .returning(executions.c.id, executions.c.tenant_id)
        )
    ).all()
    for execution_id, tenant_id in requeued:
        await event_log.append_status(
            conn, str(execution_id), tenant_id, QUEUED, now=now, reason="worker_lost"
        )
    return [str(r[0]) for r in requeued], [ex.id for ex in failed]
