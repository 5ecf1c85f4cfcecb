"""Settings: every knob of the platform, read once from the environment (and `.env`).

The seed template's variable names are kept (`DATABASE_URL`, `REDIS_URL`, `API_HOST`,
`API_PORT`, `DEFAULT_MODEL`, `ANTHROPIC_API_KEY`, `MAX_EXECUTION_TIME`, `MAX_RETRIES`,
`TENANT_*`, `OMNISTRATE_*`). A bad value fails at startup with one line naming the variable.
"""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent_platform.tools.base import TenantContext

CommaList = Annotated[list[str], NoDecode]


class ConfigError(Exception):
    """A setting is invalid; the message is one line naming the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Storage and coordination
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; empty = SQLite file in DATA_DIR (embedded mode)."
    )
    redis_url: str | None = Field(None, description="Redis URL; empty = in-memory (embedded).")
    redis_namespace: str = Field(
        "ap", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Prefix of every Redis key/channel."
    )
    db_pool_size: int = Field(
        10, ge=1, le=200, description="Connections each process keeps open (a fixed pool)."
    )
    data_dir: Path = Field(Path("data"), description="Where embedded mode keeps its SQLite file.")

    # HTTP
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    max_request_bytes: int = Field(1_048_576, ge=1024)
    sse_keepalive_s: float = Field(15, gt=0, description="Keep-alive comment interval.")
    sync_wait_max_s: float = Field(
        0, ge=0, description="Longest a waiting execute blocks; 0 = MAX_EXECUTION_TIME + 30 s."
    )

    # Models
    default_model: str = "claude-sonnet-5-5"
    allowed_models: CommaList = Field(
        default_factory=list, description="Models a request may name; empty = DEFAULT_MODEL only."
    )
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    anthropic_thinking_effort: Literal["off", "low", "medium", "high", "xhigh", "max"] = "off"
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    model_max_tokens: int = Field(4096, ge=16)
    provider_timeout_s: float = Field(120, gt=0)

    # Executions
    max_execution_time: int = Field(300, ge=1, description="Seconds an execution may run.")
    max_retries: int = Field(
        3, ge=0, le=20, description="Provider retries per call, and extra attempts after a crash."
    )
    default_max_steps: int = Field(10, ge=1)
    max_steps_limit: int = Field(50, ge=1)
    max_task_chars: int = Field(32_000, ge=1)
    max_metadata_bytes: int = Field(8_192, ge=2)

    # Worker
    worker_concurrency: int = Field(16, ge=1, le=1024)
    lease_s: float = Field(30, gt=1)
    poll_interval_s: float = Field(2.0, gt=0)
    reaper_interval_s: float = Field(5.0, gt=0)

    # Sandbox for model-written code
    sandbox: Literal["process", "in-process"] = Field(
        "process",
        description="process: a child process per execution (isolated); in-process: "
        "smolagents' interpreter inside the worker (development only, not a boundary).",
    )
    sandbox_memory_mb: int = Field(512, ge=64)
    sandbox_cpu_seconds: int = Field(60, ge=1)
    sandbox_step_timeout_s: float = Field(60, gt=0)
    sandbox_max_tool_calls: int = Field(100, ge=1)
    sandbox_max_output_bytes: int = Field(65_536, ge=1024)
    sandbox_prefork: int = Field(4, ge=0, le=64)

    # Tools
    allowed_private_networks: CommaList = Field(default_factory=list)
    web_fetch_timeout_s: float = Field(20, gt=0)
    web_fetch_max_bytes: int = Field(2_000_000, ge=1024)
    web_search_max_results: int = Field(10, ge=1, le=50)

    # Webhooks (instance mode: the deployment's tenant defaults)
    webhook_url: str | None = Field(
        None, description="Default URL notified when an execution ends (per-request override)."
    )
    webhook_secret: SecretStr | None = Field(
        None, description="Standard Webhooks signing secret, `whsec_<base64>`."
    )
    webhook_max_attempts: int = Field(8, ge=1, le=30)
    webhook_timeout_s: float = Field(10, gt=0)

    # Tenant context (instance mode: injected by Omnistrate)
    tenant_id: str = "default"
    tenant_email: str | None = None
    tenant_name: str | None = None
    tenant_org_id: str | None = None
    tenant_org_name: str | None = None
    omnistrate_instance_id: str | None = None
    omnistrate_resource_id: str | None = None
    omnistrate_service_id: str | None = None
    omnistrate_plan_id: str | None = None
    omnistrate_environment: str | None = None

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("allowed_models", "allowed_private_networks", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_private_networks")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("anthropic_base_url", "openai_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        """A provider's address: the SDKs take any string and fail only at the first call."""
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        """Accept the URLs operators paste (`postgres://`, `postgresql://`) and pick asyncpg."""
        if not value:
            return None
        for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value[len(prefix) :]
        if value.startswith("sqlite://") and not value.startswith("sqlite+aiosqlite://"):
            return "sqlite+aiosqlite://" + value[len("sqlite://") :]
        if not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("must be a postgresql:// or sqlite:// URL")
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'agent_platform.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def models(self) -> list[str]:
        """The allowlist a request's `model` is checked against (the default always included)."""
        return list(dict.fromkeys([self.default_model, *self.allowed_models]))

    @property
    def sync_wait_s(self) -> float:
        return self.sync_wait_max_s or self.max_execution_time + 30.0

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    @cached_property
    def tenant(self) -> TenantContext:
        return TenantContext(
            id=self.tenant_id,
            email=self.tenant_email,
            name=self.tenant_name,
            org_id=self.tenant_org_id,
            org_name=self.tenant_org_name,
            instance_id=self.omnistrate_instance_id,
            environment=self.omnistrate_environment,
            extra={
                k: v
                for k, v in {
                    "resource_id": self.omnistrate_resource_id,
                    "service_id": self.omnistrate_service_id,
                    "plan_id": self.omnistrate_plan_id,
                }.items()
                if v
            },
        )


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning a validation error into one line that names the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise ConfigError(f"invalid {name}: {first['msg']}") from None
