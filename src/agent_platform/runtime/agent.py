"""Run one execution's CodeAgent and turn its memory steps into `StepRecord`s as they happen.

Agents are built per execution (their memory and interpreter state must not leak), but from
cached parts: the prompt templates are parsed once and the rendered system prompt is cached
per tool set, which is most of smolagents' per-run cost.
"""

from __future__ import annotations

import inspect
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml
from smolagents import CodeAgent, LogLevel
from smolagents.local_python_executor import LocalPythonExecutor, PythonExecutor
from smolagents.memory import (
    ActionStep,
    CallbackRegistry,
    FinalAnswerStep,
    PlanningStep,
    TaskStep,
)
from smolagents.monitoring import AgentLogger
from smolagents.utils import AgentError, AgentMaxStepsError

from agent_platform.domain import (
    ExecutionStatus,
    RunOutcome,
    StepRecord,
    StepType,
    StopReason,
    StoredStep,
)
from agent_platform.errors import LeaseLost, ProviderError
from agent_platform.runtime.broker import ToolBroker
from agent_platform.runtime.providers import Interrupted, PlatformModel, Providers
from agent_platform.runtime.resume import (
    action_history,
    final_answer_of,
    rebuild_memory,
    replay,
)
from agent_platform.runtime.sandbox import SandboxError, SandboxExecutor
from agent_platform.tools.base import TenantContext, ToolContext
from agent_platform.tools.registry import ToolRegistry

AUTHORIZED_IMPORTS = [
    "math", "statistics", "random", "datetime", "time", "re", "json", "itertools",
    "collections", "functools", "unicodedata", "string", "decimal", "fractions",
]  # fmt: skip

StepSink = Callable[[StepRecord], None]
ExecutorFactory = Callable[[str], PythonExecutor]


