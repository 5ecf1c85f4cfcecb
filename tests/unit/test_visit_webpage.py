"""`visit_webpage`: presentation on top of the guard, and failures as observations.

Most tests stub the guard (the network policy is tested in test_netguard.py); one runs the
real guard against a local server, and blocked URLs use the real guard without any network.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_network
from typing import Any

import pytest

from agent_platform.tools.base import TenantContext, ToolContext
from agent_platform.tools.netguard import (
    BlockedAddress,
    FetchResult,
    FetchTimeout,
    NetGuard,
    UnsupportedContentType,
)
from agent_platform.tools.visit_webpage import VisitWebpageTool, html_to_markdown

CTX = ToolContext(tenant=TenantContext(id="t1"), execution_id="e1")


class StubGuard(NetGuard):
    """Returns a canned result (or raises) instead of touching the network."""

    def __init__(self, outcome: FetchResult | Exception) -> None:
        super().__init__(resolver=lambda host, port: [])
        self.outcome = outcome
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def fetch(self, url: str, **kwargs: Any) -> FetchResult:  # type: ignore[override]
        self.calls.append((url, kwargs))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def page(
    text: str,
    *,
    content_type: str = "text/html",
    url: str = "https://example.com/",
    status: int = 200,
    truncated: bool = False,
) -> FetchResult:
    return FetchResult(url, status, content_type, text, truncated)


def test_declares_the_smolagents_tool_shape() -> None:
    assert VisitWebpageTool.name == "visit_webpage"
    assert VisitWebpageTool.output_type == "string"
    assert set(VisitWebpageTool.inputs) == {"url"}
    assert VisitWebpageTool.inputs["url"]["type"] == "string"
    assert VisitWebpageTool.inputs["url"]["description"]
    assert VisitWebpageTool.description


def test_passes_its_limits_to_the_guard() -> None:
    guard = StubGuard(page("<p>x</p>"))
    VisitWebpageTool(guard, timeout_s=7, max_bytes=1234).run(CTX, url="https://example.com/")
    assert guard.calls == [("https://example.com/", {"timeout_s": 7, "max_bytes": 1234})]


def test_converts_html_to_markdown_without_scripts_or_inline_data() -> None:
    html = (
        "<html><head><title>T</title><style>p{color:red}</style></head><body>"
        "<h1>Title</h1><p>Some <b>bold</b> text and <a href='/next'>a link</a>.</p>"
        "<img src='data:image/png;base64,AAAA' alt='inline pic'>"
        "<a href='javascript:alert(1)'>click</a>"
        "<script>steal()</script><noscript>enable js</noscript></body></html>"
    )
    out = VisitWebpageTool(StubGuard(page(html))).run(CTX, url="https://example.com/")
    assert "# Title" in out
    assert "**bold**" in out
    assert "[a link](/next)" in out
    assert "inline pic" in out
    assert "data:" not in out
    assert "javascript:" not in out
    assert "steal" not in out
    assert "color:red" not in out
    assert "enable js" not in out


@pytest.mark.parametrize("ctype", ["text/plain", "application/json", "text/markdown"])
def test_returns_text_formats_as_is(ctype: str) -> None:
    text = '{"a": "<b>not html</b>"}'
    out = VisitWebpageTool(StubGuard(page(text, content_type=ctype))).run(
        CTX, url="https://example.com/"
    )
    assert out == text


def test_truncates_to_max_chars_with_a_note() -> None:
    tool = VisitWebpageTool(StubGuard(page("a" * 500, content_type="text/plain")), max_chars=100)
    out = tool.run(CTX, url="https://example.com/")
    assert out.startswith("a" * 100)
    assert "a" * 101 not in out
    assert "truncated" in out
    assert "500" in out


def test_mentions_a_byte_capped_download() -> None:
    tool = VisitWebpageTool(StubGuard(page("abc", content_type="text/plain", truncated=True)))
    out = tool.run(CTX, url="https://example.com/")
    assert out.startswith("abc")
    assert "only its beginning" in out


def test_mentions_the_final_url_after_a_redirect() -> None:
    result = page("<p>moved</p>", url="https://example.com/new")
    out = VisitWebpageTool(StubGuard(result)).run(CTX, url="https://example.com/old")
    assert "https://example.com/new" in out
    assert "moved" in out


def test_no_redirect_note_for_the_same_url() -> None:
    out = VisitWebpageTool(StubGuard(page("<p>x</p>"))).run(CTX, url="https://example.com")
    assert out == "x"


@pytest.mark.parametrize(
    "error",
    [
        BlockedAddress("refusing to fetch http://10.0.0.1/: 10.0.0.1 is a private address"),
        FetchTimeout("the page did not finish loading within the 20 s time limit"),
        UnsupportedContentType("content type 'application/pdf' cannot be read as text"),
    ],
)
def test_guard_failures_become_observations(error: Exception) -> None:
    out = VisitWebpageTool(StubGuard(error)).run(CTX, url="http://x.test/")
    assert out == f"Error fetching http://x.test/: {error}"


def test_http_errors_are_reported_with_status() -> None:
    tool = VisitWebpageTool(StubGuard(page("<h1>Not Found</h1>", status=404)))
    out = tool.run(CTX, url="https://example.com/missing")
    assert out.startswith(
        "Error fetching https://example.com/missing: the server answered HTTP 404"
    )
    assert "Not Found" in out


def test_empty_page_says_so() -> None:
    out = VisitWebpageTool(StubGuard(page("<html><body></body></html>"))).run(
        CTX, url="https://example.com/"
    )
    assert "no readable text" in out


def test_empty_url_is_an_observation() -> None:
    assert VisitWebpageTool(StubGuard(page(""))).run(CTX, url="  ").startswith("Error fetching")


def test_deeply_nested_html_falls_back_to_text() -> None:
    assert html_to_markdown("<div>" * 3000 + "deep" + "</div>" * 3000) == "deep"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1/",
        "http://0x7f.1/",
        "http://[::ffff:127.0.0.1]/",
        "file:///etc/passwd",
    ],
)
def test_real_guard_blocks_internal_urls_as_observations(url: str) -> None:
    guard = NetGuard(resolver=lambda host, port: ["127.0.0.1"])
    out = VisitWebpageTool(guard).run(CTX, url=url)
    assert out.startswith(f"Error fetching {url}: ")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = b"<html><body><h2>Local</h2><ul><li>one</li><li>two</li></ul></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def local_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/page"
    server.shutdown()
    server.server_close()


def test_end_to_end_through_the_real_guard(local_url: str) -> None:
    guard = NetGuard(allowed_networks=[ip_network("127.0.0.0/8")])
    out = VisitWebpageTool(guard, timeout_s=3).run(CTX, url=local_url)
    assert "## Local" in out
    assert "one" in out and "two" in out
