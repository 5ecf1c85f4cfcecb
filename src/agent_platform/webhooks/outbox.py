"""The webhook outbox's SQL: enqueue (inside the transaction that finishes an execution),
the dispatcher's claim / record statements, and the delivery log the API reads.

Enqueueing in the finishing transaction is what makes delivery durable: the result and its
notification commit together or not at all, and the dispatcher only ever works from rows.
See `store/webhook_tables.py` for how `next_attempt_at` leases and `attempts` fences a claim.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_platform.domain import Execution, ExecutionStatus, RunOutcome, StepRecord
from agent_platform.store.repos import as_utc
from agent_platform.store.tables import executions
from agent_platform.store.webhook_tables import webhook_attempts, webhook_deliveries

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
STEP_EVENT = "execution.step"
_d = webhook_deliveries


@dataclass(frozen=True)
class DeliveryAttempt:
    attempt: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None


@dataclass
class Delivery:
    """A delivery row with its attempt log (oldest attempt first)."""

    id: str
    tenant_id: str
    execution_id: str
    event_type: str
    url: str
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempts_log: list[DeliveryAttempt] = field(default_factory=list)


def final_event_type(status: ExecutionStatus) -> str:
    """`execution.completed`, `execution.failed`, `execution.cancelled`, `execution.timed_out`."""
    return f"execution.{status.value}"


def final_payload(execution: Execution, outcome: RunOutcome, now: datetime) -> dict[str, Any]:
    """The `data` of an execution's final event (the client's own metadata included, so a
    receiver can correlate without a lookup)."""
    return {
        "execution_id": execution.id,
        "status": outcome.status.value,
        "result": outcome.result,
        "error": outcome.error,
        "error_code": outcome.error_code,
        "stop_reason": outcome.stop_reason.value if outcome.stop_reason else None,
        "attempt": execution.attempt,
        "metadata": execution.metadata,
        "completed_at": now,
    }


def step_payload(execution: Execution, step: StepRecord) -> dict[str, Any]:
    """The `data` of an `execution.step` event: a progress signal, not the step's text (read
    the execution for that). Retries can reorder step events; `step` orders them."""
    keep = {"step": step.step, "type": step.type.value, "error": step.error}
    timing = {"started_at": step.started_at, "duration_ms": step.duration_ms}
    return {"execution_id": execution.id, "attempt": execution.attempt, **keep, **timing}


async def webhook_target(
    conn: AsyncConnection, tenant_id: str, execution_id: str, default_url: str | None
) -> tuple[str | None, bool]:
    """(URL to notify or None, whether steps are notified too) for one execution: its own
    `webhook_url`, else the tenant default."""
    row = (
        await conn.execute(
            select(executions.c.webhook_url, executions.c.webhook_steps).where(
                executions.c.id == execution_id, executions.c.tenant_id == tenant_id
            )
        )
    ).first()
    if row is None:
        return None, False
    return (row.webhook_url or default_url or None), bool(row.webhook_steps)


def _jsonable(value: Any) -> Any:
    def default(obj: Any) -> Any:
        return obj.isoformat() if isinstance(obj, datetime) else str(obj)

    return json.loads(json.dumps(value, default=default))


async def enqueue(
    conn: AsyncConnection,
    *,
    tenant_id: str,
    execution_id: str,
    url: str,
    event_type: str,
    payload: dict[str, Any],
    now: datetime,
) -> str:
    """Queue one delivery in the caller's transaction; returns its id (the `webhook-id`)."""
    delivery_id = str(uuid.uuid4())
    await conn.execute(
        _d.insert().values(
            id=delivery_id,
            tenant_id=tenant_id,
            execution_id=execution_id,
            event_type=event_type,
            url=url,
            payload=_jsonable(payload),
            status=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    return delivery_id


def _delivery(row: Any) -> Delivery:
    m = dict(row._mapping)
    del m["updated_at"]
    for key in ("next_attempt_at", "created_at", "delivered_at"):
        m[key] = as_utc(m[key])
    m["id"], m["execution_id"] = str(m["id"]), str(m["execution_id"])
    return Delivery(**m)


async def deliveries_for(
    conn: AsyncConnection, tenant_id: str, execution_id: str
) -> list[Delivery]:
    """An execution's deliveries, oldest first, each with its attempts."""
    rows = await conn.execute(
        select(_d)
        .where(_d.c.tenant_id == tenant_id, _d.c.execution_id == execution_id)
        .order_by(_d.c.created_at, _d.c.id)
    )
    found = {d.id: d for d in map(_delivery, rows)}
    if found:
        a = webhook_attempts
        attempts = await conn.execute(
            select(a).where(a.c.delivery_id.in_(list(found))).order_by(a.c.delivery_id, a.c.attempt)
        )
        for row in attempts:
            m = dict(row._mapping)
            del m["id"]
            m["started_at"] = as_utc(m["started_at"])
            found[str(m.pop("delivery_id"))].attempts_log.append(DeliveryAttempt(**m))
    return list(found.values())


# --- the dispatcher's statements


async def claim_due(
    conn: AsyncConnection,
    *,
    now: datetime,
    lease_s: float,
    limit: int,
    max_attempts: int,
    is_postgres: bool,
) -> list[Delivery]:
    """Take up to `limit` due deliveries: bump `attempts` (the fencing token) and push
    `next_attempt_at` past the lease so no one else sees them as due meanwhile.

    First fails the pending deliveries with no attempts left whose last claim lapsed (their
    dispatcher stopped before recording a result, or `webhook_max_attempts` was lowered)."""
    await conn.execute(
        update(_d)
        .where(_d.c.status == PENDING, _d.c.next_attempt_at <= now, _d.c.attempts >= max_attempts)
        .values(
            status=FAILED,
            next_attempt_at=None,
            updated_at=now,
            last_error=f"gave up: no attempts left (at most {max_attempts}); "
            "the last one was never recorded",
        )
    )
    due = and_(_d.c.status == PENDING, _d.c.next_attempt_at <= now, _d.c.attempts < max_attempts)
    picked = select(_d.c.id).where(due).order_by(_d.c.next_attempt_at).limit(limit)
    if is_postgres:
        picked = picked.with_for_update(skip_locked=True)
    rows = await conn.execute(
        update(_d)
        .where(_d.c.id.in_(picked.scalar_subquery()), due)
        .values(
            attempts=_d.c.attempts + 1,
            next_attempt_at=now + timedelta(seconds=lease_s),
            updated_at=now,
        )
        .returning(*_d.c)
    )
    return [_delivery(r) for r in rows]


async def record_attempt(
    conn: AsyncConnection,
    claimed: Delivery,
    attempt: DeliveryAttempt,
    *,
    status: str,
    next_attempt_at: datetime | None,
    now: datetime,
) -> bool:
    """Log one attempt and move the delivery to `status` (fenced by the claim's attempt
    number). False when the claim was lost; the attempt is still logged, since it happened."""
    result = await conn.execute(
        update(_d)
        .where(_d.c.id == claimed.id, _d.c.attempts == attempt.attempt, _d.c.status == PENDING)
        .values(
            status=status,
            next_attempt_at=next_attempt_at,
            last_status_code=attempt.status_code,
            last_error=attempt.error,
            delivered_at=now if status == DELIVERED else None,
            updated_at=now,
        )
    )
    applied = result.rowcount == 1
    if not applied:
        exists = await conn.execute(select(_d.c.id).where(_d.c.id == claimed.id))
        if exists.first() is None:  # the execution (and its deliveries) was deleted
            return False
    await conn.execute(webhook_attempts.insert().values(delivery_id=claimed.id, **asdict(attempt)))
    return applied
