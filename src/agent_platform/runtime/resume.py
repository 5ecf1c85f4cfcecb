"""Resume, don't restart: rebuild a rescued execution's agent memory from its stored steps and
replay its interpreter state, answering tool calls from the recorded results.

Memory is exact (it is rebuilt from what the model saw). Interpreter state is replayed: the
recorded code of each completed step runs again in the new executor, in order, with every
tool call answered from the record instead of calling the tool. If the replay diverges (a tool
call that was not recorded, an error where there was none, a different output), the executor
is discarded and the run continues without the old variables, saying so to the model and in
the next step's note — never a crash.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smolagents.local_python_executor import PythonExecutor
from smolagents.memory import ActionStep, ToolCall
from smolagents.models import ChatMessage, MessageRole
from smolagents.monitoring import AgentLogger, LogLevel, Timing, TokenUsage
from smolagents.utils import AgentError, truncate_content

from agent_platform.domain import StepType, StoredStep

_quiet = AgentLogger(level=LogLevel.OFF)


class ReplayDiverged(Exception):
    """The replayed code asked for something the record cannot answer."""


class ReplayTools:
    """Answers tool calls from one step's record, in order; anything else diverges."""

    def __init__(self) -> None:
        self.expected: deque[dict[str, Any]] | None = None
        self.divergence: str | None = None

    @property
    def active(self) -> bool:
        return self.expected is not None

    def start(self, calls: list[dict[str, Any]]) -> None:
        self.expected = deque(calls)

    def stop(self) -> list[dict[str, Any]]:
        left = list(self.expected or ())
        self.expected = None
        return left

    def answer(self, name: str, arguments: dict[str, Any]) -> Any:
        assert self.expected is not None
        if not self.expected:
            self.divergence = f"the code called {name}() which was not called before"
            raise ReplayDiverged(self.divergence)
        recorded = self.expected.popleft()
        if recorded.get("name") != name or recorded.get("arguments") != arguments:
            self.divergence = (
                f"the code called {name}({arguments}) where {recorded.get('name')}"
                f"({recorded.get('arguments')}) was recorded"
            )
            raise ReplayDiverged(self.divergence)
        if recorded.get("error"):
            return f"Error: {recorded['error']}"
        return recorded.get("result")


@dataclass
class ReplayReport:
    replayed_steps: int
    diverged_at: int | None = None
    reason: str | None = None

    @property
    def note(self) -> str:
        if self.diverged_at is None:
            return f"resumed after step {self.replayed_steps}; interpreter state restored by replay"
        return (
            f"resumed after step {self.replayed_steps}; interpreter state could not be restored "
            f"(replay of step {self.diverged_at} diverged: {self.reason}); "
            "variables from earlier steps are gone"
        )


def action_history(history: list[StoredStep]) -> list[StoredStep]:
    return [s for s in history if s.type is StepType.ACTION]


def rebuild_memory(history: list[StoredStep]) -> list[ActionStep]:
    """The agent's memory steps as they were: model output, code, observation, error, usage."""
    steps = []
    for s in action_history(history):
        start = s.started_at.timestamp()
        steps.append(
            ActionStep(
                step_number=s.step,
                timing=Timing(start_time=start, end_time=start + s.duration_ms / 1000),
                model_output=s.model_output,
                model_output_message=ChatMessage(
                    role=MessageRole.ASSISTANT, content=s.model_output or ""
                ),
                code_action=s.code,
                tool_calls=[
                    ToolCall(name="python_interpreter", arguments=s.code, id=f"call_{s.step}")
                ]
                if s.code
                else None,
                observations=s.observation,
                error=AgentError(s.error, _quiet) if s.error else None,
                token_usage=TokenUsage(input_tokens=s.input_tokens, output_tokens=s.output_tokens),
            )
        )
    return steps


def replay(executor: PythonExecutor, history: list[StoredStep], tools: ReplayTools) -> ReplayReport:
    """Run the recorded code of each completed step again, checking it behaves the same."""
    actions = action_history(history)
    for s in actions:
        if not s.code:
            continue
        tools.start(list(s.tool_calls))
        raised: Exception | None = None
        observation = None
        try:
            out = executor(s.code)
            observation = (
                "Execution logs:\n"
                + out.logs
                + "Last output from code snippet:\n"
                + truncate_content(str(out.output))
            )
        except Exception as exc:  # the model's code may raise; compare with the record
            raised = exc
        left = tools.stop()
        reason = tools.divergence
        if reason is None and (raised is None) != (s.error is None):
            reason = "it raised" if raised is not None else "it no longer raises"
            if raised is not None:
                reason += f" ({raised})"
        if reason is None and raised is None and observation != s.observation:
            reason = "its output differs from the recorded one"
        if reason is None and left:
            reason = f"{len(left)} recorded tool call(s) were not made again"
        if reason is not None:
            return ReplayReport(len(actions), diverged_at=s.step, reason=reason)
    return ReplayReport(len(actions))


def final_answer_of(history: list[StoredStep]) -> str | None:
    """A final answer recorded just before the worker died: the execution is already done."""
    if history and history[-1].type is StepType.FINAL_ANSWER:
        return history[-1].final_answer or ""
    return None


ExecutorFactory = Callable[[str], PythonExecutor]
