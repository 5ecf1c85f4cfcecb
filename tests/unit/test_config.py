"""Settings: seed names, URL mapping, one-line errors naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent_platform.config import ConfigError, Settings, load_settings


def test_postgres_urls_are_mapped_to_asyncpg() -> None:
    for url in ("postgresql://u@h/db", "postgres://u@h/db"):
        assert Settings(_env_file=None, database_url=url).database_url == (  # type: ignore[call-arg]
            "postgresql+asyncpg://u@h/db"
        )


def test_embedded_default_is_sqlite_in_data_dir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert s.is_sqlite and str(tmp_path) in s.resolved_database_url


def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_PORT", "eighty")
    with pytest.raises(ConfigError, match=r"^invalid API_PORT: "):
        load_settings(_env_file=None)
    monkeypatch.delenv("API_PORT")
    monkeypatch.setenv("DATABASE_URL", "mysql://x")
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load_settings(_env_file=None)
    monkeypatch.delenv("DATABASE_URL")
    for variable in ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"):
        for bad in ("localhost:11434/v1", "ftp://models.example", "http://", "http://a b"):
            monkeypatch.setenv(variable, bad)
            with pytest.raises(ConfigError, match=rf"^invalid {variable}: .*http"):
                load_settings(_env_file=None)
        monkeypatch.setenv(variable, "http://localhost:11434/v1")
        assert load_settings(_env_file=None).model_dump()[variable.lower()] == (
            "http://localhost:11434/v1"
        )
        monkeypatch.delenv(variable)


def test_comma_lists_and_seed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_MODELS", "claude-opus-5, llama3.2")
    monkeypatch.setenv("MAX_EXECUTION_TIME", "60")
    monkeypatch.setenv("TENANT_ORG_NAME", "Acme")
    s = load_settings(_env_file=None)
    assert s.models == ["claude-sonnet-5-5", "claude-opus-5", "llama3.2"]
    assert s.max_execution_time == 60 and s.tenant.org_name == "Acme"


def test_cli_reports_bad_setting_in_one_line() -> None:
    exe = [sys.executable, "-m", "agent_platform.cli", "migrate"]
    env = {"PATH": "/usr/bin:/bin", "MAX_RETRIES": "-4"}
    result = subprocess.run(exe, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "agent-platform: invalid MAX_RETRIES: Input should be greater than or equal to 0"
    ]
