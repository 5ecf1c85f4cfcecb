"""The worker: wake (bus) or poll → claim → run the agent in a thread → record → finish.

Several executions run at once (`WORKER_CONCURRENCY` slots); the agent loop is synchronous
(smolagents), so each runs in a bounded thread pool created once. Leases are extended by a
heartbeat; a reaper (in every worker) requeues executions whose worker died. Timeouts and
cancels end an execution from here even while its thread is stuck; the thread's late writes
are fenced out. `burst=True` drains the queue and returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent_platform.config import Settings
from agent_platform.domain import (
    CANCEL_CHANNEL,
    WAKE_CHANNEL,
    Execution,
    ExecutionStatus,
    RunOutcome,
    StepRecord,
    StepType,
    StopReason,
    StoredStep,
    execution_channel,
    utcnow,
)
from agent_platform.errors import LeaseLost, ServiceUnavailable
from agent_platform.events import EventBus
from agent_platform.queue import jobs
from agent_platform.runtime.agent import AgentJob, AgentRunner, Drained, StopSignal, Turn
from agent_platform.store import repos
from agent_platform.store.db import Database
from agent_platform.store.event_log import Event, notify
from agent_platform.tools.base import TenantContext
from agent_platform.webhooks.dispatcher import WebhookDispatcher

log = logging.getLogger(__name__)
STOP_GRACE_S = 1.0  # after a timeout/cancel, how long the agent may take to stop by itself
# how long the first worker to take a new execution's wake-up keeps it (far longer than the
# broadcast takes to reach every worker; the key then expires)
WAKE_TAKE_TTL_S = 30.0
PEERS_CHECK_S = 5.0  # how often a worker counts the workers listening for wake-ups
# The "model answered" record of a step is written only if the step's code is still running
# this long after: most code finishes sooner, and its completed record then carries all of it.
PARTIAL_WRITE_DELAY_S = 0.05


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: EventBus,
        runner: AgentRunner,
        *,
        tenant: TenantContext,
        concurrency: int | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.runner = runner
        self.tenant = tenant
        self.concurrency = concurrency or settings.worker_concurrency
        self.worker_id = worker_id or new_worker_id()
        self.active: dict[str, asyncio.Task[None]] = {}
        self._signals: dict[str, StopSignal] = {}
        self._claimed: dict[str, Execution] = {}
        # spare threads: an agent stuck in code it cannot leave keeps its thread for a while
        self._threads = ThreadPoolExecutor(self.concurrency * 2, thread_name_prefix="agent")
        self._wake = asyncio.Event()
        # what the wake-ups heard since the current claim began were for: execution ids, and
        # None for those that ask for a claim whatever it finds (a requeue, a freed slot)
        self._wanted: set[str | None] = set()
        self._taken = 0  # wake-ups for new executions taken since the last claim
        # work may be waiting for a slot: a wake-up came while full, or a claim filled us up
        self._backlog = False
        self._peers = 1  # workers listening for wake-ups, this one included
        self._peers_checked = -PEERS_CHECK_S
        self._stopping = asyncio.Event()
        self.webhooks = WebhookDispatcher(db, settings)
        self._last_reap = 0.0
        self._burst = False
        self._background: set[asyncio.Task[None]] = set()

    async def run(self, *, burst: bool = False) -> None:
        """Serve until `stop()`; with `burst`, return once the queue is empty and idle."""
        self._burst = burst
        async with (
            self.bus.subscribe(WAKE_CHANNEL) as wakeups,
            self.bus.subscribe(CANCEL_CHANNEL) as cancels,
        ):
            listeners = [
                asyncio.create_task(self._listen(wakeups)),
                asyncio.create_task(self._listen_cancels(cancels)),
                asyncio.create_task(self.webhooks.run(self._stopping)),
            ]
            try:
                await self._loop(burst)
            finally:
                for listener in listeners:
                    listener.cancel()
                await asyncio.gather(*listeners, return_exceptions=True)

    async def stop(self, grace_s: float = 30.0) -> None:
        """Drain: stop claiming; each running execution finishes its current step (up to
        `grace_s`), records it and goes back to the queue, where another worker resumes it."""
        self._stopping.set()
        self._wake_up()
        for signal in self._signals.values():
            signal.set(StopReason.DRAIN)
        if self.active:
            await asyncio.wait(list(self.active.values()), timeout=grace_s)
        for execution_id in list(self.active):  # a step outlived the grace period
            execution = self._claimed.get(execution_id)
            if execution is not None:
                with contextlib.suppress(Exception):
                    await self._release(execution)
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _listen(self, wakeups: asyncio.Queue[dict[str, Any]]) -> None:
        """Every worker hears every wake-up. With several workers, one for a new execution is
        acted on by one worker with room (each of the others would run a claim that finds
        nothing); the others (a requeue, a release, a worker that filled up before claiming
        all it took) wake every worker with room. A full worker notes that work may be
        waiting, and claims when a slot frees; otherwise a freed slot waits for a wake-up. A
        wake-up for what a claim already took (it committed while the claim ran) is dropped:
        another claim would find nothing."""
        while True:
            message = await wakeups.get()
            if self._stopping.is_set():
                continue
            execution_id = message.get("execution_id")
            for_one = execution_id is not None and "reason" not in message
            if execution_id in self.active:  # a claim took it before its wake-up came
                if for_one and await self._has_peers():  # so that no other worker claims for it
                    await self.bus.take(f"wake:{execution_id}", WAKE_TAKE_TTL_S)
                continue
            if len(self.active) >= self.concurrency:
                self._backlog = True
                continue
            if for_one and await self._has_peers():
                if not await self.bus.take(f"wake:{execution_id}", WAKE_TAKE_TTL_S):
                    continue
                self._taken += 1
            self._wake_up(execution_id)

    def _wake_up(self, execution_id: str | None = None) -> None:
        self._wanted.add(execution_id)
        self._wake.set()

    async def _has_peers(self) -> bool:
        """Whether other workers listen too (counted every few seconds): alone, a worker takes
        every wake-up without asking."""
        now = time.monotonic()
        if now - self._peers_checked >= PEERS_CHECK_S:
            self._peers_checked = now
            with contextlib.suppress(Exception):  # keep the last count
                self._peers = await self.bus.listeners(WAKE_CHANNEL)
        return self._peers > 1

    async def _listen_cancels(self, cancels: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            message = await cancels.get()
            signal = self._signals.get(str(message.get("execution_id")))
            if signal is not None:
                signal.set(StopReason.CANCELLED)

    async def _loop(self, burst: bool) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            self._wanted.clear()
            claimed = 0
            try:
                await self._maybe_reap()
                claimed = await self._claim_and_start()
            except ServiceUnavailable as exc:
                log.warning("worker %s: %s", self.worker_id, exc)
            if burst and claimed == 0 and not self.active:
                return
            # A claim takes all it has room for, so fewer than that means the queue was empty:
            # no second claim to find nothing. Work that arrives later wakes us (a submission,
            # a requeue, a slot freed on a full worker that may have work waiting); the poll
            # interval covers a lost wake.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll_interval_s)

    async def _maybe_reap(self) -> None:
        now = time.monotonic()
        if now - self._last_reap < self.settings.reaper_interval_s:
            return
        self._last_reap = now
        async with self.db.begin() as conn:
            requeued, failed = await jobs.reap(conn, now=utcnow())
        for execution_id in failed:
            await self.bus.publish(execution_channel(execution_id), {"status": "failed"})
        if requeued:
            log.warning("requeued %d execution(s) from lost workers", len(requeued))
            await self.bus.publish(WAKE_CHANNEL, {"reason": "requeued"})

    async def _claim_and_start(self) -> int:
        taken, self._taken = self._taken, 0
        free = self.concurrency - len(self.active)
        if free <= 0:
            if taken:
                await self._pass_on()
            return 0
        try:
            claimed = await jobs.claim_work(
                self.db,
                worker_id=self.worker_id,
                limit=free,
                lease_s=self.settings.lease_s,
                now=utcnow(),
            )
        except BaseException:
            self._taken += taken  # claimed on the next attempt
            raise
        if len(claimed) == free:
            self._backlog = True  # the queue may hold more
            if taken > len(claimed):
                await self._pass_on()
        for execution, events in claimed:
            task = asyncio.create_task(
                self._execute(execution, events), name=f"exec-{execution.id}"
            )
            self.active[execution.id] = task
            task.add_done_callback(lambda _t, eid=execution.id: self._done(eid))
        self._wanted.difference_update(execution.id for execution, _ in claimed)
        if not self._wanted:  # every wake-up heard meanwhile was for what this claim took
            self._wake.clear()
        return len(claimed)

    async def _pass_on(self) -> None:
        """This worker filled up before claiming what all the wake-ups it took announced:
        wake every worker with room (the queue may still hold those executions)."""
        await self.bus.publish(WAKE_CHANNEL, {"reason": "full"})

    def _done(self, execution_id: str) -> None:
        was_full = len(self.active) >= self.concurrency
        self.active.pop(execution_id, None)
        self._signals.pop(execution_id, None)
        self._claimed.pop(execution_id, None)
        if (was_full and self._backlog) or self._burst:  # work may be waiting; a burst may end
            self._backlog = False
            self._wake_up()

    async def _execute(self, execution: Execution, claimed_events: list[Event]) -> None:
        loop = asyncio.get_running_loop()
        stop = self._signals[execution.id] = StopSignal()
        self._claimed[execution.id] = execution
        stopped = asyncio.Event()
        stop.on_set(lambda _reason: loop.call_soon_threadsafe(stopped.set))
        # Live readers hear of the claim while the agent starts; nothing waits for it (stream
        # readers take the events from the log on any wake-up, waiting requests want the end)
        self._in_background(notify(self.bus, execution.id, claimed_events))
        if self._stopping.is_set():
            stop.set(StopReason.DRAIN)
        if execution.cancel_requested_at is not None:
            stop.set(StopReason.CANCELLED)
        started = execution.started_at or utcnow()
        remaining_s = execution.timeout_s - (utcnow() - started).total_seconds()
        timer = loop.call_later(max(0.0, remaining_s), stop.set, StopReason.TIMEOUT)
        heartbeat = asyncio.create_task(self._heartbeat(execution, stop))
        writer = _StepWriter(self, execution, loop)
        try:
            job = await self._job(execution)
            run = loop.run_in_executor(
                self._threads,
                lambda: self.runner.run(
                    job, writer.write, stop, deadline=time.monotonic() + remaining_s
                ),
            )
            waiter = asyncio.ensure_future(stopped.wait())
            await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not run.done() and stop.reason in (StopReason.TIMEOUT, StopReason.CANCELLED):
                await asyncio.wait({run}, timeout=STOP_GRACE_S)
                if not run.done():  # stuck in the model's code or a provider call: end it here
                    outcome = (
                        RunOutcome.timed_out()
                        if stop.reason is StopReason.TIMEOUT
                        else RunOutcome.cancelled()
                    )
                    run.add_done_callback(_ignore_result)
                    await writer.settle()
                    await self._finish(execution, outcome)
                    return
            outcome = await run
            await writer.flush()
            await self._finish(
                execution, outcome, final_steps=writer.final_steps, steps=writer.completed
            )
        except LeaseLost:
            writer.discard()
            log.warning("execution %s attempt %d was fenced out", execution.id, execution.attempt)
        except Drained:
            await writer.settle()
            await self._release(execution)
        except Exception:
            log.exception("execution %s crashed the worker loop", execution.id)
            await writer.settle()
            with contextlib.suppress(Exception):
                await self._finish(
                    execution,
                    RunOutcome(
                        status=ExecutionStatus.FAILED,
                        error="internal error while running the execution",
                        error_code="internal_error",
                        stop_reason=StopReason.ERROR,
                    ),
                )
        finally:
            timer.cancel()
            heartbeat.cancel()

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._background.discard)

    async def _job(self, execution: Execution) -> AgentJob:
        """What the agent needs: the task, and what earlier attempts and turns left behind."""
        history: list[StoredStep] = []
        turns: list[Turn] = []
        if execution.attempt == 1 and execution.session_id is None:
            return self._agent_job(execution, history, turns)  # nothing to load
        async with self.db.connect() as conn:
            if execution.attempt > 1:  # rescued: resume after the steps already recorded
                stored = await repos.list_steps(conn, execution.tenant_id, execution.id)
                history = repos.effective_steps(stored)
            if execution.session_id is not None:
                earlier = await repos.session_turns(
                    conn, execution.tenant_id, execution.session_id, before=execution.created_at
                )
                turns = [Turn(task=ex.task, steps=tuple(ex.steps)) for ex in earlier]
        return self._agent_job(execution, history, turns)

    def _agent_job(
        self, execution: Execution, history: list[StoredStep], turns: list[Turn]
    ) -> AgentJob:
        return AgentJob(
            execution_id=execution.id,
            tenant=self.tenant,
            task=execution.task,
            tools=execution.tools if execution.tools is not None else [],
            model=execution.model,
            max_steps=execution.max_steps,
            history=tuple(history),
            previous_turns=tuple(turns),
        )

    async def _record(self, execution: Execution, step: StepRecord) -> None:
        event = await jobs.write_step(self.db, execution, step, now=utcnow())
        if event is not None:
            await notify(self.bus, execution.id, [event])

    async def _finish(
        self,
        execution: Execution,
        outcome: RunOutcome,
        *,
        final_steps: Sequence[StepRecord] = (),
        steps: Sequence[StepRecord] | None = None,
    ) -> None:
        """The run's last steps (if any) and the end, in one transaction. With `steps` (all
        this attempt completed) and a first attempt, whose steps are all its own, the end's
        notification carries the execution as committed."""
        ended = await jobs.end(self.db, execution, outcome, final_steps=final_steps, now=utcnow())
        committed = ended.row
        if committed is not None and steps is not None and committed.attempt == 1:
            committed.steps = [StoredStep.of(step, committed.attempt) for step in steps]
        else:
            committed = None
        await notify(self.bus, execution.id, ended.events, ended=committed)
        if execution.session_id is not None:  # the session's next turn may be queued behind it
            await self.bus.publish(WAKE_CHANNEL, {"reason": "session turn ended"})
        if execution.webhook_url:
            self.webhooks.notify()

    async def _release(self, execution: Execution) -> None:
        async with self.db.begin() as conn:
            released = await jobs.release(conn, execution, now=utcnow())
        if released:
            log.info("execution %s released for another worker to resume", execution.id)
            await self.bus.publish(
                WAKE_CHANNEL, {"execution_id": execution.id, "reason": "released"}
            )

    async def _heartbeat(self, execution: Execution, stop: StopSignal) -> None:
        interval = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.db.begin() as conn:
                    alive, cancel = await jobs.heartbeat(
                        conn,
                        execution.id,
                        execution.attempt,
                        lease_s=self.settings.lease_s,
                        now=utcnow(),
                    )
            except ServiceUnavailable:
                continue  # the lease still has time; try again
            if not alive:
                stop.set(StopReason.LEASE_LOST)
                return
            if cancel:  # the database flag: the fallback when the Redis signal was lost
                stop.set(StopReason.CANCELLED)


class _StepWriter:
    """The agent thread's step sink. Writes never make the agent wait: each starts at once
    and the agent goes on to its next model call; the next write waits for the previous one,
    so rows stay in order and a lost lease still stops the agent at its next step. A step's
    "model answered" record is written only once its code has run for PARTIAL_WRITE_DELAY_S
    (a long tool call, say); otherwise the completed record replaces it before it was due.
    The run's last steps (the one whose code gave the answer, then the final answer) are kept
    for the statement that ends the execution. Every end of the execution flushes first."""

    def __init__(self, worker: Worker, execution: Execution, loop: asyncio.AbstractEventLoop):
        self.worker = worker
        self.execution = execution
        self.loop = loop
        self.pending: concurrent.futures.Future[None] | None = None
        self.due: _DuePartial | None = None  # loop side only
        self.final_steps: list[StepRecord] = []
        self.completed: list[StepRecord] = []  # every step record that is not partial

    def write(self, step: StepRecord) -> None:
        if not step.partial:
            self.completed.append(step)
        if step.type is StepType.FINAL_ANSWER or (step.ends_run and not step.partial):
            self.final_steps.append(step)
            return
        self._wait_pending()
        self.pending = asyncio.run_coroutine_threadsafe(self._write(step), self.loop)

    async def _write(self, step: StepRecord) -> None:
        await self._settle_due(write_now=False)
        if step.partial:
            self.due = _DuePartial(self, step)
        else:
            await self.worker._record(self.execution, step)

    async def _settle_due(self, *, write_now: bool) -> None:
        """A partial record not yet written is dropped (its step completed: the completed
        record stands for it) or, with `write_now`, written at once; one being written is
        waited for."""
        due, self.due = self.due, None
        if due is not None:
            await due.settle(write_now=write_now)

    def discard(self) -> None:
        """The lease is lost: a partial record still due is never written (one already being
        written is fenced out; its error is dropped)."""
        due, self.due = self.due, None
        if due is not None and not due.started:
            due.task.cancel()

    def _wait_pending(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    async def _await_pending(self) -> None:
        """Wait for the last write; raises what it raised (LeaseLost)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            await asyncio.wrap_future(pending)

    async def flush(self) -> None:
        """Wait for the last write (raising its error). The kept steps are complete, so a
        partial record still due is not written."""
        await self._await_pending()
        await self._settle_due(write_now=False)

    async def settle(self) -> None:
        """On the way out of an execution that ends without its answer (stopped, drained,
        crashed): write what is due at once, and a kept step whose code did run, so a
        resumed attempt neither loses the model's answer nor runs that code again."""
        with contextlib.suppress(Exception):
            await self._await_pending()
        ran = [step for step in self.final_steps if step.type is not StepType.FINAL_ANSWER]
        completed = {step.step for step in ran}
        with contextlib.suppress(Exception):
            await self._settle_due(
                write_now=self.due is not None and self.due.step.step not in completed
            )
        with contextlib.suppress(Exception):
            for step in ran:
                await self.worker._record(self.execution, step)
        self.final_steps = []


class _DuePartial:
    """A step's "model answered" record, written after PARTIAL_WRITE_DELAY_S unless settled
    first."""

    def __init__(self, writer: _StepWriter, step: StepRecord) -> None:
        self.writer = writer
        self.step = step
        self.started = False
        self.task = asyncio.get_running_loop().create_task(self._write_when_due())
        # whoever settles it sees its error; a late write of a stuck agent has no one to
        self.task.add_done_callback(_ignore_result)

    async def _write_when_due(self) -> None:
        await asyncio.sleep(PARTIAL_WRITE_DELAY_S)
        self.started = True
        await self.writer.worker._record(self.writer.execution, self.step)

    async def settle(self, *, write_now: bool) -> None:
        if not self.started:
            self.task.cancel()  # still asleep: nothing was written
            if not write_now:
                return
            self.started = True
            await self.writer.worker._record(self.writer.execution, self.step)
            return
        await self.task  # raises what the write raised (LeaseLost)


def _ignore_result(future: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        future.result()
