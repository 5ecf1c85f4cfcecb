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
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from agent_platform.tools.netguard import FetchFailed, FetchTimeout, NetGuard, Target

__all__ = ["USER_AGENT", "PostResult", "WebhookTransport"]

USER_AGENT = "AgentPlatform-Webhooks/1.0"
BODY_PREVIEW_BYTES = 512


@dataclass(frozen=True)
class PostResult:
    """The receiver's answer: status code and the start of its body (for the delivery log)."""

    status: int
    body_preview: str


class _Deadline:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._at = time.monotonic() + timeout_s

    def remaining(self) -> float:
        return self._at - time.monotonic()

    def clamp(self, timeout: float | None, exc: type[Exception]) -> float:
        left = self.remaining()
        if left <= 0:
            raise exc("deadline exceeded")
        return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A socket stream whose every operation ends by the delivery deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._inner, self._deadline = inner, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        clamped = self._deadline.clamp(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, clamped), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects only to the validated addresses of the one expected host and port."""

    def __init__(self, target: Target, deadline: _Deadline) -> None:
        self._target, self._deadline = target, deadline
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if host != self._target.host or port != self._target.port:
            raise httpcore.ConnectError(f"unexpected connection to {host}:{port}")
        error: Exception = httpcore.ConnectError(f"no address to connect to for {host}")
        for address in self._target.addresses:
            try:
                stream = self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=self._deadline.clamp(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                error = exc
                continue
            return _Stream(stream, self._deadline)
        raise error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, max(self._deadline.remaining(), 0.0)))


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
        deadline = _Deadline(timeout_s)
        target = self._guard.check(url, timeout_s=timeout_s)
        request_headers = [
            (b"Host", target.host_header.encode("ascii")),
            (b"User-Agent", USER_AGENT.encode("ascii")),
            (b"Content-Type", b"application/json"),
            (b"Content-Length", str(len(body)).encode("ascii")),
            (b"Connection", b"close"),
            *((k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()),
        ]
        request_url = httpcore.URL(
            scheme=target.scheme, host=target.host, port=target.port, target=target.path
        )
        left = max(deadline.remaining(), 0.001)
        extensions = {"timeout": {"connect": left, "read": left, "write": left, "pool": left}}
        expired = FetchTimeout(f"{target.url} did not answer within {timeout_s:g} s")
        try:
            with (
                httpcore.ConnectionPool(
                    ssl_context=self._ssl_context,
                    max_connections=1,
                    retries=0,
                    network_backend=_PinnedBackend(target, deadline),
                ) as pool,
                pool.stream(
                    "POST",
                    request_url,
                    headers=request_headers,
                    content=body,
                    extensions=extensions,
                ) as response,
            ):
                preview = bytearray()
                for chunk in response.iter_stream():
                    preview += chunk
                    if len(preview) >= BODY_PREVIEW_BYTES:
                        break
                text = bytes(preview[:BODY_PREVIEW_BYTES]).decode("utf-8", errors="replace")
                return PostResult(response.status, text)
        except httpcore.TimeoutException as exc:
            raise expired from exc
        except httpcore.ConnectError as exc:
            if deadline.remaining() <= 0:
                raise expired from exc
            raise FetchFailed(_connect_failure(target, exc)) from exc
        except (httpcore.ProtocolError, httpcore.NetworkError) as exc:
            if deadline.remaining() <= 0:
                raise expired from exc
            raise FetchFailed(
                f"the connection to {target.host} failed or the receiver sent an invalid HTTP "
                f"response ({exc or type(exc).__name__})"
            ) from exc


def _connect_failure(target: Target, exc: BaseException) -> str:
    """A readable reason for a failed connection or TLS handshake."""
    cause: BaseException | None = exc
    for _ in range(5):
        if cause is None:
            break
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"the TLS certificate of {target.host} could not be verified"
        if isinstance(cause, ssl.SSLError):
            return f"the TLS handshake with {target.host} failed"
        cause = cause.__cause__ or cause.__context__
    return f"could not connect to {target.host} on port {target.port}"
