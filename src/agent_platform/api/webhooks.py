"""The webhook delivery log: every delivery of an execution with each attempt, so a tenant
can see why a notification did not arrive (status codes, errors, the next retry)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from agent_platform.api.deps import PlatformDep, TenantDep
from agent_platform.api.schemas import ErrorOut
from agent_platform.errors import NotFound
from agent_platform.store import repos
from agent_platform.webhooks.outbox import Delivery, DeliveryAttempt, deliveries_for

router = APIRouter(prefix="/api/v1/agent", tags=["webhooks"])


class WebhookAttemptOut(BaseModel):
    attempt: int
    started_at: datetime
    duration_ms: int
    status_code: int | None = Field(None, description="null when no HTTP response arrived")
    error: str | None = Field(None, description="null when the receiver answered 2xx")

    @classmethod
    def of(cls, a: DeliveryAttempt) -> WebhookAttemptOut:
        return cls(
            attempt=a.attempt,
            started_at=a.started_at,
            duration_ms=a.duration_ms,
            status_code=a.status_code,
            error=a.error,
        )


class WebhookDeliveryOut(BaseModel):
    id: str = Field(description="Also the `webhook-id` header, stable across retries.")
    event_type: str
    url: str
    status: str = Field(description="pending | delivered | failed")
    attempts: int
    next_attempt_at: datetime | None = Field(
        None, description="When a pending delivery is (re)tried; null once it is settled."
    )
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime
    delivered_at: datetime | None = None
    attempts_log: list[WebhookAttemptOut]

    @classmethod
    def of(cls, d: Delivery) -> WebhookDeliveryOut:
        return cls(
            id=d.id,
            event_type=d.event_type,
            url=d.url,
            status=d.status,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            created_at=d.created_at,
            delivered_at=d.delivered_at,
            attempts_log=[WebhookAttemptOut.of(a) for a in d.attempts_log],
        )


class WebhookDeliveriesOut(BaseModel):
    deliveries: list[WebhookDeliveryOut]


@router.get(
    "/execution/{execution_id}/webhooks",
    response_model=WebhookDeliveriesOut,
    responses={code: {"model": ErrorOut} for code in (404, 503)},
    summary="Webhook deliveries of an execution, with every attempt",
)
async def list_webhook_deliveries(
    execution_id: str, tenant: TenantDep, platform: PlatformDep
) -> WebhookDeliveriesOut:
    canonical = repos.parse_id(execution_id)
    if canonical is None:
        raise NotFound(f"execution {execution_id!r} not found")
    async with platform.db.connect() as conn:
        if await repos.get_status(conn, tenant.id, canonical) is None:
            raise NotFound(f"execution {execution_id!r} not found")
        deliveries = await deliveries_for(conn, tenant.id, canonical)
    return WebhookDeliveriesOut(deliveries=[WebhookDeliveryOut.of(d) for d in deliveries])
