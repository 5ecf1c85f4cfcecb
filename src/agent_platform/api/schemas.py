"""Request and response shapes of the HTTP API (the OpenAPI at /docs is generated from these).

Seed-compatible: `ExecutionOut` keeps `execution_id`, `status`, `result`, `error`, `steps`,
`created_at`, `completed_at`; each step keeps `step`, `action`, `observation`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_platform.domain import Execution, ExecutionStatus, StepType, StoredStep

RESULT_PREVIEW_CHARS = 2_000


class ExecuteRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"task": "What is 2 + 2? Just give me the number.", "tools": []}]
        },
    )

    task: str = Field(min_length=1, description="What the agent should do (natural language).")
    tools: list[str] | None = Field(
        None, description="Tools to enable: omitted/null = all, [] = none, a list = that subset."
    )
    model: str | None = Field(None, description="Model to use; must be in the allowlist.")
    max_steps: int | None = Field(None, ge=1, description="Step budget (1..MAX_STEPS_LIMIT).")
    metadata: dict[str, Any] | None = Field(
        None, description="Your own small JSON object, stored and returned as is."
    )
    background: bool = Field(
        False, description="true: answer 202 at once and let the client poll the execution."
    )
    stream: bool = Field(
        False, description="true: answer `text/event-stream` with the execution's events."
    )
    session_id: str | None = Field(
        None, description="Continue this session: the agent sees its earlier tasks and answers."
    )
    on_busy: Literal["enqueue", "reject", "interrupt"] = Field(
        "enqueue",
        description="When the session is busy: run after it (enqueue), 409 (reject), or cancel "
        "what is queued or running in it first (interrupt).",
    )
    timeout_seconds: int | None = Field(
        None, ge=1, description="Time limit for this execution (capped by MAX_EXECUTION_TIME)."
    )
    webhook_url: str | None = Field(
        None, max_length=2048, description="POSTed (signed) when the execution ends."
    )
    webhook_steps: bool = Field(False, description="Also POST an event for every step.")


class UsageOut(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class ToolCallOut(BaseModel):
    name: str
    arguments: dict[str, Any]
    result: Any = Field(None, description=f"The result (text cut at {RESULT_PREVIEW_CHARS}).")
    error: str | None = None
    duration_ms: int | None = None

    @classmethod
    def of(cls, call: dict[str, Any]) -> ToolCallOut:
        result = call.get("result")
        if isinstance(result, str) and len(result) > RESULT_PREVIEW_CHARS:
            result = result[:RESULT_PREVIEW_CHARS] + "…"
        return cls(**{**call, "result": result})


class StepOut(BaseModel):
    step: int
    type: StepType
    action: str | None = Field(None, description="The code the agent ran (or `final_answer`).")
    observation: str | None = None
    thought: str | None = None
    model_output: str | None = None
    code: str | None = None
    tool_calls: list[ToolCallOut] = []
    error: str | None = None
    final_answer: str | None = None
    note: str | None = Field(None, description="e.g. how a resumed execution was restored")
    usage: UsageOut
    retries: int = 0
    attempt: int
    started_at: datetime
    duration_ms: int

    @classmethod
    def of(cls, s: StoredStep) -> StepOut:
        final = s.type is StepType.FINAL_ANSWER
        return cls(
            step=s.step,
            type=s.type,
            action="final_answer" if final else s.code,
            observation=s.final_answer if final else s.observation,
            thought=s.thought,
            model_output=s.model_output,
            code=s.code,
            tool_calls=[ToolCallOut.of(c) for c in s.tool_calls],
            error=s.error,
            final_answer=s.final_answer,
            note=s.note,
            usage=UsageOut(
                input_tokens=s.input_tokens,
                output_tokens=s.output_tokens,
                total_tokens=s.input_tokens + s.output_tokens,
            ),
            retries=s.retries,
            attempt=s.attempt,
            started_at=s.started_at,
            duration_ms=s.duration_ms,
        )


class ExecutionOut(BaseModel):
    execution_id: str
    status: ExecutionStatus
    task: str
    result: str | None = None
    error: str | None = None
    error_code: str | None = None
    stop_reason: str | None = None
    steps: list[StepOut] | None = Field(
        None, description="Steps of the latest attempt (omitted in lists unless asked for)."
    )
    abandoned_steps: list[StepOut] | None = Field(
        None,
        description="Model output of steps whose worker died before their code finished; "
        "those steps were redone by a later attempt.",
    )
    usage: UsageOut
    model: str
    tools: list[str] | None
    max_steps: int
    metadata: dict[str, Any]
    session_id: str | None = None
    timeout_seconds: int
    cancel_requested: bool = False
    webhook_url: str | None = None
    attempt: int
    resumed_steps: int = Field(
        0, description="Steps completed by earlier attempts and reused, not redone."
    )
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None

    @classmethod
    def of(cls, ex: Execution, *, with_steps: bool = True) -> ExecutionOut:
        return cls(
            execution_id=ex.id,
            status=ex.status,
            task=ex.task,
            result=ex.result,
            error=ex.error,
            error_code=ex.error_code,
            stop_reason=ex.stop_reason,
            steps=[StepOut.of(s) for s in ex.steps] if with_steps else None,
            abandoned_steps=[StepOut.of(s) for s in ex.abandoned_steps] if with_steps else None,
            usage=UsageOut(
                input_tokens=ex.input_tokens,
                output_tokens=ex.output_tokens,
                total_tokens=ex.input_tokens + ex.output_tokens,
            ),
            model=ex.model,
            tools=ex.tools,
            max_steps=ex.max_steps,
            metadata=ex.metadata,
            session_id=ex.session_id,
            timeout_seconds=ex.timeout_s,
            cancel_requested=ex.cancel_requested_at is not None,
            webhook_url=ex.webhook_url,
            attempt=ex.attempt,
            resumed_steps=sum(1 for s in ex.steps if s.attempt < ex.attempt),
            created_at=ex.created_at,
            started_at=ex.started_at,
            completed_at=ex.completed_at,
        )


class ExecutionPage(BaseModel):
    executions: list[ExecutionOut]
    total: int
    limit: int
    offset: int


class ToolOut(BaseModel):
    name: str
    description: str
    inputs: dict[str, Any]
    output_type: str


class ToolList(BaseModel):
    tools: list[ToolOut]


class TenantInfoOut(BaseModel):
    tenant_id: str
    tenant_email: str | None
    tenant_name: str | None
    org_id: str | None
    org_name: str | None
    instance_id: str | None
    resource_id: str | None
    service_id: str | None
    plan_id: str | None
    environment: str | None
    is_omnistrate_deployment: bool


class HealthOut(BaseModel):
    status: str = Field(description="healthy | degraded")
    version: str
    mode: str = Field(description="embedded | server")
    database: str
    redis: str
    worker: str
    sandbox: str = Field(description="isolation level of model-written code")
    providers: list[str]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None
    fields: list[dict[str, Any]] | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, max_length=200)
    metadata: dict[str, Any] | None = None


class SessionOut(BaseModel):
    session_id: str
    title: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    executions: list[ExecutionOut] | None = Field(
        None, description="The session's executions, oldest first (on GET of one session)."
    )


class SessionPage(BaseModel):
    sessions: list[SessionOut]
    total: int
    limit: int
    offset: int
