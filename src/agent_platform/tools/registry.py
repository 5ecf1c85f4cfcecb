"""The one registry of tools: what exists, what a request may enable, how to describe it."""

from __future__ import annotations

import ipaddress
from typing import Any

from agent_platform.config import Settings
from agent_platform.errors import InvalidRequest
from agent_platform.tools.base import PlatformTool


class ToolRegistry:
    def __init__(self, tools: list[PlatformTool]) -> None:
        self._tools: dict[str, PlatformTool] = {t.name: t for t in tools}

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def get(self, name: str) -> PlatformTool:
        return self._tools[name]

    def resolve(self, requested: list[str] | None) -> list[str]:
        """None = every default tool; [] = none; a list = that subset (unknown name → 422)."""
        if requested is None:
            return self.names
        unknown = [name for name in requested if name not in self._tools]
        if unknown:
            raise InvalidRequest(
                f"unknown tool(s): {', '.join(unknown)}; valid tools are: {', '.join(self.names)}",
                field="tools",
                unknown=unknown,
                valid=self.names,
            )
        return list(dict.fromkeys(requested))

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "description": t.description,
                "inputs": t.inputs,
                "output_type": t.output_type,
            }
            for t in self._tools.values()
        ]


def default_registry(settings: Settings) -> ToolRegistry:
    from agent_platform.tools.netguard import NetGuard
    from agent_platform.tools.tenant_info import TenantInfoTool
    from agent_platform.tools.visit_webpage import VisitWebpageTool
    from agent_platform.tools.web_search import WebSearchTool

    guard = NetGuard(
        allowed_networks=[
            ipaddress.ip_network(n, strict=False) for n in settings.allowed_private_networks
        ]
    )
    return ToolRegistry(
        [
            TenantInfoTool(),
            WebSearchTool(max_results=settings.web_search_max_results),
            VisitWebpageTool(
                guard,
                timeout_s=settings.web_fetch_timeout_s,
                max_bytes=settings.web_fetch_max_bytes,
            ),
        ]
    )
