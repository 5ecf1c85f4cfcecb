"""Agent execution routes: submit (wait or background), read, list, and the tool catalogue."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from agent_platform.api.deps import ExecutionsDep, PlatformDep, TenantDep
from agent_platform.api.schemas import (
    ErrorOut,
    ExecuteRequest,
    ExecutionOut,
    ExecutionPage,
    ToolList,
    ToolOut,
)
from agent_platform.domain import ExecutionStatus
from agent_platform.services.executions import Submission

router = APIRouter(prefix="/api/v1/agent", tags=["agent"])

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorOut} for code in (400, 404, 413, 422, 503)
}
MAX_PAGE = 100


@router.post(
    "/execute",
    response_model=ExecutionOut,
    responses={202: {"model": ExecutionOut, "description": "Accepted (background)"}, **ERRORS},
    summary="Run an agent task",
)
async def execute(
    body: ExecuteRequest, tenant: TenantDep, service: ExecutionsDep, response: Response
) -> ExecutionOut:
    """Waits for the result (200) unless `background` is true (202 + `Location`). A waiting
    request that ends early (client gone, wait limit) never stops the execution."""
    sub = Submission(
        task=body.task,
        tools=body.tools,
        model=body.model,
        max_steps=body.max_steps,
        metadata=body.metadata,
    )
    if body.background:
        execution = await service.submit(tenant.id, sub)
    else:
        execution = await service.submit_and_wait(tenant.id, sub)
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
    "/executions",
    response_model=ExecutionPage,
    response_model_exclude_none=False,
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
