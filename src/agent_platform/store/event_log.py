"""The per-execution event log: what SSE clients replay and resume from.

Each state change appends an event in the same transaction as the change itself, numbered by
the execution's `event_seq` counter, so event ids are gap-free, ordered and durable. Step
events only reference their step; readers render it from the steps table.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_platform.domain import Execution, execution_channel
from agent_platform.events import EventBus
from agent_platform.store import fastpath
from agent_platform.store.repos import as_utc
from agent_platform.store.tables import events, executions


class EventType(StrEnum):
    EXECUTION = "execution"  # created: id and status
    STATUS = "status"  # every status transition
    STEP = "step"  # a step was recorded: {"step", "attempt"}
    DONE = "done"  # the end: readers send the whole execution


# An end's notification carries the execution up to this size (the steps' text included);
# a larger one is read back from the database by whoever waits for it.
ENDED_MAX_BYTES = 64 * 1024
_EXECUTION = TypeAdapter(Execution)


@dataclass(frozen=True)
class Event:
    seq: int
    type: EventType
    data: dict[str, Any]
    created_at: datetime


_INSERT = events.insert()
_NEXT_SEQ = (
    update(executions)
    .where(executions.c.id == bindparam("eid"))
    .values(event_seq=executions.c.event_seq + bindparam("n"))
    .returning(executions.c.event_seq)
)


async def reserve(conn: AsyncConnection, execution_id: str, count: int) -> int:
    """Take `count` event numbers; returns the last. Writers whose own UPDATE of the
    execution row already bumps `event_seq` skip this (one statement fewer)."""
    result = await fastpath.execute(conn, _NEXT_SEQ, {"eid": execution_id, "n": count})
    return int(result.scalar_one())


async def store(
    conn: AsyncConnection,
    execution_id: str,
    tenant_id: str,
    numbered: list[tuple[int, EventType, dict[str, Any]]],
    *,
    now: datetime,
) -> list[Event]:
    """Insert already-numbered events in one statement; call inside the transaction that
    made the change."""
    await fastpath.execute_many(
        conn,
        _INSERT,
        [
            {
                "execution_id": execution_id,
                "seq": seq,
                "tenant_id": tenant_id,
                "type": type_.value,
                "data": data,
                "created_at": now,
            }
            for seq, type_, data in numbered
        ],
    )
    return [Event(seq=seq, type=t, data=d, created_at=now) for seq, t, d in numbered]


def status_events(
    last_seq: int, status: str, *, final: bool, **extra: Any
) -> list[tuple[int, EventType, dict[str, Any]]]:
    """A status transition (and `done` when final), numbered to end at `last_seq`."""
    if not final:
        return [(last_seq, EventType.STATUS, {"status": status, **extra})]
    return [
        (last_seq - 1, EventType.STATUS, {"status": status, **extra}),
        (last_seq, EventType.DONE, {"status": status}),
    ]


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
    seq = await reserve(conn, execution_id, 1)
    (event,) = await store(conn, execution_id, tenant_id, [(seq, type_, data)], now=now)
    return event


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
    last = await reserve(conn, execution_id, 2 if final else 1)
    numbered = status_events(last, status, final=final, **extra)
    return await store(conn, execution_id, tenant_id, numbered, now=now)


_AFTER = (
    select(events)
    .where(
        events.c.execution_id == bindparam("eid"),
        events.c.tenant_id == bindparam("tid"),
        events.c.seq > bindparam("after"),
    )
    .order_by(events.c.seq)
)


async def after(
    conn: AsyncConnection, tenant_id: str, execution_id: str, after_seq: int
) -> list[Event]:
    """The execution's events after `after_seq`, in order. One statement (on PostgreSQL
    through `fastpath`: a reader that follows an execution runs it on every notification)."""
    params = {"eid": execution_id, "tid": tenant_id, "after": after_seq}
    rows = await fastpath.execute(conn, _AFTER, params)
    return [
        Event(
            seq=m["seq"],
            type=EventType(m["type"]),
            data=m["data"],
            created_at=as_utc(m["created_at"]),  # type: ignore[arg-type]
        )
        for m in (r._mapping for r in rows)
    ]


async def notify(
    bus: EventBus, execution_id: str, appended: list[Event], *, ended: Execution | None = None
) -> None:
    """After commit: tell live readers (SSE streams, waiting requests) what was appended.
    With `ended` (the execution as committed, steps included), the end's notification
    carries it, so that a request waiting for it can answer without reading it back."""
    if not appended:
        return
    done = next((dict(e.data) for e in appended if e.type is EventType.DONE), None)
    if done is not None and ended is not None:
        with contextlib.suppress(TypeError):  # what orjson cannot encode is read back instead
            encoded = orjson.dumps(ended, option=orjson.OPT_NON_STR_KEYS)
            if len(encoded) <= ENDED_MAX_BYTES:
                done["execution"] = orjson.Fragment(encoded)
    await bus.append(
        execution_channel(execution_id),
        *({"seq": event.seq, "type": event.type.value} for event in appended),
        publish=done,  # waiting requests learn of the end in the same round trip
    )


def ended_execution(message: dict[str, Any], tenant_id: str, execution_id: str) -> Execution | None:
    """The execution an end's notification carries (see `notify`), if it carries this
    tenant's `execution_id` in a final state; otherwise None, and the caller reads it."""
    data = message.get("execution")
    if not isinstance(data, dict):
        return None
    try:
        execution = _EXECUTION.validate_python(data)
    except ValidationError:
        return None
    if (execution.id, execution.tenant_id) != (execution_id, tenant_id):
        return None
    return execution if execution.status.is_final else None
