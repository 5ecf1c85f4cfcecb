"""The per-execution event log: what SSE clients replay and resume from.

Each state change appends an event in the same transaction as the change itself, numbered by
the execution's `event_seq` counter, so event ids are gap-free, ordered and durable. Step
events only reference their step; readers render it from the steps table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_platform.domain import execution_channel
from agent_platform.events import EventBus
from agent_platform.store.repos import as_utc
from agent_platform.store.tables import events, executions


class EventType(StrEnum):
    EXECUTION = "execution"  # created: id and status
    STATUS = "status"  # every status transition
    STEP = "step"  # a step was recorded: {"step", "attempt"}
    DONE = "done"  # the end: readers send the whole execution


@dataclass(frozen=True)
class Event:
    seq: int
    type: EventType
    data: dict[str, Any]
    created_at: datetime


async def append(
    conn: AsyncConnection,
    execution_id: str,
    tenant_id: str,
    type_: EventType,
    data: dict[str, Any],
    *,
    now: datetime,
) -> Event:
    """Number and store one event; call inside the transaction that made the change."""
    seq = (
        await conn.execute(
            update(executions)
            .where(executions.c.id == execution_id)
            .values(event_seq=executions.c.event_seq + 1)
            .returning(executions.c.event_seq)
        )
    ).scalar_one()
    await conn.execute(
        events.insert().values(
            execution_id=execution_id,
            seq=seq,
            tenant_id=tenant_id,
            type=type_.value,
            data=data,
            created_at=now,
        )
    )
    return Event(seq=seq, type=type_, data=data, created_at=now)


async def append_status(
    conn: AsyncConnection,
    execution_id: str,
    tenant_id: str,
    status: str,
    *,
    now: datetime,
    final: bool = False,
    **extra: Any,
) -> list[Event]:
    """A status transition, followed by `done` when it is the last one."""
    appended = [
        await append(
            conn, execution_id, tenant_id, EventType.STATUS, {"status": status, **extra}, now=now
        )
    ]
    if final:
        appended.append(
            await append(conn, execution_id, tenant_id, EventType.DONE, {"status": status}, now=now)
        )
    return appended


async def after(
    conn: AsyncConnection, tenant_id: str, execution_id: str, after_seq: int
) -> list[Event]:
    rows = await conn.execute(
        select(events)
        .where(
            events.c.execution_id == execution_id,
            events.c.tenant_id == tenant_id,
            events.c.seq > after_seq,
        )
        .order_by(events.c.seq)
    )
    return [
        Event(
            seq=r.seq,
            type=EventType(r.type),
            data=r.data,
            created_at=as_utc(r.created_at),  # type: ignore[arg-type]
        )
        for r in rows
    ]


async def notify(bus: EventBus, execution_id: str, appended: list[Event]) -> None:
    """After commit: tell live readers (SSE streams, waiting requests) what was appended."""
    for event in appended:
        await bus.append(
            execution_channel(execution_id), {"seq": event.seq, "type": event.type.value}
        )
        if event.type is EventType.DONE:
            await bus.publish(execution_channel(execution_id), dict(event.data))
