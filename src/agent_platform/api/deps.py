"""Named dependencies for routers: the platform's services and the caller's tenant.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker thread,
a thread hop per dependency per request for what is an attribute lookup."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from agent_platform.container import Platform
from agent_platform.services.executions import ExecutionService
from agent_platform.services.sessions import SessionService
from agent_platform.services.streams import ExecutionStream
from agent_platform.tools.base import TenantContext


def _platform(request: Request) -> Platform:
    return request.app.state.platform  # type: ignore[no-any-return]


async def get_platform(request: Request) -> Platform:
    return _platform(request)


async def get_executions(request: Request) -> ExecutionService:
    return _platform(request).executions


async def get_sessions(request: Request) -> SessionService:
    return _platform(request).sessions


async def get_streams(request: Request) -> ExecutionStream:
    return _platform(request).streams


async def get_tenant(request: Request) -> TenantContext:
    """Instance mode: the deployment's tenant, from the environment Omnistrate injects."""
    return _platform(request).settings.tenant


PlatformDep = Annotated[Platform, Depends(get_platform)]
ExecutionsDep = Annotated[ExecutionService, Depends(get_executions)]
TenantDep = Annotated[TenantContext, Depends(get_tenant)]
SessionsDep = Annotated[SessionService, Depends(get_sessions)]
StreamsDep = Annotated[ExecutionStream, Depends(get_streams)]
