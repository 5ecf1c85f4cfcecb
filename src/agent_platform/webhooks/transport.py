"""POST through the SSRF guard: what `NetGuard.fetch` does for GET, for webhook deliveries.

The webhook URL is chosen by a tenant, so it gets the same treatment as an agent-supplied
URL: `NetGuard.check` validates it and resolves the host once, and the connection is opened
only to those validated addresses (our own `httpcore` network backend, so a second DNS answer
can never redirect us to an internal address; the hostname still drives `Host`, SNI and
certificate checks). One deadline covers DNS, connect, TLS, upload and the response.

Unlike `fetch`, redirects are never followed: a 3xx is a failed delivery (the Standard
Webhooks guidance; following it would let a receiver bounce signed requests elsewhere).
Only a short prefix of the response body is read, to explain a failure.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from agent_platform.tools.netguard import FetchFailed, FetchTimeout, NetGuard
from agent_platform.tools.pinned import Deadline, pinned_exchange

__all__ = ["USER_AGENT", "PostResult", "WebhookTransport"]

USER_AGENT = "AgentPlatform-Webhooks/1.0"
BODY_PREVIEW_BYTES = 512


@dataclass(frozen=True)
class PostResult:
    """The receiver's answer: status code and the start of its body (for the delivery log)."""

    status: int
    body_preview: str


class WebhookTransport:
    """Sends one signed delivery; blocking (run it with `asyncio.to_thread`).

    Raises the guard's `FetchError`s: `UnsupportedURL` / `BlockedAddress` (refused by
    policy, nothing was sent), `FetchFailed` (DNS, connect, TLS, dropped connection),
    `FetchTimeout` (the deadline passed)."""

    def __init__(self, guard: NetGuard, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._guard = guard
        self._ssl_context = ssl_context or httpx.create_ssl_context()

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float
    ) -> PostResult:
        deadline = Deadline(timeout_s)
        target = self._guard.check(url, timeout_s=timeout_s)
        request_headers = [
            (b"Host", target.host_header.encode("ascii")),
            (b"User-Agent", USER_AGENT.encode("ascii")),
            (b"Content-Type", b"application/json"),
            (b"Content-Length", str(len(body)).encode("ascii")),
            (b"Connection", b"close"),
            *((k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()),
        ]
        expired = FetchTimeout(f"{target.url} did not answer within {timeout_s:g} s")
        with pinned_exchange(
            target,
            deadline,
            "POST",
            request_headers,
            ssl_context=self._ssl_context,
            expired=expired,
            failed=FetchFailed,
            peer="receiver",
            content=body,
        ) as response:
            preview = bytearray()
            for chunk in response.iter_stream():
                preview += chunk
                if len(preview) >= BODY_PREVIEW_BYTES:
                    break
            text = bytes(preview[:BODY_PREVIEW_BYTES]).decode("utf-8", errors="replace")
            return PostResult(response.status, text)
