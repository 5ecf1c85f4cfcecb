"""Adversarial tests for the SSRF guard.

Everything runs against a local threaded HTTP server on 127.0.0.1 and a fake resolver; no
test touches the internet (blocked URLs are refused before any connection, and the
resolver never falls through to DNS).
"""

from __future__ import annotations

import functools
import gzip
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from agent_platform.tools.base import ToolFailure
from agent_platform.tools.netguard import (
    USER_AGENT,
    BlockedAddress,
    FetchFailed,
    FetchTimeout,
    NetGuard,
    TooManyRedirects,
    UnsupportedContentType,
    UnsupportedURL,
    parse_ipv4_host,
)

HTML = b"<html><body><h1>Hello</h1><p>World</p></body></html>"
LOOPBACK = [ip_network("127.0.0.0/8")]


@functools.cache
def _bomb(kind: str) -> bytes:
    """20 MB of zeros, compressed to a few KB."""
    data = b"\0" * 20_000_000
    if kind == "gzip":
        return gzip.compress(data, compresslevel=6)
    if kind == "deflate":
        return zlib.compress(data, 6)
    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return raw.compress(data) + raw.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stop: threading.Event
    seen: list[tuple[str, dict[str, str]]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up on purpose (caps, deadlines) are expected; keep output clean."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "text/plain", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, total: int, interval: float) -> None:
        for _ in range(total):
            if self.server.stop.wait(interval):
                return
            self.wfile.write(b"x")
            self.wfile.flush()

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.server.seen.append((parts.path, dict(self.headers.items())))
        route = parts.path
        if route == "/html":
            self._send(200, HTML, "text/html; charset=utf-8")
        elif route == "/echo":
            self._send(200, json.dumps(dict(self.headers.items())).encode(), "application/json")
        elif route == "/redirect":
            status = int(query.get("status", "302"))
            self.send_response(status)
            self.send_header("Location", query["to"])
            self.send_header("Set-Cookie", "session=secret; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route.startswith("/chain/"):
            n = int(route.rsplit("/", 1)[1])
            if n == 0:
                self._send(200, HTML, "text/html")
            else:
                self._send(302, b"", Location=f"/chain/{n - 1}")
        elif route.startswith("/slowchain/"):
            n = int(route.rsplit("/", 1)[1])
            self.server.stop.wait(0.25)
            self._send(302, b"", Location=f"/slowchain/{max(n - 1, 0)}")
        elif route == "/drip":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self._drip(1000, 0.1)
        elif route == "/stall":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"x")
            self.wfile.flush()
            self.server.stop.wait(10)
        elif route == "/slowheaders":
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n":
                if self.server.stop.wait(0.1):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        elif route == "/big":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(50_000_000))
            self.end_headers()
            chunk = b"a" * 65536
            for _ in range(50_000_000 // 65536):
                self.wfile.write(chunk)
        elif route.startswith("/bomb/"):
            kind = route.rsplit("/", 1)[1]
            encoding = "deflate" if kind == "rawdeflate" else kind
            self._send(200, _bomb(kind), "text/plain", Content_Encoding=encoding)
        elif route == "/binary":
            self._send(200, b"\x00\x01\x02", "application/octet-stream")
        elif route == "/notype":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"hi")
        elif route == "/notfound":
            self._send(404, b"<p>nope</p>", "text/html")
        elif route == "/latin1":
            self._send(200, b"caf\xe9", "text/plain; charset=iso-8859-1")
        elif route == "/brotli":
            self._send(200, b"xx", "text/plain", Content_Encoding="br")
        else:
            self._send(404, b"unknown route", "text/plain")


def _start(server: _Server) -> threading.Thread:
    server.stop = threading.Event()
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return thread


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    _start(srv)
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def base(server: _Server) -> str:
    server.seen.clear()
    return f"http://127.0.0.1:{server.server_address[1]}"


