"""LLM providers as smolagents `Model`s: Anthropic (official `anthropic` SDK) and any
OpenAI-compatible endpoint (official `openai` SDK: OpenAI, vLLM, Ollama, llama.cpp).

The SDKs' async clients send every call on one event loop thread (`provider_loop`); the
agent's thread waits for it, and a stop (cancel, timeout) cuts that wait and the call short.
SDK exceptions are translated here, once, into `ProviderError` (with `retryable`), and our
retry policy (jittered exponential backoff honouring `retry-after`, `MAX_RETRIES`) applies
inside each call. The SDKs' own retries are off (`max_retries=0`), and so are smolagents'.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import anthropic
import openai
from smolagents.models import (
    ChatMessage,
    MessageRole,
    Model,
    TokenUsage,
    get_clean_message_list,
    tool_role_conversions,
)

from agent_platform.config import Settings
from agent_platform.errors import ProviderError, ProviderNotConfigured
from agent_platform.runtime.provider_loop import ProviderLoop

ANTHROPIC = "anthropic"
OPENAI = "openai"
T = TypeVar("T")
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
NO_PROVIDER_HELP = (
    "no LLM provider is configured: set ANTHROPIC_API_KEY (Claude), or OPENAI_BASE_URL "
    "(and OPENAI_API_KEY if needed) for an OpenAI-compatible server such as a local Ollama "
    "(OPENAI_BASE_URL=http://localhost:11434/v1 DEFAULT_MODEL=llama3.2)"
)


class Interrupted(Exception):
    """The execution was stopped (timeout, cancel, lost lease) while waiting on the model."""


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay_s(self, retry: int, retry_after_s: float | None) -> float:
        """Full-jitter exponential backoff; a server's `retry-after` is a floor."""
        backoff = random.uniform(0, min(self.cap_s, self.base_s * 2**retry))
        if retry_after_s is not None:
            return min(self.cap_s, max(backoff, retry_after_s))
        return backoff


def split_model_name(name: str) -> tuple[str, str]:
    """`anthropic/x` or `openai/x` pick the provider explicitly; else `claude*` is Anthropic."""
    if "/" in name:
        prefix, rest = name.split("/", 1)
        if prefix in (ANTHROPIC, OPENAI):
            return prefix, rest
    return (ANTHROPIC if name.startswith("claude") else OPENAI), name


