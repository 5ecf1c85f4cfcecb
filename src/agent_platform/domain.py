"""Core types with no I/O: execution statuses, the step record, usage, key prefixes."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class ExecutionStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.CANCELLED,
        ExecutionStatus.TIMED_OUT,
    }
)


class StepType(StrEnum):
    ACTION = "action"
    PLANNING = "planning"
    FINAL_ANSWER = "final_answer"


class StopReason(StrEnum):
    FINAL_ANSWER = "final_answer"
    MAX_STEPS = "max_steps"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    LEASE_LOST = "lease_lost"
    DRAIN = "drain"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class StepRecord:
    """One step as the runtime produced it; stored, published and rendered as is."""

    step: int
    type: StepType
    started_at: datetime
    duration_ms: int
    model_output: str | None = None
    thought: str | None = None
    code: str | None = None
    observation: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    retries: int = 0
    final_answer: str | None = None
    note: str | None = None
    partial: bool = False  # the model answered; the step's code has not finished yet
    # not stored: the step's code gave the final answer, so the run ends an instant later and
    # the worker writes this step with the end
    ends_run: bool = False


@dataclass(frozen=True)
class RunOutcome:
    """How an agent run ended, as the worker records it."""

    status: ExecutionStatus
    result: str | None = None
    error: str | None = None
    error_code: str | None = None
    stop_reason: StopReason | None = None

    @classmethod
    def timed_out(cls) -> RunOutcome:
        return cls(
            status=ExecutionStatus.TIMED_OUT,
            error="the execution exceeded its time limit",
            error_code="timeout",
            stop_reason=StopReason.TIMEOUT,
        )

    @classmethod
    def cancelled(cls) -> RunOutcome:
        return cls(
            status=ExecutionStatus.CANCELLED,
            error="the execution was cancelled",
            error_code="cancelled",
            stop_reason=StopReason.CANCELLED,
        )


# Channel names live here so every adapter agrees on them. The Redis adapter prefixes them
# with the deployment's namespace (`REDIS_NAMESPACE`), so several deployments can share Redis.
WAKE_CHANNEL = "wake"
CANCEL_CHANNEL = "cancel"


def execution_channel(execution_id: str) -> str:
    return f"exec:{execution_id}"


@dataclass
class Execution:
    """An execution row: the job and its outcome."""

    id: str
    tenant_id: str
    status: ExecutionStatus
    task: str
    tools: list[str] | None
    model: str
    max_steps: int
    metadata: dict[str, Any]
    created_at: datetime
    attempt: int = 0
    max_attempts: int = 1
    timeout_s: int = 300
    result: str | None = None
    error: str | None = None
    error_code: str | None = None
    stop_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    worker_id: str | None = None
    lease_until: datetime | None = None
    session_id: str | None = None
    cancel_requested_at: datetime | None = None
    webhook_url: str | None = None
    webhook_steps: bool = False
    idempotency_key: str | None = None
    steps: list[StoredStep] = field(default_factory=list)
    abandoned_steps: list[StoredStep] = field(default_factory=list)


@dataclass
class StoredStep(StepRecord):
    """A step as stored: which attempt produced it."""

    attempt: int = 1

    @classmethod
    def of(cls, step: StepRecord, attempt: int) -> StoredStep:
        """The step as reading its stored row gives it back (`ends_run` is not stored)."""
        values = {f.name: getattr(step, f.name) for f in fields(StepRecord)}
        return cls(**{**values, "ends_run": False}, attempt=attempt)
