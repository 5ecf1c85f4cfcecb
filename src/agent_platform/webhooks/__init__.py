"""Signed, retried, logged webhooks through a durable outbox (Standard Webhooks format).

The worker enqueues a delivery inside the transaction that finishes an execution
(`outbox.enqueue`); `WebhookDispatcher` sends due deliveries through the SSRF guard and logs
every attempt; `api/webhooks.py` exposes the log. See each module for the reasoning.
"""

from agent_platform.webhooks.dispatcher import WebhookDispatcher
from agent_platform.webhooks.outbox import (
    STEP_EVENT,
    Delivery,
    DeliveryAttempt,
    deliveries_for,
    enqueue,
    final_event_type,
    final_payload,
    step_payload,
    webhook_target,
)
from agent_platform.webhooks.signing import InvalidSignature, generate_secret, sign, verify
from agent_platform.webhooks.transport import PostResult, WebhookTransport

__all__ = [
    "STEP_EVENT",
    "Delivery",
    "DeliveryAttempt",
    "InvalidSignature",
    "PostResult",
    "WebhookDispatcher",
    "WebhookTransport",
    "deliveries_for",
    "enqueue",
    "final_event_type",
    "final_payload",
    "generate_secret",
    "sign",
    "step_payload",
    "verify",
    "webhook_target",
]
