"""`web_search`: web search through DuckDuckGo's metasearch (`ddgs`), as a markdown list.

Owns the search call's time bound (a hard deadline, whatever ddgs does internally), the
formatting and size caps of the results, and turning every failure into a plain-language
observation for the agent. The search backend is injectable so tests never touch the network.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from ddgs.exceptions import DDGSException, RatelimitException
from ddgs.exceptions import TimeoutException as DDGSTimeout

from agent_platform.tools.base import ToolContext

SearchBackend = Callable[[str, int], list[dict[str, Any]]]

MAX_QUERY_CHARS = 500


class WebSearchTool:
    """Searches the web and lists the top results (title, link, snippet)."""

    name: ClassVar[str] = "web_search"
    description: ClassVar[str] = (
        "Performs a web search for the query and returns the top results as a markdown list "
        "of titles, links and snippets. Use visit_webpage to read a result in full."
    )
    inputs: ClassVar[dict[str, dict[str, Any]]] = {
        "query": {"type": "string", "description": "The search query to perform."}
    }
    output_type: ClassVar[str] = "string"

    def __init__(
        self,
        max_results: int = 10,
        timeout_s: float = 10,
        *,
        search: SearchBackend | None = None,
        max_chars: int = 8_000,
        max_snippet_chars: int = 400,
    ) -> None:
        self._max_results = max_results
        self._timeout_s = timeout_s
        self._search: SearchBackend = search or self._ddgs_search
        self._max_chars = max_chars
        self._max_snippet_chars = max_snippet_chars

    def _ddgs_search(self, query: str, max_results: int) -> list[dict[str, Any]]:
        """The real backend: ddgs text search (its own timeout is per engine, not total)."""
        from ddgs import DDGS

        timeout = max(1, math.ceil(self._timeout_s))
        return DDGS(timeout=timeout).text(query, max_results=max_results)

    def run(self, ctx: ToolContext, query: str = "", **_ignored: Any) -> str:
        """Return the formatted results, or a `No results` / `Search failed` observation.

        (`query` has a default and extra arguments are ignored only to match `PlatformTool.run`.)
        """
        if not isinstance(query, str) or not query.strip():
            return "Search failed: the query is empty."
        query = " ".join(query.split())[:MAX_QUERY_CHARS]
        try:
            results = self._search_with_deadline(query)
        except TimeoutError:
            return (
                f"Search failed: no answer from the search provider within {self._timeout_s:g} s. "
                "Try again later or rephrase the query."
            )
        except RatelimitException:
            return "Search failed: the search provider is rate-limiting us; try again later."
        except DDGSTimeout:
            return "Search failed: the search provider timed out; try again later."
        except DDGSException as exc:
            if "no results" in str(exc).lower():
                return self._no_results(query)
            return f"Search failed: {exc}"
        except Exception as exc:
            return f"Search failed: {type(exc).__name__}: {exc}"
        return self._format(query, results)

    def _search_with_deadline(self, query: str) -> list[dict[str, Any]]:
        """Run the backend in a daemon thread and stop waiting at the deadline: ddgs' own
        timeout applies per engine request, so a slow provider could otherwise hold the
        agent's turn much longer."""
        outcome: list[list[dict[str, Any]] | BaseException] = []

        def work() -> None:
            try:
                outcome.append(self._search(query, self._max_results))
            except BaseException as exc:  # handed to the caller below
                outcome.append(exc)

        thread = threading.Thread(target=work, name="web-search", daemon=True)
        thread.start()
        thread.join(self._timeout_s)
        if not outcome:
            raise TimeoutError
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _no_results(self, query: str) -> str:
        return f"No results found for '{query}'. Try a broader or differently worded query."

    def _format(self, query: str, results: list[dict[str, Any]]) -> str:
        """A numbered markdown list within `max_chars`; drops link-less and duplicate hits."""
        entries: list[str] = []
        seen: set[str] = set()
        for result in results:
            link = str(result.get("href") or result.get("url") or result.get("link") or "")
            link = link.strip()
            if not re.match(r"https?://", link, re.I) or link in seen:
                continue
            seen.add(link)
            title = _one_line(str(result.get("title") or link))
            snippet = _one_line(str(result.get("body") or result.get("snippet") or ""))
            if len(snippet) > self._max_snippet_chars:
                snippet = snippet[: self._max_snippet_chars].rstrip() + "…"
            title = title.replace("[", "\\[").replace("]", "\\]")
            entry = f"{len(entries) + 1}. [{title}]({_safe_link(link)})"
            if snippet:
                entry += f"\n   {snippet}"
            entries.append(entry)
            if len(entries) >= self._max_results:
                break
        if not entries:
            return self._no_results(query)
        header = f"## Search results for '{query}'\n\n"
        out: list[str] = []
        size = len(header)
        for entry in entries:
            if out and size + len(entry) + 2 > self._max_chars:
                break
            out.append(entry)
            size += len(entry) + 2
        text = header + "\n\n".join(out)
        if len(out) < len(entries):
            text += f"\n\n({len(entries) - len(out)} more results omitted to keep this short.)"
        return text[: self._max_chars + 100]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _safe_link(link: str) -> str:
    """Keep a URL from breaking the markdown link syntax."""
    for char, escaped in ((" ", "%20"), ("(", "%28"), (")", "%29"), ("<", "%3C"), (">", "%3E")):
        link = link.replace(char, escaped)
    return link
