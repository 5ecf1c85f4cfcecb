"""Where a waiting execution's time goes, from timestamps already on record.

The load generator notes on the wall clock when it sent each request and when it had the
answer; the platform stores when the api stamped the row (`created_at`), when the worker
started the claim that took it (`started_at`), when each step started, and when the worker
started the end (`completed_at`). Everything runs on one machine, so one clock: the
differences split each execution's latency into consecutive stretches that add up to it,
with no instrumentation in the platform. Only executions of the steady state (sent after
every client finished its first, answered before the first client finished its last) with
the benchmark's two steps are counted.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from bench.stats import steady_window

STRETCHES: tuple[tuple[str, str], ...] = (
    ("request", "request sent until the api stamps the row (HTTP, validation)"),
    ("queued", "row stamped until the claim starts (the insert, the wake-up)"),
    ("claim", "claim until the first step starts (the claim, the agent and its sandbox)"),
    ("step1", "the first step (model call, its code in the sandbox, the step's record)"),
    ("step2", "the second step, until the end starts (model call, `final_answer`)"),
    ("end", "end started until the client has the answer (end statement, notification, response)"),
)

QUERY = """
SELECT e.id::text AS id, e.created_at, e.started_at, e.completed_at,
       s1.started_at AS step1_at, s2.started_at AS step2_at
FROM executions e
JOIN steps s1 ON s1.execution_id = e.id AND s1.attempt = 1 AND s1.step = 1
JOIN steps s2 ON s2.execution_id = e.id AND s2.attempt = 1 AND s2.step = 2
WHERE e.id = ANY($1::uuid[]) AND e.attempt = 1 AND s1.type = 'action' AND s2.type = 'action'
  AND NOT EXISTS (
    SELECT 1 FROM steps s3 WHERE s3.execution_id = e.id AND s3.step > 2 AND s3.type = 'action'
  )
"""


def split(sent: float, answered: float, row: dict[str, Any]) -> dict[str, float]:
    """One execution's stretches in ms (they add up to `answered - sent`)."""
    stamped = ("created_at", "started_at", "step1_at", "step2_at", "completed_at")
    marks = [sent, *(row[name].timestamp() for name in stamped), answered]
    out = {name: (marks[i + 1] - marks[i]) * 1000 for i, (name, _) in enumerate(STRETCHES)}
    out["total"] = (answered - sent) * 1000
    return out


def summarize(details: Sequence[dict[str, Any]], rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Mean and p50 of every stretch over the steady state's executions (all of them when
    the run had no steady state: a client that finished fewer than two)."""
    window = steady_window(_completions(details))
    by_id = {row["id"]: row for row in rows}
    splits = [
        split(d["sent_wall"], d["answered_wall"], by_id[d["execution_id"]])
        for d in details
        if d["execution_id"] in by_id
        and (window is None or (d["sent_wall"] >= window[0] and d["answered_wall"] <= window[1]))
    ]
    if not splits:
        return {"executions": 0}
    names = [name for name, _ in STRETCHES] + ["total"]
    return {
        "executions": len(splits),
        "mean_ms": {k: round(statistics.fmean(s[k] for s in splits), 2) for k in names},
        "p50_ms": {k: round(statistics.median(s[k] for s in splits), 2) for k in names},
    }


def measure(dsn: str, details: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Read the executions' timestamps from PostgreSQL and summarize them with `details`."""
    return summarize(details, asyncio.run(_fetch(dsn, [d["execution_id"] for d in details])))


async def _fetch(dsn: str, ids: list[str]) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(QUERY, ids)]
    finally:
        await conn.close()


def _completions(details: Sequence[dict[str, Any]]) -> list[list[float]]:
    by_slot: dict[int, list[float]] = {}
    for d in details:
        by_slot.setdefault(d["slot"], []).append(d["answered_wall"])
    return [sorted(times) for _, times in sorted(by_slot.items())]
