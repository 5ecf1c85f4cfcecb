"""The queue's guarantees at the SQL level, on PostgreSQL and SQLite: atomic claims, fencing
of stale workers, the reaper's requeue and its final failure."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from agent_platform.domain import (
    Execution,
    ExecutionStatus,
    RunOutcome,
    StepRecord,
    StepType,
    StopReason,
    utcnow,
)
from agent_platform.errors import LeaseLost
from agent_platform.queue import jobs
from agent_platform.store import event_log, migrate, repos
from agent_platform.store.db import Database
from agent_platform.store.event_log import EventType

TENANT = "tenant-q"


@pytest.fixture
async def db(backend: dict[str, Any]) -> AsyncIterator[Database]:
    database = Database(backend["database_url"])
    await migrate.upgrade(database)
    yield database
    await database.dispose()


def new_execution(max_attempts: int = 2) -> Execution:
    return Execution(
        id=str(uuid.uuid4()),
        tenant_id=TENANT,
        status=ExecutionStatus.QUEUED,
        task="t",
        tools=[],
        model="m",
        max_steps=3,
        metadata={},
        created_at=utcnow(),
        max_attempts=max_attempts,
    )


def step(n: int) -> StepRecord:
    return StepRecord(
        step=n, type=StepType.ACTION, started_at=utcnow(), duration_ms=1, input_tokens=10
    )


async def claim(db: Database, worker: str, limit: int = 1) -> list[Execution]:
    async with db.begin() as conn:
        claimed = await jobs.claim(
            conn,
            worker_id=worker,
            limit=limit,
            lease_s=30,
            now=utcnow(),
            is_postgres=not db.is_sqlite,
        )
    for ex, events in claimed:  # each claim announces `running` with the event it wrote
        assert [(e.type, e.data["status"], e.data["attempt"]) for e in events] == [
            (EventType.STATUS, "running", ex.attempt)
        ]
    return [ex for ex, _ in claimed]


async def expire_and_reap(db: Database) -> tuple[list[str], list[str]]:
    async with db.begin() as conn:
        return await jobs.reap(conn, now=utcnow() + timedelta(seconds=60))


async def test_stale_worker_is_fenced_out(db: Database) -> None:
    ex = new_execution()
    async with db.begin() as conn:
        await repos.insert_execution(conn, ex)
    (a,) = await claim(db, "worker-a")
    async with db.begin() as conn:
        await jobs.record_step(conn, a, step(1), now=utcnow())
    requeued, failed = await expire_and_reap(db)  # worker A looks dead
    assert requeued == [ex.id] and failed == []
    (b,) = await claim(db, "worker-b")
    assert (a.attempt, b.attempt) == (1, 2)
    # A wakes up and tries to write: every write is rejected
    with pytest.raises(LeaseLost):
        async with db.begin() as conn:
            await jobs.record_step(conn, a, step(2), now=utcnow())
    with pytest.raises(LeaseLost):
        async with db.begin() as conn:
            await jobs.finish(
                conn, a, RunOutcome(ExecutionStatus.COMPLETED, result="stale"), now=utcnow()
            )
    async with db.begin() as conn:
        assert await jobs.heartbeat(conn, a.id, a.attempt, lease_s=30, now=utcnow()) == (
            False,
            False,
        )
        await jobs.record_step(conn, b, step(1), now=utcnow())
        await jobs.finish(
            conn, b, RunOutcome(ExecutionStatus.COMPLETED, result="fresh"), now=utcnow()
        )
    async with db.connect() as conn:
        final = await repos.get_execution(conn, TENANT, ex.id)
        all_steps = await repos.list_steps(conn, TENANT, ex.id)
    assert final is not None
    assert final.status is ExecutionStatus.COMPLETED and final.result == "fresh"
    assert [(s.attempt, s.step) for s in final.steps] == [(2, 1)]
    assert [(s.attempt, s.step) for s in all_steps] == [(1, 1), (2, 1)]  # the dead attempt is kept
    assert final.input_tokens == 20


async def test_steps_by_key_reads_those_steps_of_that_tenant_and_no_others(db: Database) -> None:
    """What a stream reader reads per wake-up: the steps its new events name (here across two
    attempts), nothing else, and nothing of another tenant's."""
    ex = new_execution()
    async with db.begin() as conn:
        await repos.insert_execution(conn, ex)
    (a,) = await claim(db, "worker-a")
    async with db.begin() as conn:
        for n in (1, 2, 3):
            await jobs.record_step(conn, a, step(n), now=utcnow())
    await expire_and_reap(db)
    (b,) = await claim(db, "worker-b")
    async with db.begin() as conn:
        await jobs.record_step(conn, b, step(3), now=utcnow())
    wanted = {(2, 1), (3, 2), (7, 1)}  # (step, attempt); step 7 does not exist
    async with db.connect() as conn:
        found = await repos.steps_by_key(conn, TENANT, ex.id, wanted)
        foreign = await repos.steps_by_key(conn, "someone-else", ex.id, wanted)
        none = await repos.steps_by_key(conn, TENANT, ex.id, set())
    assert {key: (s.step, s.attempt) for key, s in found.items()} == {
        (2, 1): (2, 1),
        (3, 2): (3, 2),
    }
    assert foreign == {} and none == {}


