"""`web_search`: formatting, caps, deadline and failure wording, all without network."""

from __future__ import annotations

import threading
import time
from typing import Any

import ddgs
import pytest
from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

from agent_platform.tools.base import TenantContext, ToolContext
from agent_platform.tools.web_search import WebSearchTool

CTX = ToolContext(tenant=TenantContext(id="t1"), execution_id="e1")


def hit(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "title": f"Title {n}",
        "href": f"https://example.com/{n}",
        "body": f"Snippet {n}",
        **extra,
    }


def backend(results: list[dict[str, Any]]) -> Any:
    calls: list[tuple[str, int]] = []

    def search(query: str, max_results: int) -> list[dict[str, Any]]:
        calls.append((query, max_results))
        return results

    search.calls = calls  # type: ignore[attr-defined]
    return search


def test_declares_the_smolagents_tool_shape() -> None:
    assert WebSearchTool.name == "web_search"
    assert WebSearchTool.output_type == "string"
    assert set(WebSearchTool.inputs) == {"query"}
    assert WebSearchTool.inputs["query"]["type"] == "string"
    assert WebSearchTool.description


def test_formats_results_as_a_markdown_list() -> None:
    search = backend([hit(1), hit(2)])
    out = WebSearchTool(max_results=5, search=search).run(CTX, query="python  asyncio\n")
    assert search.calls == [("python asyncio", 5)]
    assert out == (
        "## Search results for 'python asyncio'\n\n"
        "1. [Title 1](https://example.com/1)\n   Snippet 1\n\n"
        "2. [Title 2](https://example.com/2)\n   Snippet 2"
    )


def test_respects_max_results_even_if_the_backend_returns_more() -> None:
    out = WebSearchTool(max_results=3, search=backend([hit(i) for i in range(10)])).run(
        CTX, query="q"
    )
    assert "3. [Title 2]" in out
    assert "Title 3" not in out


def test_skips_linkless_non_http_and_duplicate_results() -> None:
    results = [
        hit(1),
        {"title": "no link", "body": "x"},
        hit(2, href="javascript:alert(1)"),
        hit(3, href="https://example.com/1"),
        hit(4),
    ]
    out = WebSearchTool(search=backend(results)).run(CTX, query="q")
    assert "1. [Title 1]" in out
    assert "2. [Title 4]" in out
    assert "no link" not in out and "javascript" not in out and "Title 3" not in out


def test_sanitises_titles_snippets_and_links() -> None:
    result = hit(
        1,
        title="A [tricky]\ntitle",
        href="https://example.com/a b(c)",
        body="line one\n\nline two",
    )
    out = WebSearchTool(search=backend([result])).run(CTX, query="q")
    assert "[A \\[tricky\\] title](https://example.com/a%20b%28c%29)" in out
    assert "   line one line two" in out


def test_caps_snippets_and_total_size() -> None:
    results = [hit(i, body="word " * 500) for i in range(10)]
    out = WebSearchTool(search=backend(results), max_chars=1500, max_snippet_chars=200).run(
        CTX, query="q"
    )
    assert len(out) <= 1600
    assert "…" in out
    assert "more results omitted" in out


def test_no_results() -> None:
    out = WebSearchTool(search=backend([])).run(CTX, query="zzqqxx")
    assert out.startswith("No results found for 'zzqqxx'")


def test_empty_query() -> None:
    assert WebSearchTool(search=backend([hit(1)])).run(CTX, query="   ").startswith("Search failed")


def test_hard_deadline_on_a_hanging_backend() -> None:
    release = threading.Event()

    def hang(query: str, max_results: int) -> list[dict[str, Any]]:
        release.wait(5)
        return [hit(1)]

    started = time.monotonic()
    out = WebSearchTool(timeout_s=0.2, search=hang).run(CTX, query="q")
    release.set()
    assert time.monotonic() - started < 1.0
    assert out.startswith("Search failed: no answer from the search provider within 0.2 s")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (DDGSException("No results found."), "No results found for 'q'"),
        (
            RatelimitException("202 Ratelimit"),
            "Search failed: the search provider is rate-limiting",
        ),
        (TimeoutException("timed out"), "Search failed: the search provider timed out"),
        (DDGSException("engine exploded"), "Search failed: engine exploded"),
        (RuntimeError("boom"), "Search failed: RuntimeError: boom"),
    ],
)
def test_backend_errors_become_observations(error: Exception, expected: str) -> None:
    def failing(query: str, max_results: int) -> list[dict[str, Any]]:
        raise error

    assert WebSearchTool(search=failing).run(CTX, query="q").startswith(expected)


def test_default_backend_calls_ddgs_text(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class FakeDDGS:
        def __init__(self, timeout: int | None = 5, **kwargs: Any) -> None:
            seen["timeout"] = timeout

        def text(self, query: str, **kwargs: Any) -> list[dict[str, Any]]:
            seen["query"], seen["kwargs"] = query, kwargs
            return [hit(1)]

    monkeypatch.setattr(ddgs, "DDGS", FakeDDGS)
    out = WebSearchTool(max_results=4, timeout_s=2.5).run(CTX, query="hello")
    assert seen == {"timeout": 3, "query": "hello", "kwargs": {"max_results": 4}}
    assert "[Title 1](https://example.com/1)" in out