class PlatformModel(Model):
    """Common part of our models: retry loop, interruptible sleeps, retry accounting."""

    provider = "provider"
    endpoint = ""  # the API path the SDK's generic `post` sends a call to
    client: anthropic.AsyncAnthropic | openai.AsyncOpenAI

    def __init__(
        self, model_id: str, *, loop: ProviderLoop, retry: RetryPolicy, stop: threading.Event
    ) -> None:
        super().__init__(model_id=model_id)
        self.loop = loop
        self.retry_policy = retry
        self.stop = stop
        self.deadline: float | None = None  # time.monotonic() by which the run must end
        self.last_error: ProviderError | None = None
        # called with (message, call start time) as soon as the model has answered
        self.on_answer: Callable[[ChatMessage, float], None] | None = None
        self._retries = 0
        self._in_flight: concurrent.futures.Future[Any] | None = None

    def take_retries(self) -> int:
        """Retries spent since the last call of this method (one step's worth)."""
        count, self._retries = self._retries, 0
        return count

    def generate(
        self,
        messages: list[ChatMessage | dict[str, Any]],
        stop_sequences: list[str] | None = None,
        response_format: dict[str, str] | None = None,
        tools_to_call_from: list[Any] | None = None,
        **kwargs: Any,
    ) -> ChatMessage:
        prepared = self._prepare(messages)
        retry = 0
        while True:
            if self.stop.is_set():
                raise Interrupted("stopped before the model call")
            started = time.time()
            try:
                message = self._call(prepared, stop_sequences)
            except ProviderError as exc:
                if not exc.retryable or retry >= self.retry_policy.max_retries:
                    self.last_error = exc
                    raise
                delay = self.retry_policy.delay_s(retry, exc.retry_after_s)
                retry += 1
                self._retries += 1
                if self.stop.wait(delay):
                    raise Interrupted("stopped while waiting to retry the model call") from exc
                continue
            if self.on_answer is not None:
                self.on_answer(message, started)
            return message

    def _prepare(self, messages: list[ChatMessage | dict[str, Any]]) -> Any:
        """The conversation in the form `_call` sends, made once for all retries."""
        return get_clean_message_list(
            messages, role_conversions=tool_role_conversions, flatten_messages_as_text=True
        )

    def _call(self, prepared: Any, stop: list[str] | None) -> ChatMessage:
        raise NotImplementedError

    def _exchange(self, request: dict[str, Any], read: Callable[[Any], ChatMessage]) -> ChatMessage:
        """Send `request` and `read` the reply: an SDK error or a reply `read` cannot make
        sense of becomes a `ProviderError`."""
        try:
            return read(self._wait_for(self._send(request)))
        except (anthropic.AnthropicError, openai.OpenAIError) as exc:
            raise _translate(exc, self.provider) from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProviderError(
                f"{self.provider} returned a malformed response: {exc!r}", provider=self.provider
            ) from exc

    async def _send(self, request: dict[str, Any]) -> Any:
        """The reply as parsed JSON, through the SDK's generic `post` (its documented way to
        send a plain body to an endpoint): the SDK still authenticates, sends, applies the
        timeout and raises typed errors, but neither walks the request through its
        typed-parameters transform nor validates the reply into pydantic models, of which we
        read a few fields (per call, 0.1-0.2 ms of CPU less than Anthropic's
        `messages.create`, 0.6 ms less than OpenAI's `chat.completions.create`)."""
        timeout = self.call_timeout_s(self.client.timeout)  # type: ignore[arg-type]
        return await self.client.post(
            self.endpoint, body=request, cast_to=object, options={"timeout": timeout}
        )

    def _wait_for(self, call: Coroutine[Any, Any, T]) -> T:
        """Send `call` on the provider loop and wait for its answer, or for `interrupt`."""
        future = self._in_flight = self.loop.submit(call)
        try:
            if self.stop.is_set():  # set before the call was in flight: nothing interrupted it
                future.cancel()
            return future.result()
        except concurrent.futures.CancelledError:
            raise Interrupted("stopped during the model call") from None
        finally:
            self._in_flight = None

    def interrupt(self) -> None:
        """End the call in flight, if any: its wait at once, its connection on the loop.
        Called from another thread, after the stop event is set."""
        if (future := self._in_flight) is not None:
            future.cancel()

    def call_timeout_s(self, configured_s: float) -> float:
        """A provider call never outlives the execution's deadline."""
        if self.deadline is None:
            return configured_s
        return max(1.0, min(configured_s, self.deadline - time.monotonic()))


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("retry-after") if headers is not None else None
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _status_message(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return fallback


def _timed_out(exc: BaseException) -> bool:
    """Whether a connection error was a timeout. The SDK's own type says so, except that the
    `openai` SDK's `aiohttp` transport reports a refused connection as a connect timeout;
    the chain of causes down to the socket's error tells them apart."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, TimeoutError):
            return True
        if isinstance(cause, OSError):  # refused, reset, unreachable, no such host
            return False
        cause = cause.__cause__
    return "Timeout" in type(exc).__name__


def _translate(exc: Exception, provider: str) -> ProviderError:
    """Map an SDK exception (anthropic or openai share the shape) to ProviderError."""
    label = "Anthropic" if provider == ANTHROPIC else "OpenAI-compatible provider"
    status_error = (anthropic.APIStatusError, openai.APIStatusError)
    connection_error = (anthropic.APIConnectionError, openai.APIConnectionError)
    if isinstance(exc, status_error):
        status = exc.status_code
        message = _status_message(exc.body, str(exc))
        return ProviderError(
            f"{label} returned {status}: {message}",
            provider=provider,
            status=status,
            retryable=status in RETRYABLE_STATUSES or status >= 500,
            retry_after_s=_retry_after(exc.response.headers),
        )
    if isinstance(exc, connection_error):
        kind = "timed out" if _timed_out(exc) else "could not be reached"
        return ProviderError(f"{label} {kind}: {exc}", provider=provider, retryable=True)
    return ProviderError(f"{label} call failed: {exc}", provider=provider)


class AnthropicModel(PlatformModel):
    """Claude through the Messages API. No assistant prefill (a 400 on current models), no
    sampling parameters (ignored on the 5.x family), thinking only as `adaptive` + effort."""

    provider = ANTHROPIC
    endpoint = "/v1/messages"

    def __init__(
        self,
        model_id: str,
        *,
        client: anthropic.AsyncAnthropic,
        loop: ProviderLoop,
        max_tokens: int,
        thinking_effort: str,
        retry: RetryPolicy,
        stop: threading.Event,
    ) -> None:
        super().__init__(model_id, loop=loop, retry=retry, stop=stop)
        self.client = client
        self.max_tokens = max_tokens
        self.thinking_effort = thinking_effort

    def _prepare(self, messages: list[ChatMessage | dict[str, Any]]) -> Any:
        return to_anthropic_messages(messages)

    def _call(
        self, prepared: tuple[str, list[dict[str, Any]]], stop: list[str] | None
    ) -> ChatMessage:
        system, turns = prepared
        request: dict[str, Any] = {
            "model": self.model_id,
            "max_tokens": self.max_tokens,
            "messages": turns,
        }
        if system:
            request["system"] = system
        if stop:
            request["stop_sequences"] = [s for s in stop if s.strip()]
        if self.thinking_effort != "off":
            request["thinking"] = {"type": "adaptive"}
            request["output_config"] = {"effort": self.thinking_effort}
        return self._exchange(request, _read_message)


def _read_message(body: Any) -> ChatMessage:
    """A Messages API reply: its text blocks and token counts."""
    usage = body["usage"]
    text = "".join(
        block.get("text", "") for block in body["content"] if block.get("type") == "text"
    )
    tokens = TokenUsage(
        input_tokens=int(usage["input_tokens"]), output_tokens=int(usage["output_tokens"])
    )
    return ChatMessage(role=MessageRole.ASSISTANT, content=text, token_usage=tokens)


ASSISTANT_ROLES = frozenset({MessageRole.ASSISTANT, MessageRole.TOOL_CALL})


def to_anthropic_messages(
    messages: list[ChatMessage | dict[str, Any]],
) -> tuple[str, list[dict[str, Any]]]:
    """System text goes top-level; turns alternate and start and end with the user
    (a trailing assistant turn would be a prefill, which current Claude models reject).

    Reads smolagents' messages as they are: its `get_clean_message_list` deep-copies the
    whole conversation on every call, for text we only read."""
    system_parts: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, ChatMessage):
            role, content = MessageRole(message.role), _text_of(message.content)
        else:
            role, content = MessageRole(message["role"]), _text_of(message.get("content"))
        if role == MessageRole.SYSTEM:
            system_parts.append(content)
            continue
        role = "assistant" if role in ASSISTANT_ROLES else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n" + content
        else:
            turns.append({"role": role, "content": content})
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": "Begin."})
    if turns[-1]["role"] == "assistant":
        turns.append({"role": "user", "content": "Continue."})
    for turn in turns:
        if not turn["content"].strip():
            turn["content"] = "(empty)"
    return "\n\n".join(system_parts), turns


def _text_of(content: Any) -> str:
    """A message's text; smolagents keeps it as a list of parts (`{"type": "text", ...}`)."""
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text") or "") for part in content if part.get("type") == "text"
        )
    return str(content or "")


