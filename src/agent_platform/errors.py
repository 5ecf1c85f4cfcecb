"""The platform's exception tree. Each class carries its error code and HTTP status; the API
maps them to JSON in one place (`api/errors.py`).

    PlatformError
    ├── NotFound                 404  missing, or another tenant's (indistinguishable)
    ├── InvalidRequest           422  a field is valid JSON but not acceptable (unknown tool…)
    ├── Conflict                 409
    ├── ServiceUnavailable       503  database down, no provider configured
    │   └── ProviderNotConfigured
    └── ProviderError                 an LLM call failed (carries status and retryable)
"""

from __future__ import annotations

from typing import Any


class PlatformError(Exception):
    code = "internal_error"
    status_code = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(PlatformError):
    code = "not_found"
    status_code = 404


class InvalidRequest(PlatformError):
    code = "invalid_request"
    status_code = 422


class Conflict(PlatformError):
    code = "conflict"
    status_code = 409


class ServiceUnavailable(PlatformError):
    code = "service_unavailable"
    status_code = 503


class ProviderNotConfigured(ServiceUnavailable):
    code = "provider_not_configured"


class ProviderError(PlatformError):
    """An LLM provider call failed. `retryable` decides whether backoff applies."""

    code = "provider_error"
    status_code = 502

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, status=status)
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class LeaseLost(Exception):
    """This worker's attempt no longer owns the execution (fenced out); stop quietly."""
