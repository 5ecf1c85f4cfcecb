"""`visit_webpage`: read a public web page as markdown.

Owns only presentation - HTML to markdown, size limits, and wording failures as observations
for the agent. Every network rule (SSRF, redirects, deadline, byte cap, content types) lives
in `netguard.NetGuard`, which this tool must be given.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from bs4 import BeautifulSoup
from markdownify import MarkdownConverter

from agent_platform.tools.base import ToolContext, ToolFailure
from agent_platform.tools.netguard import FetchResult, NetGuard

_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_NOISE_TAGS = ("script", "style", "noscript", "template", "svg", "iframe", "canvas", "object")
_INLINE_URL = re.compile(r"^\s*(data|javascript|vbscript):", re.I)


def html_to_markdown(html: str) -> str:
    """Readable markdown for an HTML document; falls back to plain text if the document is
    too deeply nested for markdownify's recursion."""
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(_NOISE_TAGS):
        tag.decompose()
    # Inline data:/javascript: URLs (base64 images can be megabytes) are noise for the agent:
    # images keep their alt text, links their text.
    for img in soup.find_all("img", src=_INLINE_URL):
        img.replace_with(str(img.get("alt") or ""))
    for link in soup.find_all("a", href=_INLINE_URL):
        del link["href"]
    try:
        markdown = MarkdownConverter(heading_style="ATX").convert_soup(soup)
    except RecursionError:
        markdown = soup.get_text("\n")
    return re.sub(r"\n{3,}", "\n\n", markdown).strip()


class VisitWebpageTool:
    """Fetches a URL through the SSRF guard and returns its content as markdown."""

    name: ClassVar[str] = "visit_webpage"
    description: ClassVar[str] = (
        "Visits a webpage at the given URL and returns its content as markdown. Only public "
        "http(s) URLs can be visited; long pages are truncated."
    )
    inputs: ClassVar[dict[str, dict[str, Any]]] = {
        "url": {
            "type": "string",
            "description": "The full http:// or https:// URL of the webpage to visit.",
        }
    }
    output_type: ClassVar[str] = "string"

    def __init__(
        self,
        guard: NetGuard,
        timeout_s: float = 20,
        max_bytes: int = 2_000_000,
        max_chars: int = 40_000,
    ) -> None:
        self._guard = guard
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._max_chars = max_chars

    def run(self, ctx: ToolContext, url: str = "", **_ignored: Any) -> str:
        """Return the page as markdown, or an `Error fetching ...` observation.

        (`url` has a default and extra arguments are ignored only to match `PlatformTool.run`.)
        """
        if not isinstance(url, str) or not url.strip():
            return "Error fetching: no URL was given."
        try:
            result = self._guard.fetch(url, timeout_s=self._timeout_s, max_bytes=self._max_bytes)
        except ToolFailure as exc:
            return f"Error fetching {url}: {exc}"
        content = self._to_markdown(result)
        if result.status >= 400:
            excerpt = f"\n\n{content[:1000]}" if content else ""
            return f"Error fetching {url}: the server answered HTTP {result.status}.{excerpt}"
        return self._present(url, result, content)

    def _to_markdown(self, result: FetchResult) -> str:
        if result.content_type in _HTML_TYPES:
            return html_to_markdown(result.text)
        return result.text.strip()

    def _present(self, url: str, result: FetchResult, content: str) -> str:
        """Add the notes the agent needs to interpret what it got (redirect, truncation)."""
        notes: list[str] = []
        requested = url.strip().split("#", 1)[0].rstrip("/")
        if result.url.rstrip("/") != requested:
            notes.append(f"(Final URL after redirects/normalisation: {result.url})")
        if not content:
            notes.append(f"The page at {result.url} has no readable text content.")
            return "\n\n".join(notes)
        body = content
        if len(content) > self._max_chars:
            body = (
                content[: self._max_chars]
                + f"\n\n..._Content truncated: showing the first {self._max_chars:,} of "
                f"{len(content):,} characters._"
            )
        if result.truncated:
            body += (
                f"\n\n_The page is larger than {self._max_bytes:,} bytes; only its beginning "
                "was downloaded._"
            )
        return "\n\n".join([*notes, body])