class OpenAICompatibleModel(PlatformModel):
    """Chat Completions through the official `openai` SDK (OpenAI, vLLM, Ollama, llama.cpp)."""

    provider = OPENAI
    endpoint = "/chat/completions"

    def __init__(
        self,
        model_id: str,
        *,
        client: openai.AsyncOpenAI,
        loop: ProviderLoop,
        retry: RetryPolicy,
        stop: threading.Event,
    ) -> None:
        super().__init__(model_id, loop=loop, retry=retry, stop=stop)
        self.client = client

    def _call(self, prepared: list[dict[str, Any]], stop: list[str] | None) -> ChatMessage:
        request: dict[str, Any] = {"model": self.model_id, "messages": prepared}
        if stop:
            request["stop"] = stop[:4]
        return self._exchange(request, _read_completion)


def _read_completion(body: Any) -> ChatMessage:
    """A Chat Completions reply: the first choice's text (none: empty) and token counts."""
    choices = body.get("choices") or []
    content = (choices[0].get("message") or {}).get("content") if choices else None
    usage = body.get("usage") or {}
    tokens = TokenUsage(
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
    )
    return ChatMessage(role=MessageRole.ASSISTANT, content=content or "", token_usage=tokens)


@dataclass(frozen=True)
class ProviderClients:
    """A process's async SDK clients and the loop their calls run on, made on first use.

    One client per provider: on one loop, one connection pool (`aiohttp`'s) serves every
    call in flight without a lock; a model built after `close` gets new ones."""

    loop: ProviderLoop
    anthropic: anthropic.AsyncAnthropic | None
    openai: openai.AsyncOpenAI | None

    def close(self) -> None:
        """Close the clients and their connections on the loop, then stop it."""
        self.loop.close(*(c.close for c in (self.anthropic, self.openai) if c is not None))


