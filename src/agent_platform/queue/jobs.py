"""The queue's SQL: claim, heartbeat, fenced step/finish writes, release and the reaper.

The execution row is the job. A claim bumps `attempt`, which is the fencing token: every
later write by a worker says `WHERE id = :id AND attempt = :attempt AND status = 'running'`,
so a worker that lost its lease can never overwrite a newer attempt. Every state change
appends to the execution's event log in the same transaction (see `store/event_log.py`).

The statements on the hot path (claim, step, finish) are built once, with bind parameters,
and each fenced UPDATE also numbers the events it writes: a step costs three statements. The
worker calls `claim_work`, `write_step` and `end`, which on PostgreSQL run each write as one
statement (`pg_writes.py`) and elsewhere run the functions below in a transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, exists, func, literal_column, or_, select, update
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
from agent_platform.queue import pg_writes
from agent_platform.store import event_log, fastpath
from agent_platform.store.db import Database
from agent_platform.store.event_log import Event, EventType
from agent_platform.store.repos import execution_from_row
from agent_platform.store.tables import executions, steps
from agent_platform.webhooks import outbox

RUNNING = ExecutionStatus.RUNNING.value
QUEUED = ExecutionStatus.QUEUED.value


# Every write by a worker: this execution, this attempt, still running.
_FENCE = and_(
    executions.c.id == bindparam("eid"),
    executions.c.attempt == bindparam("b_attempt"),
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


# The queue's status as SQL text, not a parameter: a prepared statement's generic plan can
# then use the partial index of queued rows. With a parameter it could not, and PostgreSQL
# planned the claim anew at every execution (~0.7 ms) rather than take a plan that scans.
_IS_QUEUED = executions.c.status == literal_column(f"'{QUEUED}'")


def _claim_statement(skip_locked: bool):  # type: ignore[no-untyped-def]
    picked = (
        select(executions.c.id)
        .where(_IS_QUEUED, _session_turn())
        .order_by(executions.c.created_at)
        .limit(bindparam("limit"))
    )
    if skip_locked:
        # PostgreSQL re-runs a locking LIMIT subquery for each row of the outer scan of a
        # semi-join, each run skipping the rows the previous ones locked: as `id IN (...)`
        # it claimed every queued execution whatever the limit. A materialized CTE runs once.
        chosen = (
            picked.with_for_update(skip_locked=True)
            .cte("picked")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        match = executions.c.id == chosen.c.id
    else:
        match = executions.c.id.in_(picked.scalar_subquery())
    return (
        update(executions)
        .where(match, executions.c.status == QUEUED)
        .values(
            status=RUNNING,
            attempt=executions.c.attempt + 1,
            worker_id=bindparam("b_worker_id"),
            lease_until=bindparam("b_lease_until"),
            started_at=func.coalesce(executions.c.started_at, bindparam("now")),
            updated_at=bindparam("now"),
            event_seq=executions.c.event_seq + 1,
        )
        .returning(*executions.c)
    )


_CLAIM = {True: _claim_statement(skip_locked=True), False: _claim_statement(skip_locked=False)}

_STEP_FENCE = (  # not the lease (the heartbeat's): no indexed column changes, a HOT update
    update(executions)
    .where(_FENCE)
    .values(
        updated_at=bindparam("now"),
        input_tokens=executions.c.input_tokens + bindparam("add_in"),
        output_tokens=executions.c.output_tokens + bindparam("add_out"),
        event_seq=executions.c.event_seq + bindparam("add_events"),
    )
    .returning(executions.c.event_seq)
)
_STEP_INSERT = steps.insert()
_STEP_COLUMNS = tuple(name for name in StepRecord.__dataclass_fields__ if name in steps.c)
_STEP_FIELDS = [name for name in _STEP_COLUMNS if name != "step"]
_STEP_COMPLETE = (
    update(steps)
    .where(
        steps.c.execution_id == bindparam("eid"),
        steps.c.attempt == bindparam("step_attempt"),
        steps.c.step == bindparam("step_number"),
        steps.c.partial.is_(True),
    )
    .values({name: bindparam(f"v_{name}") for name in _STEP_FIELDS})
)
_HEARTBEAT = (
    update(executions)
    .where(_FENCE)
    .values(lease_until=bindparam("b_lease_until"))
    .returning(executions.c.cancel_requested_at)
)
_RELEASE = (
    update(executions)
    .where(_FENCE)
    .values(status=QUEUED, worker_id=None, lease_until=None, updated_at=bindparam("now"))
)
_FINISH = (
    update(executions)
    .where(_FENCE)
    .values(
        status=bindparam("b_status"),
        result=bindparam("b_result"),
        error=bindparam("b_error"),
        error_code=bindparam("b_error_code"),
        stop_reason=bindparam("b_stop_reason"),
        completed_at=bindparam("now"),
        lease_until=None,
        updated_at=bindparam("now"),
        event_seq=executions.c.event_seq + 2,
    )
    .returning(executions.c.event_seq)
)


async def claim(
    conn: AsyncConnection,
    *,
    worker_id: str,
    limit: int,
    lease_s: float,
    now: datetime,
    is_postgres: bool,
) -> list[tuple[Execution, list[Event]]]:
    """Atomically take up to `limit` queued executions, oldest first; each with the `running`
    event written beside it (to announce once committed)."""
    result = await fastpath.execute(
        conn,
        _CLAIM[is_postgres],
        {
            "limit": limit,
            "b_worker_id": worker_id,
            "b_lease_until": now + timedelta(seconds=lease_s),
            "now": now,
        },
    )
    claimed = []
    for row in result:
        ex = execution_from_row(row)
        numbered = event_log.status_events(
            row._mapping["event_seq"], RUNNING, final=False, attempt=ex.attempt
        )
        claimed.append((ex, await event_log.store(conn, ex.id, ex.tenant_id, numbered, now=now)))
    return claimed


async def heartbeat(
    conn: AsyncConnection, execution_id: str, attempt: int, *, lease_s: float, now: datetime
) -> tuple[bool, bool]:
    """Extend the lease. Returns (still ours, cancel requested)."""
    row = (
        await fastpath.execute(
            conn,
            _HEARTBEAT,
            {
                "eid": execution_id,
                "b_attempt": attempt,
                "b_lease_until": now + timedelta(seconds=lease_s),
            },
        )
    ).first()
    if row is None:
        return False, False
    return True, row[0] is not None


async def record_step(
    conn: AsyncConnection, execution: Execution, step: StepRecord, *, now: datetime
) -> Event | None:
    """Store one step, fenced by attempt, and count its tokens once.

    A step is written twice: `partial` when the model answers (so a crash keeps the output
    and its cost), then complete when its code has run, replacing the partial row. Returns
    the `step` event (none for a partial write)."""
    values = {name: getattr(step, name) for name in _STEP_COLUMNS}  # shallow: no deep copy
    values["type"] = step.type.value
    completed_partial = False
    if not step.partial:
        done = await fastpath.execute(
            conn,
            _STEP_COMPLETE,
            {
                "eid": execution.id,
                "step_attempt": execution.attempt,
                "step_number": step.step,
                **{f"v_{k}": v for k, v in values.items() if k != "step"},
            },
        )
        completed_partial = done.rowcount == 1  # its tokens were counted when it was partial
    seq = (
        await fastpath.execute(
            conn,
            _STEP_FENCE,
            {
                "eid": execution.id,
                "b_attempt": execution.attempt,
                "now": now,
                "add_in": 0 if completed_partial else step.input_tokens,
                "add_out": 0 if completed_partial else step.output_tokens,
                "add_events": 0 if step.partial else 1,
            },
        )
    ).scalar_one_or_none()
    if seq is None:
        raise LeaseLost(execution.id)
    if not completed_partial:
        await fastpath.execute(
            conn,
            _STEP_INSERT,
            {
                "execution_id": execution.id,
                "tenant_id": execution.tenant_id,
                "attempt": execution.attempt,
                **values,
            },
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
    (event,) = await event_log.store(
        conn,
        execution.id,
        execution.tenant_id,
        [(seq, EventType.STEP, {"step": step.step, "attempt": execution.attempt})],
        now=now,
    )
    return event


async def finish(
    conn: AsyncConnection, execution: Execution, outcome: RunOutcome, *, now: datetime
) -> list[Event]:
    """Write the final status and result, fenced by attempt."""
    seq = (
        await fastpath.execute(
            conn,
            _FINISH,
            {
                "eid": execution.id,
                "b_attempt": execution.attempt,
                "b_status": outcome.status.value,
                "b_result": outcome.result,
                "b_error": outcome.error,
                "b_error_code": outcome.error_code,
                "b_stop_reason": outcome.stop_reason.value if outcome.stop_reason else None,
                "now": now,
            },
        )
    ).scalar_one_or_none()
    if seq is None:
        raise LeaseLost(execution.id)
    return await record_end(conn, execution, outcome, now=now, last_seq=seq)


async def record_end(
    conn: AsyncConnection,
    execution: Execution,
    outcome: RunOutcome,
    *,
    now: datetime,
    last_seq: int | None = None,
) -> list[Event]:
    """What every end of an execution writes beside its row, in the same transaction: the
    last events, and the webhook delivery (a durable outbox: it cannot be lost).
    `last_seq`: the two event numbers were already taken by the caller's UPDATE."""
    if last_seq is None:
        last_seq = await event_log.reserve(conn, execution.id, 2)
    numbered = event_log.status_events(last_seq, outcome.status.value, final=True)
    appended = await event_log.store(conn, execution.id, execution.tenant_id, numbered, now=now)
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
    result = await fastpath.execute(
        conn, _RELEASE, {"eid": execution.id, "b_attempt": execution.attempt, "now": now}
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


# -- the worker's entry points: one statement each on PostgreSQL ----------------------------


async def claim_work(
    db: Database, *, worker_id: str, limit: int, lease_s: float, now: datetime
) -> list[tuple[Execution, list[Event]]]:
    """`claim`, committed."""
    if db.is_sqlite:
        async with db.begin() as conn:
            return await claim(
                conn, worker_id=worker_id, limit=limit, lease_s=lease_s, now=now, is_postgres=False
            )
    params = {
        "limit": limit,
        "b_worker_id": worker_id,
        "b_lease_until": now + timedelta(seconds=lease_s),
        "now": now,
    }
    async with db.connect() as conn:
        return await pg_writes.claim(conn, _CLAIM[True], params)


async def write_step(
    db: Database, execution: Execution, step: StepRecord, *, now: datetime
) -> Event | None:
    """`record_step`, committed."""
    if db.is_sqlite or (execution.webhook_steps and execution.webhook_url):
        async with db.begin() as conn:
            return await record_step(conn, execution, step, now=now)
    async with db.connect() as conn:
        return await pg_writes.record_step(conn, execution, step, now=now)


@dataclass(frozen=True)
class Ended:
    """What ending an execution wrote: its events and, where one statement did it all and
    returned it, the execution's row as committed (its steps not attached)."""

    events: list[Event]
    row: Execution | None = None


async def end(
    db: Database,
    execution: Execution,
    outcome: RunOutcome,
    *,
    final_steps: Sequence[StepRecord] = (),
    now: datetime,
) -> Ended:
    """The run's last steps (the one whose code gave the answer, the final answer) and
    `finish`, committed together: they are written an instant apart."""
    if db.is_sqlite or execution.webhook_url:
        async with db.begin() as conn:
            events: list[Event] = []
            for step in final_steps:
                event = await record_step(conn, execution, step, now=now)
                events.extend([event] if event else [])
            events.extend(await finish(conn, execution, outcome, now=now))
            return Ended(events)
    async with db.connect() as conn:
        events, row = await pg_writes.finish(
            conn, execution, outcome, final_steps=final_steps, now=now
        )
    return Ended(events, row)
