"""Session routes: multi-turn conversations whose executions see the earlier turns."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from agent_platform.api.deps import SessionsDep, TenantDep
from agent_platform.api.schemas import (
    ErrorOut,
    ExecutionOut,
    SessionCreate,
    SessionOut,
    SessionPage,
)
from agent_platform.store.sessions import Session

router = APIRouter(prefix="/api/v1/sessions", tags=["sessions"])
ERRORS: dict[int | str, dict[str, object]] = {c: {"model": ErrorOut} for c in (404, 422, 503)}


def _out(session: Session) -> SessionOut:
    return SessionOut(
        session_id=session.id,
        title=session.title,
        metadata=session.metadata,
        created_at=session.created_at,
        updated_at=session.updated_at,
        executions=[ExecutionOut.of(e, with_steps=False) for e in session.executions]
        if session.executions is not None
        else None,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SessionOut, responses=ERRORS)
async def create_session(
    body: SessionCreate, tenant: TenantDep, service: SessionsDep, response: Response
) -> SessionOut:
    """Start a conversation; pass its `session_id` to `POST /api/v1/agent/execute`."""
    session = await service.create(tenant.id, title=body.title, metadata=body.metadata)
    response.headers["Location"] = f"{router.prefix}/{session.id}"
    return _out(session)


@router.get("", response_model=SessionPage, responses=ERRORS)
async def list_sessions(
    tenant: TenantDep,
    service: SessionsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> SessionPage:
    items, total = await service.list(tenant.id, limit=limit, offset=offset)
    return SessionPage(sessions=[_out(s) for s in items], total=total, limit=limit, offset=offset)


@router.get("/{session_id}", response_model=SessionOut, responses=ERRORS)
async def get_session(session_id: str, tenant: TenantDep, service: SessionsDep) -> SessionOut:
    return _out(await service.get(tenant.id, session_id, with_executions=True))


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
async def delete_session(session_id: str, tenant: TenantDep, service: SessionsDep) -> Response:
    """Deletes the session and its executions; anything still running in it is cancelled."""
    await service.delete(tenant.id, session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