class StopSignal:
    """Why and when an execution must stop: timeout, cancel, drain or a lost lease.

    Thread-safe; hooks run once, on the first `set` (e.g. kill the sandbox, wake the loop)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: StopReason | None = None
        self._hooks: list[Callable[[StopReason], None]] = []
        self._lock = threading.Lock()

    def on_set(self, hook: Callable[[StopReason], None]) -> None:
        with self._lock:
            if self.reason is None:
                self._hooks.append(hook)
                return
        hook(self.reason)

    def discard(self, hook: Callable[[StopReason], None]) -> None:
        """Drop a hook whose work is over (a hook keeps what it refers to alive)."""
        with self._lock:
            if hook in self._hooks:
                self._hooks.remove(hook)

    def set(self, reason: StopReason) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            hooks, self._hooks = self._hooks, []
        self.event.set()
        for hook in hooks:
            hook(reason)

    def is_set(self) -> bool:
        return self.event.is_set()


class ExecutionStopped(Exception):
    """Raised at a step boundary once the stop signal is set."""


@dataclass(frozen=True)
class AgentJob:
    execution_id: str
    tenant: TenantContext
    task: str
    tools: list[str]
    model: str
    max_steps: int
    history: tuple[StoredStep, ...] = ()  # steps completed by earlier attempts (resume)
    previous_turns: tuple[Turn, ...] = ()  # earlier executions of the same session


@dataclass(frozen=True)
class Turn:
    """An earlier task of the session and the steps that answered it."""

    task: str
    steps: tuple[StoredStep, ...]


class Drained(Exception):
    """The worker is shutting down; the execution goes back to the queue to be resumed."""


@lru_cache(maxsize=1)
def _prompt_templates() -> dict[str, Any]:
    text = resources.files("smolagents.prompts").joinpath("code_agent.yaml").read_text()
    return yaml.safe_load(text)


_system_prompts: dict[tuple[str, ...], str] = {}


class _SilentLogger(AgentLogger):
    """smolagents builds its rich renderables (syntax-highlighted code, rules, panels) before it
    looks at the log level, and a logger per agent builds a rich Console. Steps are recorded
    by the platform, so one shared logger that does nothing serves every agent."""

    def __init__(self) -> None:
        super().__init__(level=LogLevel.OFF)

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        return None

    log = log_error = log_markdown = log_code = log_rule = log_task = log_messages = _nothing


_SILENT_LOGGER = _SilentLogger()


class PlatformCodeAgent(CodeAgent):
    """CodeAgent with a cached system prompt and provider errors that are not swallowed."""

    def _setup_step_callbacks(self, step_callbacks: Any) -> None:
        """Only our callbacks: smolagents' monitor formats a console line per step (and its
        signature is introspected at every step) for a log nobody reads; the platform
        records durations and token usage itself."""
        self.step_callbacks = CallbackRegistry()
        for step_cls, callback in (step_callbacks or {}).items():
            self.step_callbacks.register(step_cls, callback)

    def initialize_system_prompt(self) -> str:
        key = (*sorted(self.tools), "|", *self.authorized_imports)
        prompt = _system_prompts.get(key)
        if prompt is None:
            prompt = _system_prompts[key] = super().initialize_system_prompt()
        return prompt

    def provide_final_answer(self, task: str) -> Any:
        """smolagents turns a failed final-answer call into a fake answer; we fail instead."""
        model = self.model
        assert isinstance(model, PlatformModel)
        model.last_error = None
        message = super().provide_final_answer(task)
        if model.last_error is not None:
            raise model.last_error
        return message


class AgentRunner:
    def __init__(
        self,
        registry: ToolRegistry,
        providers: Providers,
        executor_factory: ExecutorFactory | None = None,
    ) -> None:
        self.registry = registry
        self.providers = providers
        self.executor_factory = executor_factory or _local_executor

    def run(
        self, job: AgentJob, on_step: StepSink, stop: StopSignal, *, deadline: float | None = None
    ) -> RunOutcome:
        """Run to the end; `on_step` is called (in this thread) once per finished step."""
        history = list(job.history)
        if (answer := final_answer_of(history)) is not None:
            return _completed(answer, history)
        model = self.providers.build(job.model, stop.event)
        model.deadline = deadline
        broker = ToolBroker(
            self.registry,
            job.tools,
            ToolContext(tenant=job.tenant, execution_id=job.execution_id),
        )
        recorder = _StepRecorder(on_step, model, broker, stop)
        agent = PlatformCodeAgent(
            tools=broker.proxies(),
            model=model,
            prompt_templates=_prompt_templates(),
            additional_authorized_imports=AUTHORIZED_IMPORTS,
            executor=self.executor_factory(job.execution_id),
            max_steps=job.max_steps,
            verbosity_level=LogLevel.OFF,
            logger=_SILENT_LOGGER,
            step_callbacks={
                ActionStep: recorder,
                PlanningStep: recorder,
                FinalAnswerStep: recorder,
            },
        )
        recorder.agent = agent
        model.on_answer = recorder.model_answered

        def stop_now(reason: StopReason) -> None:
            _kill_code(agent, reason)
            if reason is not StopReason.DRAIN:  # a drain lets the step, and its call, finish
                model.interrupt()

        stop.on_set(stop_now)
        try:
            if history:
                self._restore(agent, broker, recorder, history, job.execution_id)
            # `run` treats max_steps=0 as "default", so the agent's own budget is lowered too
            agent.max_steps = max(0, job.max_steps - len(action_history(history)))
            run = agent.run(job.task, stream=True, max_steps=agent.max_steps)
            # run() has reset the memory to [this task]: put the session before it, the resumed
            # steps after it
            agent.memory.steps[:0] = _session_memory(job.previous_turns)
            agent.memory.steps.extend(rebuild_memory(history))
            final = None
            for event in run:
                if isinstance(event, FinalAnswerStep):
                    final = event.output
        except (LeaseLost, Drained):
            raise
        except BaseException as exc:  # classify by cause, in one place
            return _outcome_for_error(exc, stop)
        finally:
            _close(agent.python_executor)
            stop.discard(stop_now)
            _unlink(agent, recorder, model)
        stop_reason = StopReason.MAX_STEPS if recorder.hit_max_steps else StopReason.FINAL_ANSWER
        return RunOutcome(
            status=ExecutionStatus.COMPLETED,
            result=_as_text(final),
            stop_reason=stop_reason,
        )

    def _restore(
        self,
        agent: PlatformCodeAgent,
        broker: ToolBroker,
        recorder: _StepRecorder,
        history: list[StoredStep],
        execution_id: str,
    ) -> None:
        """Replay the interpreter state; on divergence continue with a fresh executor."""
        recorder.last_step = history[-1].step
        agent.python_executor.send_tools({**agent.tools})
        report = replay(agent.python_executor, history, broker.replay)
        broker.replay.divergence = None
        recorder.note = report.note
        if report.diverged_at is not None:
            _close(agent.python_executor)
            agent.python_executor = self.executor_factory(execution_id)
            actions = action_history(history)
            if actions:  # tell the model where it will read it: after its last observation
                actions[-1].observation = (actions[-1].observation or "") + (
                    "\n\nNote: this execution moved to another worker and the Python variables "
                    "of the earlier steps could not be restored. Recompute what you need."
                )


def _unlink(agent: PlatformCodeAgent, recorder: _StepRecorder, model: PlatformModel) -> None:
    """Break the run's reference cycles, so it is freed as soon as it ends rather than at the
    collector's next full pass (which stops the whole worker while it walks the heap): the
    agent, its model and the recorder refer to each other, and a step's error holds, through
    its traceback, the frames that hold the agent."""
    recorder.agent = None
    model.on_answer = None
    errors = [model.last_error, *(getattr(step, "error", None) for step in agent.memory.steps)]
    model.last_error = None
    seen: set[int] = set()
    while errors:
        error = errors.pop()
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        seen.add(id(error))
        error.__traceback__ = None
        errors += (error.__cause__, error.__context__)


def _session_memory(turns: tuple[Turn, ...]) -> list[Any]:
    memory: list[Any] = []
    for turn in turns:
        memory.append(TaskStep(task=turn.task))
        memory.extend(rebuild_memory(list(turn.steps)))
    return memory


def _kill_code(agent: CodeAgent, reason: StopReason) -> None:
    """Timeout and cancel end the model's code at once (a drain lets the step finish)."""
    kill = getattr(agent.python_executor, "kill", None)
    if kill is not None and reason is not StopReason.DRAIN:
        kill(reason.value)


