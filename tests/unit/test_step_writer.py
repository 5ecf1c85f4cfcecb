"""The worker's step sink: what it writes, when, and in which order."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from agent_platform.domain import Execution, ExecutionStatus, StepRecord, StepType
from agent_platform.queue import worker as worker_module
from agent_platform.queue.worker import _StepWriter


class _Recorder:
    """Stands in for the worker: its `_record` is the one thing the writer calls."""

    def __init__(self) -> None:
        self.written: list[tuple[int, bool]] = []

    async def _record(self, execution: Execution, step: StepRecord) -> None:
        await asyncio.sleep(0.001)  # a database round trip
        self.written.append((step.step, step.partial))


def _step(n: int, *, partial: bool = False, **kwargs: Any) -> StepRecord:
    return StepRecord(
        step=n,
        type=kwargs.pop("type", StepType.ACTION),
        started_at=datetime.now(UTC),
        duration_ms=0,
        partial=partial,
        **kwargs,
    )


def _writer() -> tuple[_StepWriter, _Recorder]:
    recorder = _Recorder()
    execution = Execution(
        id="e", tenant_id="t", status=ExecutionStatus.RUNNING, task="x", tools=[], model="m",
        max_steps=5, metadata={}, created_at=datetime.now(UTC), attempt=1,
    )  # fmt: skip
    return _StepWriter(recorder, execution, asyncio.get_running_loop()), recorder  # type: ignore[arg-type]


async def _agent_writes(writer: _StepWriter, *steps: StepRecord) -> None:
    """As the agent thread does: each write from a thread, in order."""
    for step in steps:
        await asyncio.to_thread(writer.write, step)


ANSWERED_RUN = (  # the model answers, its code gives the final answer, the final answer
    _step(1, partial=True),
    _step(1, ends_run=True),
    _step(2, type=StepType.FINAL_ANSWER),
)


async def test_a_step_that_completes_soon_is_written_once() -> None:
    writer, recorder = _writer()
    await _agent_writes(writer, _step(1, partial=True), _step(1))
    await writer.flush()
    await asyncio.sleep(worker_module.PARTIAL_WRITE_DELAY_S * 2)
    assert recorder.written == [(1, False)]


async def test_a_step_whose_code_runs_long_is_written_when_the_model_answered() -> None:
    writer, recorder = _writer()
    await _agent_writes(writer, _step(1, partial=True))
    await asyncio.sleep(worker_module.PARTIAL_WRITE_DELAY_S * 3)
    assert recorder.written == [(1, True)]
    await _agent_writes(writer, _step(1))
    await writer.flush()
    assert recorder.written == [(1, True), (1, False)]


async def test_the_last_steps_are_kept_for_the_end() -> None:
    writer, recorder = _writer()
    await _agent_writes(writer, *ANSWERED_RUN)
    await writer.flush()
    await asyncio.sleep(worker_module.PARTIAL_WRITE_DELAY_S * 2)
    assert recorder.written == []  # the due partial record was dropped, not written late
    assert [(s.step, s.type) for s in writer.final_steps] == [
        (1, StepType.ACTION),
        (2, StepType.FINAL_ANSWER),
    ]


async def test_an_execution_stopped_mid_step_writes_what_it_has_at_once() -> None:
    writer, recorder = _writer()
    await _agent_writes(writer, _step(1), _step(2, partial=True))
    await writer.settle()
    assert recorder.written == [(1, False), (2, True)]


async def test_a_stopped_execution_keeps_a_step_whose_code_ran() -> None:
    writer, recorder = _writer()
    await _agent_writes(writer, *ANSWERED_RUN)
    await writer.settle()
    assert recorder.written == [(1, False)]  # not the answer: the execution did not end with it


async def test_nothing_is_written_once_the_lease_is_lost() -> None:
    writer, recorder = _writer()
    await _agent_writes(writer, _step(1, partial=True))
    writer.discard()
    await asyncio.sleep(worker_module.PARTIAL_WRITE_DELAY_S * 2)
    assert recorder.written == []
