"""`tenant_info`: the current tenant's context (who the agent works for)."""

from __future__ import annotations

from typing import Any, ClassVar

from agent_platform.tools.base import ToolContext


class TenantInfoTool:
    name: ClassVar[str] = "tenant_info"
    description: ClassVar[str] = (
        "Returns information about the current tenant (the customer this agent works for): "
        "tenant id, email, name, organization id and name, deployment instance id and "
        "environment. Use it to personalise answers or when asked who the user is."
    )
    inputs: ClassVar[dict[str, dict[str, Any]]] = {}
    output_type: ClassVar[str] = "string"

    def run(self, ctx: ToolContext, **kwargs: Any) -> str:
        t = ctx.tenant
        rows = [
            ("Tenant ID", t.id),
            ("Email", t.email),
            ("Name", t.name),
            ("Organization", f"{t.org_name} (ID: {t.org_id})" if t.org_name or t.org_id else None),
            ("Instance", t.instance_id),
            ("Environment", t.environment),
            *[(key.replace("_", " ").capitalize(), value) for key, value in t.extra.items()],
        ]
        lines = [f"- {label}: {value if value else 'unknown'}" for label, value in rows]
        return "Tenant information:\n" + "\n".join(lines)
