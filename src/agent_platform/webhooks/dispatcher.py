"""The webhook dispatcher: claims due deliveries from the outbox, sends them signed, logs
every attempt, and schedules retries with exponential backoff and jitter.

Any number of dispatchers may run (one per worker process): a claim is one atomic UPDATE
(PostgreSQL skips rows another dispatcher has locked; SQLite serialises writers), it commits
before anything is sent, and it bumps the delivery's attempt number, which fences the write
of the result. Delivery is at-least-once: a dispatcher that dies after sending but before
recording lets the lease lapse and the delivery is sent again with the same `webhook-id`,
which is how receivers deduplicate (Standard Webhooks).

Without `WEBHOOK_SECRET` deliveries go out unsigned (no `webhook-signature` header) but
still carry `webhook-id` and `webhook-timestamp`, so receivers can deduplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from agent_platform.config import Settings
from agent_platform.domain import utcnow
from agent_platform.errors import ServiceUnavailable
from agent_platform.store.db import Database
from agent_platform.tools.netguard import BlockedAddress, FetchError, NetGuard, UnsupportedURL
from agent_platform.webhooks import outbox
from agent_platform.webhooks.outbox import DELIVERED, FAILED, PENDING, Delivery, DeliveryAttempt
from agent_platform.webhooks.signing import sign
from agent_platform.webhooks.transport import PostResult, WebhookTransport

log = logging.getLogger(__name__)

__all__ = ["WebhookDispatcher", "render_body"]


def render_body(delivery: Delivery) -> bytes:
    """The request body, identical on every retry: `{"type", "timestamp", "data"}` where
    `timestamp` is when the event happened (the delivery's creation)."""
    envelope = {
        "type": delivery.event_type,
        "timestamp": delivery.created_at.isoformat(),
        "data": delivery.payload,
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _describe(result: PostResult) -> str:
    if 300 <= result.status < 400:
        return f"HTTP {result.status}: the receiver redirected; webhook redirects are not followed"
    preview = " ".join(result.body_preview.split())[:200]
    return f"HTTP {result.status}" + (f": {preview}" if preview else "")


class WebhookDispatcher:
    """Sends the outbox. `base_delay_s` / `max_delay_s` shape the backoff (tests use tiny
    values); `lease_s` is how long a claimed delivery stays invisible to other dispatchers
    (default: twice the send timeout + 30 s, so a send always ends inside its lease)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        guard: NetGuard | None = None,
        *,
        transport: WebhookTransport | None = None,
        base_delay_s: float = 1.0,
        max_delay_s: float = 3600.0,
        batch_size: int = 32,
        concurrency: int = 8,
        lease_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._guard = guard or NetGuard(settings.allowed_private_networks)
        self._transport = transport or WebhookTransport(self._guard)
        secret = settings.webhook_secret
        self._secret = secret.get_secret_value() if secret else None
        self._max_attempts = settings.webhook_max_attempts
        self._timeout_s = settings.webhook_timeout_s
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._lease_s = lease_s or 2 * self._timeout_s + 30
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """Deliver now instead of at the next poll (call after committing an enqueue)."""
        self._wake.set()

    def backoff_s(self, attempts: int) -> float:
        """Delay before the retry that follows attempt number `attempts` (1-based)."""
        delay = min(self._max_delay_s, self._base_delay_s * 2**attempts)
        return delay * self._rng.uniform(0.5, 1.0)

    async def run_once(self, now: datetime | None = None) -> int:
        """Claim the deliveries due at `now` (default: the current time), send them, record
        the outcomes. Returns how many were attempted."""
        start = now or utcnow()
        async with self._db.begin() as conn:
            claimed = await outbox.claim_due(
                conn,
                now=start,
                lease_s=self._lease_s,
                limit=self._batch_size,
                max_attempts=self._max_attempts,
                is_postgres=not self._db.is_sqlite,
            )
        if not claimed:
            return 0
        origin = time.monotonic()

        def clock() -> datetime:  # `now` advanced by real elapsed time
            return start + timedelta(seconds=time.monotonic() - origin)

        limit = asyncio.Semaphore(self._concurrency)

        async def one(delivery: Delivery) -> None:
            async with limit:
                await self._deliver(delivery, clock)

        results = await asyncio.gather(*(one(d) for d in claimed), return_exceptions=True)
        for delivery, result in zip(claimed, results, strict=True):
            if isinstance(result, BaseException):
                log.error("webhook %s: recording the attempt failed: %r", delivery.id, result)
        return len(claimed)

    async def _deliver(self, delivery: Delivery, clock: Callable[[], datetime]) -> None:
        started_at = clock()
        timestamp = int(started_at.timestamp())
        body = render_body(delivery)
        headers = {"webhook-id": delivery.id, "webhook-timestamp": str(timestamp)}
        if self._secret:
            headers["webhook-signature"] = sign(self._secret, delivery.id, timestamp, body)
        status_code: int | None = None
        error: str | None = None
        permanent = False
        began = time.monotonic()
        try:
            result = await asyncio.to_thread(
                self._transport.post, delivery.url, body, headers, timeout_s=self._timeout_s
            )
            status_code = result.status
            if not 200 <= result.status < 300:
                error = _describe(result)
        except (UnsupportedURL, BlockedAddress) as exc:
            error, permanent = str(exc), True  # policy refusal: retrying cannot help
        except FetchError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must not lose the delivery: log it, retry later
            log.exception("webhook %s: unexpected error while sending", delivery.id)
            error = f"internal error while sending ({type(exc).__name__})"
        attempt = DeliveryAttempt(
            delivery.attempts,
            started_at,
            int((time.monotonic() - began) * 1000),
            status_code,
            error,
        )
        finished = clock()
        next_at: datetime | None = None
        if error is None:
            status = DELIVERED
        elif permanent or delivery.attempts >= self._max_attempts:
            status = FAILED
        else:
            status = PENDING
            next_at = finished + timedelta(seconds=self.backoff_s(delivery.attempts))
        async with self._db.begin() as conn:
            applied = await outbox.record_attempt(
                conn, delivery, attempt, status=status, next_attempt_at=next_at, now=finished
            )
        if not applied:
            log.warning(
                "webhook %s: claim lost before attempt %s was recorded",
                delivery.id,
                attempt.attempt,
            )
        elif status == FAILED:
            log.warning(
                "webhook %s (%s) failed after %s attempt(s): %s",
                delivery.id,
                delivery.event_type,
                attempt.attempt,
                error,
            )
        else:
            log.info(
                "webhook %s attempt %s: %s", delivery.id, attempt.attempt, error or "delivered"
            )

    async def run(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        """Dispatch until `stop` is set: at once after `notify()`, else every `interval_s`
        (immediately again while full batches keep coming)."""
        while not stop.is_set():
            self._wake.clear()
            try:
                sent = await self.run_once()
            except ServiceUnavailable as exc:
                log.warning("webhook dispatcher: %s", exc)
                sent = 0
            except Exception:
                log.exception("webhook dispatcher: dispatch round failed")
                sent = 0
            if sent >= self._batch_size:
                continue
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            try:
                await asyncio.wait(waiters, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
