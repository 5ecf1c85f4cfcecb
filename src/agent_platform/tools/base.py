"""The tool contract: what every platform tool declares and how the worker calls it.

Tools run on the trusted side (the worker), never inside the sandbox. The agent sees a
smolagents proxy with the same name, description and inputs; its calls are brokered back
to `PlatformTool.run` with the execution's `ToolContext`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class TenantContext:
    """Who the execution runs for; what `tenant_info` reports."""

    id: str
    email: str | None = None
    name: str | None = None
    org_id: str | None = None
    org_name: str | None = None
    instance_id: str | None = None
    environment: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolContext:
    """Everything a tool may know about the call it serves."""

    tenant: TenantContext
    execution_id: str


class ToolFailure(Exception):
    """A tool could not do what was asked; the message goes back to the agent as an observation."""


class PlatformTool(Protocol):
    """A tool the worker runs on the agent's behalf. `run` is synchronous: it is called from
    the agent's worker thread."""

    name: ClassVar[str]
    description: ClassVar[str]
    inputs: ClassVar[dict[str, dict[str, Any]]]
    output_type: ClassVar[str]

    def run(self, ctx: ToolContext, **kwargs: Any) -> Any: ...
