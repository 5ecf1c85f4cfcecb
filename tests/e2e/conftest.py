from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL
from tests.e2e.procs import Processes
from tests.fakes.llm_server import FakeLLMServer


@pytest.fixture
def procs(
    llm: FakeLLMServer, pg_database: str, redis_namespace: str, tmp_path: Path
) -> Iterator[Processes]:
    env = {
        "DATABASE_URL": pg_database,
        "REDIS_URL": REDIS_URL,
        "REDIS_NAMESPACE": redis_namespace,
        "ANTHROPIC_API_KEY": "test",
        "ANTHROPIC_BASE_URL": llm.base_url,
        "TENANT_ID": "tenant-e2e",
        "LEASE_S": "3",
        "POLL_INTERVAL_S": "0.5",
        "REAPER_INTERVAL_S": "0.5",
        "LOG_LEVEL": "warning",
    }
    processes = Processes(env, tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()
