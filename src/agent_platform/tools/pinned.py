"""Connections pinned to validated addresses, under one deadline.

The SSRF guard validates a URL and resolves its host once; these httpcore pieces then make
sure a request can only connect to those addresses (no second DNS lookup, so no DNS
rebinding), while the hostname still drives `Host`, SNI and certificate checks, and that every
socket operation ends by one absolute deadline. Used by `NetGuard.fetch` (GET, for tools) and
by the webhook transport (POST).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import httpcore

if TYPE_CHECKING:
    from agent_platform.tools.netguard import Target


class Deadline:
    """One absolute deadline for a whole fetch."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._at = time.monotonic() + timeout_s

    def remaining(self) -> float:
        return self._at - time.monotonic()

    def clamp(self, timeout: float | None, exc: type[Exception]) -> float:
        """The per-operation timeout to use: never beyond the deadline; `exc` once it passed."""
        left = self.remaining()
        if left <= 0:
            raise exc("deadline exceeded")
        return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every operation ends by the fetch deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

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
        return DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, clamped), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class PinnedBackend(httpcore.NetworkBackend):
    """Opens connections only to the pre-validated addresses of the one expected host."""

    def __init__(self, target: Target, deadline: Deadline) -> None:
        self._target = target
        self._deadline = deadline
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
            return DeadlineStream(stream, self._deadline)
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, max(self._deadline.remaining(), 0.0)))


@contextmanager
def pinned_exchange(
    target: Target,
    deadline: Deadline,
    method: str,
    headers: list[tuple[bytes, bytes]],
    *,
    ssl_context: ssl.SSLContext,
    expired: Exception,
    failed: Callable[[str], Exception],
    peer: str,
    content: bytes | None = None,
) -> Iterator[httpcore.Response]:
    """Send one request over a single connection pinned to the target's validated addresses
    and yield the streaming response.

    Transport errors become the caller's errors: `expired` once the deadline has passed,
    `failed(reason)` otherwise (`peer` names the other side in that reason)."""
    left = max(deadline.remaining(), 0.001)
    url = httpcore.URL(scheme=target.scheme, host=target.host, port=target.port, target=target.path)
    extensions = {"timeout": {"connect": left, "read": left, "write": left, "pool": left}}
    try:
        with (
            httpcore.ConnectionPool(
                ssl_context=ssl_context,
                max_connections=1,
                retries=0,
                network_backend=PinnedBackend(target, deadline),
            ) as pool,
            pool.stream(
                method, url, headers=headers, content=content, extensions=extensions
            ) as response,
        ):
            yield response
    except httpcore.TimeoutException as exc:
        raise expired from exc
    except httpcore.ConnectError as exc:
        if deadline.remaining() <= 0:
            raise expired from exc
        raise failed(connect_failure(target, exc)) from exc
    except (httpcore.ProtocolError, httpcore.NetworkError) as exc:
        if deadline.remaining() <= 0:
            raise expired from exc
        raise failed(
            f"the connection to {target.host} failed or the {peer} sent an invalid HTTP "
            f"response ({exc or type(exc).__name__})"
        ) from exc


def connect_failure(target: Target, exc: BaseException) -> str:
    """A readable reason for a failed connection or TLS handshake."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 5:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(c, ssl.SSLCertVerificationError) for c in chain):
        return f"the TLS certificate of {target.host} could not be verified"
    if any(isinstance(c, ssl.SSLError) for c in chain):
        return f"the TLS handshake with {target.host} failed"
    return f"could not connect to {target.host} on port {target.port}"
