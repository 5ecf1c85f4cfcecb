"""Sandbox pools for the sandbox test modules: started with secrets in the worker's
environment (what a sandbox must never see), and sandboxes that always get closed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from smolagents.default_tools import FinalAnswerTool

from agent_platform.runtime.sandbox import SandboxExecutor, SandboxPool


@contextlib.contextmanager
def started_pool(secret_env: dict[str, str], **kwargs: Any) -> Iterator[SandboxPool]:
    saved = dict(os.environ)
    os.environ.update(secret_env)
    pool = SandboxPool(**kwargs)
    pool.start()
    try:
        yield pool
    finally:
        pool.stop()
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def spawned(pool: SandboxPool, execution_id: str) -> Iterator[SandboxExecutor]:
    """A fresh sandbox with the stock `final_answer`, closed on the way out."""
    executor = pool.spawn(execution_id=execution_id)
    executor.send_tools({"final_answer": FinalAnswerTool()})
    try:
        yield executor
    finally:
        executor.close()
