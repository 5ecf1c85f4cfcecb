"""Tool brokering: the worker side of every tool call an execution makes.

The agent (and, with the sandbox, the child process) holds only proxies; each call lands in
`ToolBroker.call`, which checks the tool is enabled for this execution, enforces the call
cap, runs the platform tool with the execution's context and records the call for its step.
"""

from __future__ import annotations

import json
import threading
import time
from functools import cache
from typing import Any

from smolagents.tools import Tool

from agent_platform.runtime.resume import ReplayTools
from agent_platform.tools.base import ToolContext, ToolFailure
from agent_platform.tools.registry import ToolRegistry


class ToolCallRefused(Exception):
    """Raised into the model's code: the call is not allowed."""


class ToolBroker:
    def __init__(
        self,
        registry: ToolRegistry,
        enabled: list[str],
        ctx: ToolContext,
        *,
        max_calls: int = 100,
        max_result_chars: int = 100_000,
    ) -> None:
        self.registry = registry
        self.enabled = list(enabled)
        self.ctx = ctx
        self.max_calls = max_calls
        self.max_result_chars = max_result_chars
        self.calls_made = 0
        self.replay = ReplayTools()
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if name not in self.enabled:
            raise ToolCallRefused(f"tool {name!r} is not enabled for this execution")
        with self._lock:
            if self.calls_made >= self.max_calls:
                raise ToolCallRefused(
                    f"tool call limit reached ({self.max_calls} calls per execution)"
                )
            self.calls_made += 1
        tool = self.registry.get(name)
        arguments = dict(zip(tool.inputs, args, strict=False)) | kwargs
        if self.replay.active:  # resuming: answer from the record, never call again
            return self.replay.answer(name, arguments)
        started = time.perf_counter()
        error: str | None = None
        try:
            result = tool.run(self.ctx, **arguments)
        except ToolFailure as exc:
            result, error = f"Error: {exc}", str(exc)
        if isinstance(result, str) and len(result) > self.max_result_chars:
            result = result[: self.max_result_chars] + "\n[truncated]"
        record = {
            "name": name,
            "arguments": arguments,
            "result": _recordable(result),
            "error": error,
            "duration_ms": int((time.perf_counter() - started) * 1000),
        }
        with self._lock:
            self._pending.append(record)
        return result

    def drain(self) -> list[dict[str, Any]]:
        """The calls made since the last drain: one step's tool calls."""
        with self._lock:
            calls, self._pending = self._pending, []
        return calls

    def proxies(self) -> list[Tool]:
        """smolagents tools with the same names, descriptions and inputs, brokered here."""
        return [_proxy_class(self.registry.get(name))(self) for name in self.enabled]


def _recordable(value: Any) -> Any:
    """Tool results are stored whole (a resumed execution replays them), as JSON values."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | dict):
        try:
            json.dumps(value)
            return value
        except (TypeError, ValueError):
            pass
    return repr(value)


@cache
def _proxy_class(spec: Any) -> type[Tool]:
    """One smolagents `Tool` class per platform tool, made once: a class is a reference cycle
    that only the garbage collector frees, so one per execution would pile up between its
    full collections (and cost a class creation each time)."""

    class BrokeredTool(Tool):
        name = spec.name
        description = spec.description
        inputs = spec.inputs
        output_type = spec.output_type
        skip_forward_signature_validation = True

        def __init__(self, broker: ToolBroker) -> None:
            super().__init__()
            self.broker = broker

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.broker.call(self.name, args, kwargs)

    return BrokeredTool
