"""Operational routes: health (seed), liveness, readiness, and the tenant's own info."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from agent_platform import __version__
from agent_platform.api.deps import PlatformDep, TenantDep
from agent_platform.api.schemas import HealthOut, TenantInfoOut

router = APIRouter()


async def _health(platform: PlatformDep) -> HealthOut:
    database = "healthy" if await platform.db.ping() else "unhealthy"
    if platform.settings.redis_url:
        redis = "healthy" if await platform.bus.ping() else "unhealthy"
    else:
        redis = "not configured (in-memory)"
    if platform.worker is not None:
        worker = f"in-process ({platform.worker.concurrency} slots)"
    else:
        worker = "separate process"
    configured = [
        name
        for name, ok in (
            ("anthropic", platform.providers.is_configured("claude")),
            ("openai", platform.providers.is_configured("openai/x")),
        )
        if ok
    ]
    healthy = database == "healthy" and redis != "unhealthy"
    return HealthOut(
        status="healthy" if healthy else "degraded",
        version=__version__,
        mode=platform.mode,
        database=database,
        redis=redis,
        worker=worker,
        sandbox=platform.sandbox_level,
        providers=configured,
    )


@router.get("/health", response_model=HealthOut, tags=["ops"], summary="Health summary")
async def health(platform: PlatformDep) -> HealthOut:
    return await _health(platform)


@router.get("/livez", tags=["ops"], summary="Liveness: the process is serving")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=HealthOut,
    tags=["ops"],
    summary="Readiness: 503 while the database or Redis is unreachable",
)
async def readyz(platform: PlatformDep, response: Response) -> HealthOut:
    report = await _health(platform)
    if report.status != "healthy":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["Retry-After"] = "5"
    return report


@router.get(
    "/api/v1/tenant/info", response_model=TenantInfoOut, tags=["tenant"], summary="Your tenant"
)
async def tenant_info(tenant: TenantDep, platform: PlatformDep) -> TenantInfoOut:
    s = platform.settings
    return TenantInfoOut(
        tenant_id=tenant.id,
        tenant_email=tenant.email,
        tenant_name=tenant.name,
        org_id=tenant.org_id,
        org_name=tenant.org_name,
        instance_id=tenant.instance_id,
        resource_id=s.omnistrate_resource_id,
        service_id=s.omnistrate_service_id,
        plan_id=s.omnistrate_plan_id,
        environment=tenant.environment,
        is_omnistrate_deployment=bool(s.omnistrate_instance_id),
    )