def _close(executor: Any) -> None:
    """End the execution's sandbox without waiting for its zygote to reap it (a wait that,
    under load, would hold a thread per sandbox or let the dead ones pile up)."""
    if isinstance(executor, SandboxExecutor):
        executor.close(wait=False)
    elif (cleanup := getattr(executor, "cleanup", None)) is not None:
        cleanup()


def _completed(answer: str, history: list[StoredStep]) -> RunOutcome:
    hit_max = any(s.error and "max steps" in s.error.lower() for s in history)
    return RunOutcome(
        status=ExecutionStatus.COMPLETED,
        result=answer,
        stop_reason=StopReason.MAX_STEPS if hit_max else StopReason.FINAL_ANSWER,
    )


def _local_executor(_execution_id: str) -> PythonExecutor:
    return LocalPythonExecutor(AUTHORIZED_IMPORTS)


def _root_cause(exc: BaseException) -> BaseException:
    seen = exc
    while seen.__cause__ is not None and not isinstance(
        seen, (ProviderError, Interrupted, SandboxError)
    ):
        seen = seen.__cause__
    return seen


def _outcome_for_error(exc: BaseException, stop: StopSignal) -> RunOutcome:
    cause = _root_cause(exc)
    if isinstance(cause, LeaseLost):
        raise cause
    if stop.is_set() or isinstance(cause, (Interrupted, ExecutionStopped)):
        if stop.reason in (None, StopReason.LEASE_LOST):
            raise LeaseLost(str(exc)) from exc
        if stop.reason is StopReason.DRAIN:
            raise Drained(str(exc)) from exc
        if stop.reason is StopReason.TIMEOUT:
            return RunOutcome.timed_out()
        return RunOutcome.cancelled()
    if isinstance(cause, SandboxError):
        return RunOutcome(
            status=ExecutionStatus.FAILED,
            error=f"the sandbox running the model's code failed: {cause.reason}",
            error_code="sandbox_error",
            stop_reason=StopReason.ERROR,
        )
    if isinstance(cause, ProviderError):
        return RunOutcome(
            status=ExecutionStatus.FAILED,
            error=cause.message,
            error_code="provider_error",
            stop_reason=StopReason.ERROR,
        )
    if isinstance(cause, KeyboardInterrupt | SystemExit):
        raise exc
    return RunOutcome(
        status=ExecutionStatus.FAILED,
        error=f"the agent failed: {type(cause).__name__}: {cause}",
        error_code="agent_error",
        stop_reason=StopReason.ERROR,
    )