async def test_reaper_fails_after_max_attempts(db: Database) -> None:
    ex = new_execution(max_attempts=1)
    async with db.begin() as conn:
        await repos.insert_execution(conn, ex)
    await claim(db, "worker-a")
    requeued, failed = await expire_and_reap(db)
    assert requeued == [] and failed == [ex.id]
    async with db.connect() as conn:
        final = await repos.get_execution(conn, TENANT, ex.id)
    assert final is not None and final.status is ExecutionStatus.FAILED
    assert final.error_code == "worker_lost" and "no attempts are left" in (final.error or "")


async def test_concurrent_claims_take_each_execution_once(db: Database) -> None:
    ids = []
    async with db.begin() as conn:
        for _ in range(40):
            ex = new_execution()
            ids.append(ex.id)
            await repos.insert_execution(conn, ex)
    results = await asyncio.gather(*(claim(db, f"w{i}", limit=3) for i in range(20)))
    claimed = [ex.id for batch in results for ex in batch]
    while more := await claim(db, "late", limit=10):
        claimed += [ex.id for ex in more]
    assert sorted(claimed) == sorted(ids)  # every one, none twice


async def test_a_claim_never_takes_more_than_its_limit(db: Database) -> None:
    """A worker claims only what it has slots for, in both the transactional claim and the
    worker's one-statement one (on PostgreSQL a locking LIMIT subquery under `IN` used to
    be re-run per row and took the whole queue)."""
    async with db.begin() as conn:
        queued = [new_execution() for _ in range(5)]
        for ex in queued:
            await repos.insert_execution(conn, ex)
    assert len(await claim(db, "w1", limit=1)) == 1
    taken = await jobs.claim_work(db, worker_id="w2", limit=2, lease_s=30, now=utcnow())
    assert len(taken) == 2
    assert len(await claim(db, "w3", limit=5)) == 2  # what is left


async def test_tenant_filter_hides_other_tenants(db: Database) -> None:
    ex = new_execution()
    async with db.begin() as conn:
        await repos.insert_execution(conn, ex)
    async with db.connect() as conn:
        assert await repos.get_execution(conn, "someone-else", ex.id) is None
        assert (await repos.list_executions(conn, "someone-else", status=None, limit=10, offset=0))[
            1
        ] == 0


async def _run_through(db: Database, execution: Execution, *, one_statement: bool) -> None:
    """A 2-step execution written as the worker writes it: `claim_work`, `write_step`, `end`
    (one statement each on PostgreSQL), or the transactional functions they stand for."""
    now = utcnow()
    partial = StepRecord(
        step=1, type=StepType.ACTION, started_at=now, duration_ms=0, model_output="m1",
        input_tokens=10, output_tokens=5, partial=True,
    )  # fmt: skip
    done = StepRecord(
        step=1, type=StepType.ACTION, started_at=now, duration_ms=7, model_output="m1",
        code="x = 1", observation="ok", tool_calls=[{"name": "t", "arguments": {"a": 1}}],
        input_tokens=10, output_tokens=5,
    )  # fmt: skip
    second = StepRecord(
        step=2, type=StepType.ACTION, started_at=now, duration_ms=0, model_output="m2",
        input_tokens=20, output_tokens=6, partial=True,
    )  # fmt: skip
    answered = StepRecord(
        step=2, type=StepType.ACTION, started_at=now, duration_ms=3, model_output="m2",
        code="final_answer(42)", observation="42", input_tokens=20, output_tokens=6,
        ends_run=True,
    )  # fmt: skip
    final = StepRecord(
        step=3, type=StepType.FINAL_ANSWER, started_at=now, duration_ms=0, final_answer="42"
    )
    outcome = RunOutcome(
        ExecutionStatus.COMPLETED, result="42", stop_reason=StopReason.FINAL_ANSWER
    )
    if one_statement:
        ((claimed, claim_events),) = await jobs.claim_work(
            db, worker_id="w", limit=1, lease_s=30, now=now
        )
        for record in (partial, done, second):
            await jobs.write_step(db, claimed, record, now=now)
        finished = await jobs.end(db, claimed, outcome, final_steps=[answered, final], now=now)
        ended = finished.events
        assert (finished.row is None) == db.is_sqlite  # PostgreSQL's one statement returns it
        if finished.row is not None:  # as committed: the same as reading it back
            async with db.connect() as conn:
                read = await repos.get_execution(conn, TENANT, claimed.id, with_steps=False)
            assert finished.row == read and finished.row.completed_at == now
    else:
        async with db.begin() as conn:
            ((claimed, claim_events),) = await jobs.claim(
                conn, worker_id="w", limit=1, lease_s=30, now=now, is_postgres=not db.is_sqlite
            )
        for record in (partial, done, second):
            async with db.begin() as conn:
                await jobs.record_step(conn, claimed, record, now=now)
        async with db.begin() as conn:
            ended = [await jobs.record_step(conn, claimed, answered, now=now)]
            ended.append(await jobs.record_step(conn, claimed, final, now=now))
            ended += await jobs.finish(conn, claimed, outcome, now=now)
    assert claimed.id == execution.id
    assert [(e.seq, e.type, e.data) for e in claim_events] == [
        (2, EventType.STATUS, {"status": "running", "attempt": 1})
    ]
    assert [(e.seq, e.type, e.data) for e in ended if e is not None] == [
        (4, EventType.STEP, {"step": 2, "attempt": 1}),
        (5, EventType.STEP, {"step": 3, "attempt": 1}),
        (6, EventType.STATUS, {"status": "completed"}),
        (7, EventType.DONE, {"status": "completed"}),
    ]


