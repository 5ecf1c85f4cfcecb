"""Agent execution routes: submit (wait, background or stream), read, list, cancel, follow
events, and the tool catalogue."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.responses import StreamingResponse

from agent_platform.api.deps import ExecutionsDep, PlatformDep, StreamsDep, TenantDep
from agent_platform.api.schemas import (
    ErrorOut,
    ExecuteRequest,
    ExecutionOut,
    ExecutionPage,
    StepOut,
    ToolList,
    ToolOut,
)
from agent_platform.domain import ExecutionStatus
from agent_platform.errors import InvalidRequest
from agent_platform.services.executions import Submission
from agent_platform.services.streams import Renderers

router = APIRouter(prefix="/api/v1/agent", tags=["agent"])

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorOut} for code in (400, 404, 409, 413, 422, 503)
}
MAX_PAGE = 100
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_DOC = {"content": {"text/event-stream": {}}, "description": "Server-sent events"}
# what `step` and `done` events carry: the same JSON as GET /execution/{id} and its steps
SSE_RENDER = Renderers(
    step=lambda step: StepOut.of(step).model_dump(mode="json"),
    execution=lambda ex: ExecutionOut.of(ex).model_dump(mode="json"),
)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Same key + same body within 24 h returns the original execution.",
    ),
]


@router.post(
    "/execute",
    response_model=ExecutionOut,
    responses={
        200: {"content": {"text/event-stream": {}}},
        202: {"model": ExecutionOut, "description": "Accepted (background)"},
        **ERRORS,
    },
    summary="Run an agent task",
)
async def execute(
    body: ExecuteRequest,
    tenant: TenantDep,
    service: ExecutionsDep,
    streams: StreamsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ExecutionOut | StreamingResponse:
    """Waits for the result (200) unless `background` is true (202 + `Location`) or `stream`
    is true (`text/event-stream`). A request that ends early (client gone, wait limit) never
    stops the execution."""
    if body.background and body.stream:
        raise InvalidRequest("choose one of background and stream", field="stream")
    sub = Submission(
        task=body.task,
        tools=body.tools,
        model=body.model,
        max_steps=body.max_steps,
        metadata=body.metadata,
        session_id=body.session_id,
        on_busy=body.on_busy,
        timeout_seconds=body.timeout_seconds,
        webhook_url=body.webhook_url,
        webhook_steps=body.webhook_steps,
    )
    # an Idempotency-Key is bound to the whole request body, response mode included
    fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    if body.background or body.stream:
        submitted = await service.submit(
            tenant.id, sub, idempotency_key=idempotency_key, fingerprint=fingerprint
        )
    else:
        submitted = await service.submit_and_wait(
            tenant.id, sub, idempotency_key=idempotency_key, fingerprint=fingerprint
        )
    execution = submitted.execution
    headers = {"Idempotent-Replayed": "true"} if submitted.replayed else {}
    if body.stream:
        return StreamingResponse(
            streams.follow(tenant.id, execution.id, SSE_RENDER),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **headers},
        )
    response.headers.update(headers)
    if not execution.status.is_final:
        response.status_code = status.HTTP_202_ACCEPTED
        response.headers["Location"] = f"{router.prefix}/execution/{execution.id}"
    return ExecutionOut.of(execution)


@router.get(
    "/execution/{execution_id}",
    response_model=ExecutionOut,
    responses=ERRORS,
    summary="Get one execution with its steps",
)
async def get_execution(
    execution_id: str, tenant: TenantDep, service: ExecutionsDep
) -> ExecutionOut:
    return ExecutionOut.of(await service.get(tenant.id, execution_id))


@router.get(
    "/execution/{execution_id}/events",
    response_class=StreamingResponse,
    responses={200: SSE_DOC, **ERRORS},
    summary="Follow an execution's events (SSE): replay, then live",
)
async def execution_events(
    execution_id: str,
    tenant: TenantDep,
    service: ExecutionsDep,
    streams: StreamsDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    starting_after: Annotated[
        int | None, Query(ge=0, description="Resume after this event id (like Last-Event-ID).")
    ] = None,
) -> StreamingResponse:
    """Events: `execution`, `status`, `step` (as in `steps`), `done` (the whole execution).
    Each has an `id:`; reconnect with `Last-Event-ID` to continue exactly after it."""
    execution = await service.get(tenant.id, execution_id, with_steps=False)
    after = starting_after or 0
    if last_event_id is not None:
        if not last_event_id.strip().isdigit():
            raise InvalidRequest("Last-Event-ID must be an event id (an integer)")
        after = int(last_event_id)
    return StreamingResponse(
        streams.follow(tenant.id, execution.id, SSE_RENDER, after),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


@router.post(
    "/execution/{execution_id}/cancel",
    response_model=ExecutionOut,
    responses={202: {"model": ExecutionOut, "description": "Cancel in progress"}, **ERRORS},
    summary="Cancel an execution",
)
async def cancel_execution(
    execution_id: str, tenant: TenantDep, service: ExecutionsDep, response: Response
) -> ExecutionOut:
    """Queued: cancelled at once. Running: its code is killed, its model call dropped, and it
    ends `cancelled` (202 if that takes more than a few seconds). Already cancelled: returned
    as is. Ended otherwise: 409 with its status."""
    execution = await service.cancel(tenant.id, execution_id)
    if not execution.status.is_final:
        response.status_code = status.HTTP_202_ACCEPTED
    return ExecutionOut.of(execution)


@router.get(
    "/executions",
    response_model=ExecutionPage,
    responses=ERRORS,
    summary="List executions, newest first",
)
async def list_executions(
    tenant: TenantDep,
    service: ExecutionsDep,
    limit: Annotated[int, Query(ge=1, description=f"Page size (capped at {MAX_PAGE}).")] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    status_filter: Annotated[ExecutionStatus | None, Query(alias="status")] = None,
    include_steps: Annotated[bool, Query(description="Include each execution's steps.")] = False,
) -> ExecutionPage:
    limit = min(limit, MAX_PAGE)
    items, total = await service.list(
        tenant.id, status=status_filter, limit=limit, offset=offset, include_steps=include_steps
    )
    return ExecutionPage(
        executions=[ExecutionOut.of(ex, with_steps=include_steps) for ex in items],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/tools", response_model=ToolList, summary="List the tools an agent can use")
async def list_tools(platform: PlatformDep) -> ToolList:
    return ToolList(tools=[ToolOut(**t) for t in platform.registry.describe()])