def fake_resolver(table: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    """A resolver that never reaches real DNS: unknown names do not resolve."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


NAMES = {
    "public.test": ["127.0.0.1"],
    "www.example.com": ["127.0.0.1"],
    "internal.test": ["10.0.0.1"],
    "mixed.test": ["127.0.0.1", "10.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "outside.test": ["93.184.216.34"],
    "multi.test": ["127.0.0.2", "127.0.0.1"],
}


@pytest.fixture()
def strict() -> NetGuard:
    """The production posture: no private networks allowed."""
    return NetGuard(resolver=fake_resolver(NAMES))


@pytest.fixture()
def guard() -> NetGuard:
    """Loopback allowlisted, so the success path can be exercised against the local server."""
    return NetGuard(allowed_networks=LOOPBACK, resolver=fake_resolver(NAMES))


def fetch(guard: NetGuard, url: str, **kwargs: Any) -> Any:
    kwargs.setdefault("timeout_s", 3.0)
    kwargs.setdefault("max_bytes", 1_000_000)
    return guard.fetch(url, **kwargs)


# --------------------------------------------------------------------------- URL policy


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/_GET%20/",
        "ftp://example.com/file.txt",
        "data:text/html,<h1>hi</h1>",
        "javascript:alert(1)",
        "dict://127.0.0.1:11211/stats",
        "ws://example.com/socket",
        "//example.com/no-scheme",
        "example.com/no-scheme",
        "",
        "http://",
        "http:///path-only",
        "http://exa mple.com/",
        "http://example.com:99999/",
        "http://example.com:0/",
        "http://%ff/",
        "http://[fe80::1%25eth0]/",
        "http://1.2.3.4.5/",
        "http://09.0.0.1/",
        "http://256.1.1.1/",
    ],
)
def test_refuses_non_http_and_malformed_urls(strict: NetGuard, url: str) -> None:
    with pytest.raises(UnsupportedURL):
        strict.check(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://evil@127.0.0.1/",
        "http://user:pass@example.com/",
        "http://127.0.0.1:80@example.com/",
        "http://example.com\\@127.0.0.1/",
        "http://127.0.0.1\\@example.com/",
    ],
)
def test_refuses_credentials_and_userinfo_tricks(guard: NetGuard, url: str) -> None:
    with pytest.raises(UnsupportedURL):
        guard.check(url)


def test_refuses_userinfo_even_for_an_allowed_host(
    guard: NetGuard, base: str, server: _Server
) -> None:
    with pytest.raises(UnsupportedURL, match="credentials"):
        fetch(guard, base.replace("http://", "http://user:pw@") + "/echo")
    assert server.seen == []


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0x7F.0x0.0x0.0x1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("127.0.0.1.", "127.0.0.1"),
        ("169.254.43518", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("example.com", None),
        ("1.example", None),
    ],
)
def test_ipv4_spellings_are_normalised_like_inet_aton(host: str, expected: str | None) -> None:
    parsed = parse_ipv4_host(host)
    assert (str(parsed) if parsed else None) == expected


# --------------------------------------------------------------------------- address policy


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.255.255.254:8080/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.170.2/v2/credentials",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://0.0.0.0/",
        "http://0/",
        "http://[::]/",
        "http://[::1]/",
        "http://224.0.0.1/",
        "http://239.255.255.250/",
        "http://[ff02::1]/",
        "http://240.0.0.1/",
        "http://255.255.255.255/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[fec0::1]/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
        "http://127.1/",
        "http://0xa9fea9fe/",
        "http://%31%32%37.0.0.1/",
        "http://127.0.0.1./",
        "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/",  # fullwidth digits (IDNA-mapped)
        "http://127\u30020\u30020\u30021/",  # ideographic full stops
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[0:0:0:0:0:ffff:10.0.0.1]/",
        "http://[::127.0.0.1]/",
        "http://[::8.8.8.8]/",
        "http://[2002:7f00:1::]/",
        "http://[2002:c0a8:101::1]/",
        "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[64:ff9b:1::8.8.8.8]/",
    ],
)
def test_blocks_non_public_addresses_in_every_spelling(strict: NetGuard, url: str) -> None:
    with pytest.raises(BlockedAddress, match="only public internet addresses"):
        strict.check(url)


@pytest.mark.parametrize("url", ["http://8.8.8.8/", "http://[2001:4860:4860::8888]/"])
def test_public_literals_pass_the_check(strict: NetGuard, url: str) -> None:
    target = strict.check(url)  # check() never connects
    assert target.addresses == (ip_address(url.split("//")[1].strip("/[]")),)


def test_nat64_of_a_public_ipv4_passes(strict: NetGuard) -> None:
    assert strict.blocked_reason(ip_address("64:ff9b::808:808")) is None


def test_metadata_is_named_in_the_message(strict: NetGuard) -> None:
    with pytest.raises(BlockedAddress, match="cloud metadata"):
        strict.check("http://169.254.169.254/latest/meta-data/")


@pytest.mark.parametrize("name", ["www.example.com", "metadata.test", "mapped.test"])
def test_public_looking_name_resolving_to_internal_is_blocked_before_connecting(
    strict: NetGuard, server: _Server, base: str, name: str
) -> None:
    port = server.server_address[1]
    with pytest.raises(BlockedAddress, match=f"'{name}' resolves to"):
        fetch(strict, f"http://{name}:{port}/html")
    assert server.seen == []


def test_any_blocked_resolution_blocks_the_name(guard: NetGuard) -> None:
    with pytest.raises(BlockedAddress, match=r"10\.0\.0\.1"):
        guard.check("http://mixed.test/")


def test_unresolvable_name_fails_clearly(strict: NetGuard) -> None:
    with pytest.raises(FetchFailed, match=r"could not resolve host name 'nowhere\.test'"):
        strict.check("http://nowhere.test/")


def test_slow_resolver_is_bound_by_the_deadline() -> None:
    def slow(host: str, port: int) -> list[str]:
        time.sleep(2)
        return ["127.0.0.1"]

    guard = NetGuard(allowed_networks=LOOPBACK, resolver=slow)
    started = time.monotonic()
    with pytest.raises(FetchTimeout):
        guard.fetch("http://slow.test/", timeout_s=0.3, max_bytes=100)
    assert time.monotonic() - started < 1.0


def test_allowed_networks_open_only_those_ranges() -> None:
    guard = NetGuard(allowed_networks=["10.0.0.0/8"])
    assert guard.blocked_reason(IPv4Address("10.1.2.3")) is None
    assert guard.blocked_reason(ip_address("::ffff:10.1.2.3")) is None
    assert guard.blocked_reason(IPv4Address("192.168.1.1")) is not None
    assert guard.blocked_reason(IPv4Address("127.0.0.1")) is not None
    assert guard.allowed_networks == (ip_network("10.0.0.0/8"),)


def test_ipv4_mapped_address_is_pinned_to_the_ipv4(guard: NetGuard) -> None:
    assert guard.check("http://mapped.test/").addresses == (IPv4Address("127.0.0.1"),)


# --------------------------------------------------------------------------- success path


def test_fetches_html_from_an_allowed_network(guard: NetGuard, base: str) -> None:
    result = fetch(guard, f"{base}/html")
    assert result.status == 200
    assert result.content_type == "text/html"
    assert result.text == HTML.decode()
    assert result.truncated is False
    assert result.url == f"{base}/html"


def test_connects_by_ip_but_keeps_the_host_header(server: _Server, base: str) -> None:
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        # A rebinding DNS: the second answer would point somewhere else.
        return ["127.0.0.1"] if len(calls) == 1 else ["10.0.0.1"]

    guard = NetGuard(allowed_networks=LOOPBACK, resolver=resolver)
    port = server.server_address[1]
    result = fetch(guard, f"http://public.test:{port}/echo")
    headers = json.loads(result.text)
    assert headers["Host"] == f"public.test:{port}"
    assert calls == ["public.test"]  # resolved exactly once: nothing to rebind


def test_sends_only_neutral_headers(guard: NetGuard, base: str) -> None:
    headers = json.loads(fetch(guard, f"{base}/echo").text)
    assert headers["User-Agent"] == USER_AGENT
    lowered = {k.lower() for k in headers}
    assert lowered <= {"host", "user-agent", "accept", "accept-encoding", "connection"}


def test_cookies_set_during_redirects_are_not_forwarded(
    guard: NetGuard, base: str, server: _Server
) -> None:
    headers = json.loads(fetch(guard, f"{base}/redirect?to=/echo").text)
    assert "Cookie" not in headers
    assert "Authorization" not in headers
    assert [path for path, _ in server.seen] == ["/redirect", "/echo"]


def test_falls_back_to_the_next_validated_address(server: _Server, guard: NetGuard) -> None:
    port = server.server_address[1]  # nothing listens on 127.0.0.2
    assert fetch(guard, f"http://multi.test:{port}/html").status == 200


def test_ipv6_literal_and_name() -> None:
    class V6Server(_Server):
        address_family = socket.AF_INET6

    srv = V6Server(("::1", 0), _Handler)  # this project's machines have IPv6 loopback
    _start(srv)
    try:
        port = srv.server_address[1]
        guard = NetGuard(allowed_networks=["::1/128"], resolver=fake_resolver({"v6.test": ["::1"]}))
        assert json.loads(fetch(guard, f"http://[::1]:{port}/echo").text)["Host"] == (
            f"[::1]:{port}"
        )
        assert json.loads(fetch(guard, f"http://v6.test:{port}/echo").text)["Host"] == (
            f"v6.test:{port}"
        )
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()


def test_decodes_declared_charset(guard: NetGuard, base: str) -> None:
    assert fetch(guard, f"{base}/latin1").text == "café"


def test_error_status_is_returned_not_raised(guard: NetGuard, base: str) -> None:
    result = fetch(guard, f"{base}/notfound")
    assert result.status == 404
    assert "nope" in result.text


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize(
    "location",
    ["/html", "html", "{base}/html", "//127.0.0.1:{port}/html", "http://2130706433:{port}/html"],
)
def test_follows_relative_and_absolute_redirects(
    guard: NetGuard, base: str, server: _Server, location: str
) -> None:
    to = location.format(base=base, port=server.server_address[1])
    result = fetch(guard, f"{base}/redirect?to={to}")
    assert result.status == 200
    assert result.text == HTML.decode()
    assert result.url.endswith("/html")


@pytest.mark.parametrize("status", [301, 303, 307, 308])
def test_follows_every_redirect_status(guard: NetGuard, base: str, status: int) -> None:
    assert fetch(guard, f"{base}/redirect?status={status}&to=/html").status == 200


@pytest.mark.parametrize(
    ("to", "error"),
    [
        ("http://169.254.169.254/latest/meta-data/", BlockedAddress),
        ("http://[fd00:ec2::254]/latest/meta-data/", BlockedAddress),
        ("http://internal.test/admin", BlockedAddress),
        ("http://10.0.0.1/", BlockedAddress),
        ("http://0xa9fea9fe/", BlockedAddress),
        ("file:///etc/passwd", UnsupportedURL),
        ("gopher://127.0.0.1:6379/_FLUSHALL", UnsupportedURL),
        ("http://user:pw@127.0.0.1/", UnsupportedURL),
    ],
)
def test_every_redirect_hop_is_rechecked(
    guard: NetGuard, base: str, to: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match="redirected to"):
        fetch(guard, f"{base}/redirect?to={to}")


def test_follows_up_to_five_redirects(guard: NetGuard, base: str, server: _Server) -> None:
    assert fetch(guard, f"{base}/chain/5").text == HTML.decode()
    assert len(server.seen) == 6


def test_refuses_a_sixth_redirect(guard: NetGuard, base: str, server: _Server) -> None:
    with pytest.raises(TooManyRedirects, match="5 redirects"):
        fetch(guard, f"{base}/chain/6")
    assert len(server.seen) == 6


# --------------------------------------------------------------------------- deadline


@pytest.mark.parametrize("path", ["/drip", "/stall", "/slowheaders", "/slowchain/9"])
def test_total_deadline_ends_slow_servers(guard: NetGuard, base: str, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchTimeout, match=r"0\.6 s"):
        fetch(guard, f"{base}{path}", timeout_s=0.6)
    elapsed = time.monotonic() - started
    assert 0.5 < elapsed < 1.0


# --------------------------------------------------------------------------- size and type


def test_huge_body_is_capped(guard: NetGuard, base: str) -> None:
    started = time.monotonic()
    result = fetch(guard, f"{base}/big", max_bytes=100_000)
    assert result.truncated is True
    assert len(result.text) == 100_000
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("kind", ["gzip", "deflate", "rawdeflate"])
def test_compression_bomb_is_capped_after_decompression(
    guard: NetGuard, base: str, kind: str
) -> None:
    assert len(_bomb(kind)) < 100_000  # the wire size is small...
    result = fetch(guard, f"{base}/bomb/{kind}", max_bytes=200_000)
    assert result.truncated is True  # ...but the decoded size is capped
    assert len(result.text) == 200_000


def test_body_exactly_at_the_cap_is_not_truncated(guard: NetGuard, base: str) -> None:
    result = fetch(guard, f"{base}/html", max_bytes=len(HTML))
    assert (result.text, result.truncated) == (HTML.decode(), False)


@pytest.mark.parametrize("path", ["/binary", "/notype"])
def test_refuses_non_text_content(guard: NetGuard, base: str, path: str) -> None:
    with pytest.raises(UnsupportedContentType, match="content type"):
        fetch(guard, f"{base}{path}")


def test_content_type_allowlist_is_configurable(guard: NetGuard, base: str) -> None:
    with pytest.raises(UnsupportedContentType, match="'text/html'"):
        fetch(guard, f"{base}/html", allowed_content_types={"text/plain"})


def test_unknown_content_encoding_fails_clearly(guard: NetGuard, base: str) -> None:
    with pytest.raises(FetchFailed, match="content encoding 'br'"):
        fetch(guard, f"{base}/brotli")


def test_connection_refused_is_a_fetch_failure(guard: NetGuard) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(FetchFailed, match="could not connect"):
        fetch(guard, f"http://127.0.0.1:{port}/")


def test_all_failures_are_tool_failures() -> None:
    for error in (
        UnsupportedURL,
        BlockedAddress,
        FetchFailed,
        TooManyRedirects,
        FetchTimeout,
        UnsupportedContentType,
    ):
        assert issubclass(error, ToolFailure)


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[_Server, Path, list]]:
    """An HTTPS server for `public.test` with a self-signed certificate; records SNI."""
    assert shutil.which("openssl"), "the openssl CLI makes the test certificate"
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=public.test", "-addext", "subjectAltName=DNS:public.test",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    sni: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: sni.append(name)  # type: ignore[assignment,misc]
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    _start(srv)
    yield srv, cert, sni
    srv.stop.set()
    srv.shutdown()
    srv.server_close()


def test_tls_uses_hostname_for_sni_and_certificate_while_connecting_by_ip(
    tls_server: tuple[_Server, Path, list],
) -> None:
    srv, cert, sni = tls_server
    port = srv.server_address[1]
    guard = NetGuard(
        allowed_networks=LOOPBACK,
        resolver=fake_resolver({"public.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}),
        ssl_context=ssl.create_default_context(cafile=str(cert)),
    )
    sni.clear()
    result = fetch(guard, f"https://public.test:{port}/echo")
    assert json.loads(result.text)["Host"] == f"public.test:{port}"
    assert sni == ["public.test"]
    # Same IP, wrong name: the certificate is checked against the name, so this fails.
    with pytest.raises(FetchFailed, match="certificate"):
        fetch(guard, f"https://other.test:{port}/echo")
