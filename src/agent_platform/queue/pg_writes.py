"""The worker's writes on PostgreSQL, one statement each.

`jobs.py` writes a step in one transaction of up to three statements, and ends an execution
with up to five; with BEGIN and COMMIT a 2-step execution costs the worker about 20 round
trips. Here each write is one statement whose data-modifying CTEs do the same work (the
fence, the step row, token counts, the numbered events), atomic without an explicit
transaction: 3 round trips for that execution (the claim, the first step, and the end, which
also stores the last step and the final answer; a step whose code runs long adds one for its
"model answered" record), and a fraction of the CPU on both sides. The semantics are
those of `jobs.py`, which remains the implementation on SQLite and wherever a webhook
delivery is enqueued in the same transaction; `tests/integration/test_queue.py` holds both to
the same rows and events.

Every CTE sees the same snapshot: `prior` (the step's partial row) is read before `fence`
changes anything, which is what decides whether the step's tokens were already counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.base import Executable

from agent_platform.domain import Execution, RunOutcome, StepRecord
from agent_platform.errors import LeaseLost
from agent_platform.store import event_log, fastpath
from agent_platform.store.db import json_dumps
from agent_platform.store.event_log import Event, EventType
from agent_platform.store.repos import execution_from_row

# A step's columns, in the order of `_step_args`, with their SQL types: parameters $4..$19.
_STEP_TYPED = (
    ("step", "int"), ("type", "varchar"), ("started_at", "timestamptz"), ("duration_ms", "int"),
    ("model_output", "text"), ("thought", "text"), ("code", "text"), ("observation", "text"),
    ("tool_calls", "json"), ("error", "text"), ("input_tokens", "int"), ("output_tokens", "int"),
    ("retries", "int"), ("final_answer", "text"), ("note", "text"), ("partial", "bool"),
)  # fmt: skip
_STEP_NAMES = [name for name, _ in _STEP_TYPED]
_STEP_COLUMNS = ", ".join(_STEP_NAMES)
_STEP_PARAMS = [f"${n}::{sql_type}" for n, (_, sql_type) in enumerate(_STEP_TYPED, 4)]
_STEP_VALUES = ", ".join(_STEP_PARAMS)
_STEP_SET = ", ".join(  # all but `step`, which identifies the row
    f"{name} = {param}" for name, param in zip(_STEP_NAMES[1:], _STEP_PARAMS[1:], strict=True)
)


# The CTEs that store the step ($4..$19): its partial row (`prior`) completed in place, or a
# new row; both only if `fence` (the fenced UPDATE) matched.
_STEP_ROW = f"""completed AS (
    UPDATE steps SET {_STEP_SET}
    WHERE execution_id = $1::uuid AND attempt = $2::int AND step = $4::int AND partial
      AND EXISTS (SELECT 1 FROM prior) AND EXISTS (SELECT 1 FROM fence)
), inserted AS (
    INSERT INTO steps (execution_id, tenant_id, attempt, {_STEP_COLUMNS})
    SELECT $1::uuid, fence.tenant_id, $2::int, {_STEP_VALUES}
    FROM fence WHERE NOT EXISTS (SELECT 1 FROM prior)
)"""


# $1 execution id, $2 attempt, $3 now, $4..$19 the step, $20 the step event's data (NULL for a
# partial write, which has no event). The lease is the heartbeat's business: a step write
# leaves `lease_until` alone, so it changes no indexed column and PostgreSQL can update the
# row in place (a HOT update: no new entry in any of the table's indexes).
RECORD_STEP = f"""
WITH prior AS (
    SELECT 1 FROM steps
    WHERE execution_id = $1::uuid AND attempt = $2::int AND step = $4::int AND partial
      AND NOT $19::bool
), fence AS (
    UPDATE executions SET
        updated_at = $3::timestamptz,
        input_tokens = input_tokens
            + CASE WHEN EXISTS (SELECT 1 FROM prior) THEN 0 ELSE $14::int END,
        output_tokens = output_tokens
            + CASE WHEN EXISTS (SELECT 1 FROM prior) THEN 0 ELSE $15::int END,
        event_seq = event_seq + CASE WHEN $19::bool THEN 0 ELSE 1 END
    WHERE id = $1::uuid AND attempt = $2::int AND status = 'running'
    RETURNING event_seq, tenant_id
), {_STEP_ROW}, event AS (
    INSERT INTO events (execution_id, seq, tenant_id, type, data, created_at)
    SELECT $1::uuid, fence.event_seq, fence.tenant_id, 'step', $20::json, $3::timestamptz
    FROM fence WHERE NOT $19::bool
)
SELECT event_seq FROM fence
"""

# The end of a run: its last steps ($4..$19, one array per column in _STEP_COLUMNS order; $20
# their events' data), usually the action step whose code gave the answer and the final-answer
# step, stored as RECORD_STEP stores each, then the end itself: $21 status, $22 result, $23
# error, $24 error code, $25 stop reason; events: the steps', then status ($26) and done ($27).
# It returns the execution's row as committed, which the end's notification can carry.
FINISH = f"""
WITH input AS (
    SELECT * FROM unnest({", ".join(f"{param}[]" for param in _STEP_PARAMS)},
                         $20::json[]) WITH ORDINALITY
        AS v ({_STEP_COLUMNS}, event, ord)
), prior AS (
    SELECT step FROM steps
    WHERE execution_id = $1::uuid AND attempt = $2::int AND partial
      AND step IN (SELECT step FROM input)
), counted AS (
    SELECT count(*) AS steps,
           coalesce(sum(input_tokens) FILTER (WHERE step NOT IN (SELECT step FROM prior)), 0)
               AS input_tokens,
           coalesce(sum(output_tokens) FILTER (WHERE step NOT IN (SELECT step FROM prior)), 0)
               AS output_tokens
    FROM input
), fence AS (
    UPDATE executions SET
        status = $21::varchar,
        result = $22::text,
        error = $23::text,
        error_code = $24::varchar,
        stop_reason = $25::varchar,
        completed_at = $3::timestamptz,
        lease_until = NULL,
        updated_at = $3::timestamptz,
        input_tokens = executions.input_tokens + counted.input_tokens,
        output_tokens = executions.output_tokens + counted.output_tokens,
        event_seq = event_seq + counted.steps + 2
    FROM counted
    WHERE id = $1::uuid AND attempt = $2::int AND status = 'running'
    RETURNING executions.*, counted.steps AS counted_steps
), completed AS (
    UPDATE steps SET {", ".join(f"{c} = v.{c}" for c in _STEP_NAMES[1:])}
    FROM input AS v
    WHERE steps.execution_id = $1::uuid AND steps.attempt = $2::int AND steps.step = v.step
      AND steps.partial AND v.step IN (SELECT step FROM prior) AND EXISTS (SELECT 1 FROM fence)
), inserted AS (
    INSERT INTO steps (execution_id, tenant_id, attempt, {_STEP_COLUMNS})
    SELECT $1::uuid, fence.tenant_id, $2::int, {", ".join(f"v.{c}" for c in _STEP_NAMES)}
    FROM fence, input AS v WHERE v.step NOT IN (SELECT step FROM prior)
), event AS (
    INSERT INTO events (execution_id, seq, tenant_id, type, data, created_at)
    SELECT $1::uuid, fence.event_seq - fence.counted_steps - 2 + v.ord, fence.tenant_id, 'step',
           v.event, $3::timestamptz
    FROM fence, input AS v
    UNION ALL
    SELECT $1::uuid, fence.event_seq - v.back, fence.tenant_id, v.type, v.data, $3::timestamptz
    FROM fence, (VALUES (1, 'status', $26::json), (0, 'done', $27::json)) AS v (back, type, data)
)
SELECT * FROM fence
"""


def _step_args(step: StepRecord) -> list[Any]:
    return [
        step.step, step.type.value, step.started_at, step.duration_ms, step.model_output,
        step.thought, step.code, step.observation, json_dumps(step.tool_calls), step.error,
        step.input_tokens, step.output_tokens, step.retries, step.final_answer, step.note,
        step.partial,
    ]  # fmt: skip


def _step_event(step: StepRecord, attempt: int) -> dict[str, Any]:
    return {"step": step.step, "attempt": attempt}


async def record_step(
    conn: AsyncConnection, execution: Execution, step: StepRecord, *, now: datetime
) -> Event | None:
    """`jobs.record_step` in one statement."""
    data = None if step.partial else _step_event(step, execution.attempt)
    seq = await fastpath.fetchval(
        conn,
        RECORD_STEP,
        execution.id, execution.attempt, now, *_step_args(step),
        None if data is None else json_dumps(data),
    )  # fmt: skip
    if seq is None:
        raise LeaseLost(execution.id)
    if data is None:
        return None
    return Event(seq=seq, type=EventType.STEP, data=data, created_at=now)


async def finish(
    conn: AsyncConnection, execution: Execution, outcome: RunOutcome, *,
    final_steps: Sequence[StepRecord], now: datetime,
) -> tuple[list[Event], Execution]:  # fmt: skip
    """`jobs.record_step` for each of the run's last steps, and `jobs.finish`, in one
    statement. Returns the events and the execution's row as the statement left it (its
    steps not attached)."""
    status = outcome.status.value
    (status_seq, status_type, status_data), (done_seq, done_type, done_data) = (
        event_log.status_events(0, status, final=True)
    )
    step_data = [_step_event(step, execution.attempt) for step in final_steps]
    columns = [list(column) for column in zip(*map(_step_args, final_steps), strict=True)]
    records = await fastpath.fetch(
        conn,
        FINISH,
        execution.id, execution.attempt, now,
        *(columns or [[] for _ in _STEP_TYPED]),
        [json_dumps(data) for data in step_data],
        status, outcome.result, outcome.error, outcome.error_code,
        outcome.stop_reason.value if outcome.stop_reason else None,
        json_dumps(status_data), json_dumps(done_data),
    )  # fmt: skip
    if not records:
        raise LeaseLost(execution.id)
    seq = records[0]["event_seq"]
    first = seq - len(final_steps) - 2 + 1
    out = [
        Event(seq=first + i, type=EventType.STEP, data=data, created_at=now)
        for i, data in enumerate(step_data)
    ]
    out.append(Event(seq=seq + status_seq, type=status_type, data=status_data, created_at=now))
    out.append(Event(seq=seq + done_seq, type=done_type, data=done_data, created_at=now))
    return out, execution_from_row(fastpath.Row(records[0]))


_CLAIM_SQL: dict[str, str] = {}


async def claim(
    conn: AsyncConnection, statement: Executable, params: dict[str, Any]
) -> list[tuple[Execution, list[Event]]]:
    """`jobs.claim` in one statement: the claim UPDATE (`statement`, with its `now` parameter)
    and the `running` events it owes, as a CTE."""
    compiled = fastpath.compile_statement(conn, statement, frozenset(params))
    sql = _CLAIM_SQL.get(compiled.sql)
    if sql is None:
        now = f"${compiled.names.index('now') + 1}::timestamptz"
        sql = _CLAIM_SQL[compiled.sql] = f"""
WITH claimed AS ({compiled.sql}), event AS (
    INSERT INTO events (execution_id, seq, tenant_id, type, data, created_at)
    SELECT id, event_seq, tenant_id, 'status',
           json_build_object('status', 'running', 'attempt', attempt), {now}
    FROM claimed
)
SELECT * FROM claimed ORDER BY created_at
"""
    now_value = params["now"]
    out = []
    for record in await fastpath.fetch(conn, sql, *compiled.args(params)):
        ex = execution_from_row(fastpath.Row(record))
        numbered = event_log.status_events(
            record["event_seq"], "running", final=False, attempt=ex.attempt
        )
        events = [Event(seq=q, type=t, data=d, created_at=now_value) for q, t, d in numbered]
        out.append((ex, events))
    return out