async def _stored(db: Database, execution_id: str) -> tuple[Any, ...]:
    async with db.connect() as conn:
        ex = await repos.get_execution(conn, TENANT, execution_id)
        steps = await repos.list_steps(conn, TENANT, execution_id)
        events = await event_log.after(conn, TENANT, execution_id, 0)
    assert ex is not None
    return (
        (ex.status, ex.result, ex.stop_reason, ex.input_tokens, ex.output_tokens, ex.attempt),
        [
            (
                s.attempt,
                s.step,
                s.type,
                s.partial,
                s.model_output,
                s.code,
                s.observation,
                s.tool_calls,
                s.final_answer,
                s.input_tokens,
                s.output_tokens,
                s.duration_ms,
            )
            for s in steps
        ],
        [(e.seq, e.type, e.data) for e in events],
    )


async def test_worker_writes_match_the_transactional_ones(db: Database) -> None:
    """The worker's one-statement writes leave exactly what the reference functions leave:
    the partial row completed in place, tokens counted once, events numbered without gaps."""
    results = []
    for one_statement in (False, True):
        ex = new_execution()
        async with db.begin() as conn:
            await repos.insert_execution(conn, ex)
            await event_log.store(
                conn, ex.id, TENANT, [(1, EventType.EXECUTION, {"status": "queued"})], now=utcnow()
            )
        await _run_through(db, ex, one_statement=one_statement)
        results.append(await _stored(db, ex.id))
    reference, fast = results
    assert fast == reference
    row, steps, events = fast
    assert row == (ExecutionStatus.COMPLETED, "42", "final_answer", 30, 11, 1)
    assert [(s[1], s[3], s[6]) for s in steps] == [
        (1, False, "ok"),
        (2, False, "42"),
        (3, False, None),
    ]
    assert [seq for seq, _, _ in events] == [1, 2, 3, 4, 5, 6, 7]


async def test_worker_writes_are_fenced(db: Database) -> None:
    ex = new_execution()
    async with db.begin() as conn:
        await repos.insert_execution(conn, ex)
    ((a, _),) = await jobs.claim_work(db, worker_id="a", limit=1, lease_s=30, now=utcnow())
    await expire_and_reap(db)
    ((b, _),) = await jobs.claim_work(db, worker_id="b", limit=1, lease_s=30, now=utcnow())
    assert (a.attempt, b.attempt) == (1, 2)
    with pytest.raises(LeaseLost):
        await jobs.write_step(db, a, step(1), now=utcnow())
    with pytest.raises(LeaseLost):
        await jobs.end(
            db, a, RunOutcome(ExecutionStatus.COMPLETED, result="stale"), final_steps=(),
            now=utcnow(),
        )  # fmt: skip
    await jobs.write_step(db, b, step(1), now=utcnow())
    await jobs.end(
        db, b, RunOutcome(ExecutionStatus.COMPLETED, result="fresh"), final_steps=(),
        now=utcnow(),
    )  # fmt: skip
    row, steps, _ = await _stored(db, ex.id)
    assert row[:2] == (ExecutionStatus.COMPLETED, "fresh")
    assert [(s[0], s[1]) for s in steps] == [(2, 1)]


async def test_sqlite_writers_take_turns_in_order(db: Database) -> None:
    """On SQLite a process's write transactions run one at a time, in the order they asked
    (a writer polling for SQLite's lock could otherwise wait for a second while later ones
    got in); on PostgreSQL they run side by side."""
    entered: list[int] = []
    open_now = peak = 0

    async def write(k: int) -> None:
        nonlocal open_now, peak
        async with db.begin() as conn:
            entered.append(k)
            open_now += 1
            peak = max(peak, open_now)
            await repos.insert_execution(conn, new_execution())
            await asyncio.sleep(0.01)  # the transaction holds on while others ask
            open_now -= 1

    writers = []
    for k in range(8):
        writers.append(asyncio.create_task(write(k)))
        await asyncio.sleep(0)  # asks in this order
    await asyncio.gather(*writers)
    if db.is_sqlite:
        assert peak == 1 and entered == list(range(8))
    else:
        assert peak > 1
    async with db.connect() as conn:
        assert (await repos.list_executions(conn, TENANT, status=None, limit=1, offset=0))[1] == 8