class _StepRecorder:
    """smolagents step callback: memory step → StepRecord → sink; then checks the stop signal."""

    # smolagents calls inspect.signature() on every callback at every step to decide whether
    # to pass keyword arguments; a declared signature answers that without introspection.
    __signature__ = inspect.Signature(
        [
            inspect.Parameter("memory_step", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
        ]
    )

    def __init__(
        self, sink: StepSink, model: PlatformModel, broker: ToolBroker, stop: StopSignal
    ) -> None:
        self.sink = sink
        self.model = model
        self.broker = broker
        self.stop = stop
        self.last_step = 0
        self.hit_max_steps = False
        self.note: str | None = None  # attached to the next recorded step
        self.agent: CodeAgent | None = None

    def __call__(self, memory_step: Any, **_: Any) -> None:
        record = self._convert(memory_step)
        if record is not None:
            record.note, self.note = self.note, None
            self.sink(record)
        finishing = isinstance(memory_step, FinalAnswerStep) or getattr(
            memory_step, "is_final_answer", False
        )  # the final answer is one instant away: record it rather than stop before it
        if self.stop.is_set() and not finishing:
            raise ExecutionStopped(str(self.stop.reason))
        broken = getattr(self.agent and self.agent.python_executor, "terminal_error", None)
        if broken is not None:  # the sandbox died: every further step would fail the same way
            raise broken

    def model_answered(self, message: Any, started: float) -> None:
        """Write the step as soon as the model answers: a crash while its code runs keeps
        the output (and its cost), tagged with this attempt."""
        text = message.content if isinstance(message.content, str) else None
        usage = message.token_usage
        self.sink(
            StepRecord(
                step=self.last_step + 1,
                type=StepType.ACTION,
                started_at=datetime.fromtimestamp(started, UTC),
                duration_ms=int((time.time() - started) * 1000),
                model_output=text,
                thought=_thought(text),
                input_tokens=usage.input_tokens if usage else 0,
                output_tokens=usage.output_tokens if usage else 0,
                partial=True,
            )
        )

    def _convert(self, memory_step: Any) -> StepRecord | None:
        if isinstance(memory_step, FinalAnswerStep):
            self.last_step += 1
            return StepRecord(
                step=self.last_step,
                type=StepType.FINAL_ANSWER,
                started_at=datetime.now(UTC),
                duration_ms=0,
                final_answer=_as_text(memory_step.output),
            )
        if not isinstance(memory_step, ActionStep | PlanningStep):
            return None
        timing = memory_step.timing
        end = timing.end_time or time.time()
        usage = memory_step.token_usage
        if isinstance(memory_step, PlanningStep):
            self.last_step += 1
            return StepRecord(
                step=self.last_step,
                type=StepType.PLANNING,
                started_at=datetime.fromtimestamp(timing.start_time, UTC),
                duration_ms=int((end - timing.start_time) * 1000),
                model_output=memory_step.plan,
                input_tokens=usage.input_tokens if usage else 0,
                output_tokens=usage.output_tokens if usage else 0,
                retries=self.model.take_retries(),
            )
        error = memory_step.error
        if error is None:
            in_flight = sys.exc_info()[1]  # the callback runs in smolagents' `finally`
            if in_flight is not None and not isinstance(in_flight, ExecutionStopped | LeaseLost):
                error = _root_cause(in_flight)
        if isinstance(error, AgentMaxStepsError):
            self.hit_max_steps = True
        model_output = memory_step.model_output
        if isinstance(model_output, list):
            model_output = "".join(str(part.get("text", "")) for part in model_output)
        self.last_step = max(self.last_step + 1, memory_step.step_number)
        return StepRecord(
            step=self.last_step,
            type=StepType.ACTION,
            started_at=datetime.fromtimestamp(timing.start_time, UTC),
            duration_ms=int((end - timing.start_time) * 1000),
            model_output=model_output,
            thought=_thought(model_output),
            code=memory_step.code_action,
            observation=memory_step.observations,
            tool_calls=self.broker.drain(),
            error=_error_text(error),
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            retries=self.model.take_retries(),
            ends_run=bool(getattr(memory_step, "is_final_answer", False)) and error is None,
        )


def _thought(model_output: str | None) -> str | None:
    if not model_output:
        return None
    head = model_output.split("<code>", 1)[0].strip()
    if head.lower().startswith("thought:"):
        head = head[len("thought:") :].strip()
    return head or None


def _error_text(error: BaseException | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, AgentError):
        return error.message
    if isinstance(error, ProviderError):
        return error.message
    return f"{type(error).__name__}: {error}"


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    to_string = getattr(value, "to_string", None)
    return to_string() if callable(to_string) else str(value)