class Providers:
    """Knows which providers are configured and builds a model per execution."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.retry = RetryPolicy(max_retries=settings.max_retries)
        self._lock = threading.Lock()
        self._clients: ProviderClients | None = None
        self._has_anthropic = bool(settings.anthropic_api_key)
        self._has_openai = bool(settings.openai_base_url or settings.openai_api_key)

    @property
    def any_configured(self) -> bool:
        return self._has_anthropic or self._has_openai

    def is_configured(self, model: str) -> bool:
        provider, _ = split_model_name(model)
        return self._has_anthropic if provider == ANTHROPIC else self._has_openai

    def check(self, model: str) -> None:
        """Raise ProviderNotConfigured (a clear 503) when `model` has no provider."""
        if self.is_configured(model):
            return
        provider, _ = split_model_name(model)
        if not self.any_configured:
            raise ProviderNotConfigured(NO_PROVIDER_HELP)
        hint = "ANTHROPIC_API_KEY" if provider == ANTHROPIC else "OPENAI_BASE_URL/OPENAI_API_KEY"
        raise ProviderNotConfigured(
            f"model {model!r} needs the {provider} provider, which is not configured (set {hint})"
        )

    def build(self, model: str, stop: threading.Event) -> PlatformModel:
        self.check(model)
        provider, model_id = split_model_name(model)
        clients = self.clients()
        if provider == ANTHROPIC:
            assert clients.anthropic is not None
            return AnthropicModel(
                model_id,
                client=clients.anthropic,
                loop=clients.loop,
                max_tokens=self.settings.model_max_tokens,
                thinking_effort=self.settings.anthropic_thinking_effort,
                retry=self.retry,
                stop=stop,
            )
        assert clients.openai is not None
        return OpenAICompatibleModel(
            model_id, client=clients.openai, loop=clients.loop, retry=self.retry, stop=stop
        )

    def clients(self) -> ProviderClients:
        """The configured SDK clients, made by the first model (the api process, which only
        checks models, never makes them)."""
        with self._lock:
            if self._clients is None:
                self._clients = self._make_clients()
            return self._clients

    def _make_clients(self) -> ProviderClients:
        settings = self.settings
        anthropic_client = openai_client = None
        if self._has_anthropic:
            assert settings.anthropic_api_key is not None
            anthropic_client = anthropic.AsyncAnthropic(
                api_key=settings.anthropic_api_key.get_secret_value(),
                base_url=settings.anthropic_base_url or None,
                max_retries=0,
                timeout=settings.provider_timeout_s,
                http_client=anthropic.DefaultAioHttpClient(),
                **anthropic_tracing_option(),
            )
        if self._has_openai:
            key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
            openai_client = openai.AsyncOpenAI(
                api_key=key or "not-needed",
                base_url=settings.openai_base_url or None,
                max_retries=0,
                timeout=settings.provider_timeout_s,
                http_client=openai.DefaultAioHttpClient(),
            )
        return ProviderClients(ProviderLoop(), anthropic_client, openai_client)

    def close(self) -> None:
        """Close the clients and their connections; a model built later makes new ones."""
        with self._lock:
            clients, self._clients = self._clients, None
        if clients is not None:
            clients.close()

    def startup_warnings(self) -> list[str]:
        """What an operator should hear at startup: no provider, deprecated models."""
        notes: list[str] = []
        if not self.any_configured:
            notes.append(NO_PROVIDER_HELP)
        for model in self.settings.models:
            provider, model_id = split_model_name(model)
            if provider == ANTHROPIC and (eol := deprecated_anthropic_models().get(model_id)):
                notes.append(
                    f"model {model_id!r} is deprecated and reaches end-of-life on {eol}: "
                    "move DEFAULT_MODEL/ALLOWED_MODELS to a current Claude model"
                )
        return notes


def anthropic_tracing_option() -> dict[str, Any]:
    """The client's `open_telemetry` keyword: spans off when nothing would record them.

    The SDK builds every call's span and its attributes even with no OpenTelemetry tracer
    provider installed, only to drop them: about 0.15 ms of CPU per model call. Like FastAPI's
    own spans, they stay on when a provider is configured (`opentelemetry-instrument`, say),
    and `ANTHROPIC_OPEN_TELEMETRY`, when set, decides as the SDK documents."""
    if "open_telemetry" not in inspect.signature(anthropic.AsyncAnthropic).parameters:
        return {}  # an SDK without tracing
    if "ANTHROPIC_OPEN_TELEMETRY" in os.environ:
        return {}
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - the SDKs that trace depend on it
        return {}
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return {"open_telemetry": False}
    return {}


def deprecated_anthropic_models() -> dict[str, str]:
    """The SDK's own list of deprecated models (the source of its DeprecationWarning)."""
    try:
        from anthropic._data import DEPRECATED_MODELS  # the SDK ships no public accessor
    except ImportError:  # pragma: no cover - older SDKs
        return {}
    with warnings.catch_warnings():
        return dict(DEPRECATED_MODELS)
