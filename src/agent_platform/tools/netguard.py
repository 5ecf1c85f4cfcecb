"""The SSRF guard: the one place where a URL chosen by the agent turns into a network request.

Every tool that fetches an agent-supplied URL must go through `NetGuard.fetch`. It owns the
whole request policy so the tools cannot get it subtly wrong:

* **URL policy** - `http`/`https` only; no credentials in the URL (`http://evil@127.0.0.1`);
  numeric IPv4 spellings (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`) are normalised the
  way browsers / `inet_aton` do before they are checked, so they cannot dodge the check.
* **Address policy** - the host is resolved *once* and the fetch is refused if *any* resolved
  address is not on the public internet (loopback, private, link-local and cloud metadata,
  CGNAT, ULA, multicast, reserved, unspecified, IPv4-mapped / IPv4-compatible IPv6, and
  6to4 / Teredo / NAT64 addresses embedding such an IPv4). The operator can open intranet
  ranges with `allowed_networks`.
* **Pinning (no DNS rebinding)** - we drive `httpcore` (the transport layer under `httpx`)
  with our own `httpcore.NetworkBackend`. The backend is the only code that opens sockets,
  and it connects to the addresses validated above, never to a fresh DNS answer. Because the
  request URL still carries the *hostname*, httpcore sends the original `Host` header and
  uses the hostname for TLS SNI and certificate verification, with no URL rewriting or
  header juggling. (Rewriting the URL to the IP plus the `sni_hostname` extension would pin as
  well, but leaves deadline enforcement to per-operation timeouts; the backend gets both.)
  We do not use `httpx.Client` on purpose: its conveniences (cookie jar, environment proxies,
  `.netrc` credentials, automatic redirects) are exactly what a guard must not have; from
  httpx we only take `create_ssl_context` (certifi trust store, `SSL_CERT_FILE` honoured).
* **Redirects** are followed by hand (at most `MAX_REDIRECTS`), every hop re-checked (scheme,
  credentials, resolution). Relative `Location`s are resolved against the current URL.
* **Total deadline** - one deadline covers DNS, connect, TLS, every redirect and the body.
  The backend clamps each socket operation to the time left, so a server that drips a
  byte per second is cut off at the deadline, not after one read timeout per byte.
* **Byte cap after decompression** - we decode gzip/deflate ourselves with an output limit
  per chunk, so a gzip bomb never inflates beyond the cap; reading stops at the cap and the
  result is marked `truncated`.
* **Content-type allowlist**, and **no forwarded identity**: the request carries only a
  fixed neutral User-Agent and content negotiation headers - no cookies, no auth.

Every refusal is a `ToolFailure` subclass whose message is written for the agent to read.
"""

from __future__ import annotations

import codecs
import ipaddress
import re
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import httpcore
import httpx
import idna

from agent_platform.tools.base import ToolFailure
from agent_platform.tools.pinned import Deadline, pinned_exchange

__all__ = [
    "DEFAULT_ALLOWED_CONTENT_TYPES",
    "MAX_REDIRECTS",
    "USER_AGENT",
    "BlockedAddress",
    "FetchError",
    "FetchFailed",
    "FetchResult",
    "FetchTimeout",
    "NetGuard",
    "Target",
    "TooManyRedirects",
    "UnsupportedContentType",
    "UnsupportedURL",
    "parse_ipv4_host",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

MAX_REDIRECTS = 5
USER_AGENT = "Mozilla/5.0 (compatible; AgentPlatformFetcher/1.0)"
DEFAULT_ALLOWED_CONTENT_TYPES: frozenset[str] = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "text/plain",
        "text/markdown",
        "text/x-markdown",
        "text/csv",
        "application/json",
        "application/ld+json",
        "application/xml",
        "text/xml",
        "application/rss+xml",
        "application/atom+xml",
    }
)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,text/plain;q=0.8,"
    "application/json;q=0.8,*/*;q=0.1"
)
_HOST_CHARS = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.I)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_SHARED_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)


# --------------------------------------------------------------------------- errors


class FetchError(ToolFailure):
    """Base of every refusal or failure of a guarded fetch."""


class UnsupportedURL(FetchError):
    """The URL itself is refused: wrong scheme, credentials, malformed host."""


class BlockedAddress(FetchError):
    """The host is (or resolves to) an address that is not on the public internet."""


class FetchFailed(FetchError):
    """DNS, connection, TLS or HTTP protocol failure."""


class TooManyRedirects(FetchError):
    """More than `MAX_REDIRECTS` redirects."""


class FetchTimeout(FetchError):
    """The total deadline passed before the fetch finished."""


class UnsupportedContentType(FetchError):
    """The page is not a text format the tools can use."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Target:
    """A checked URL: what we will ask for (`host`, `port`, `path`) and where we may connect."""

    url: str
    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[IPAddress, ...]

    @property
    def host_header(self) -> str:
        """The `Host` header value (brackets for IPv6, port only when not the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if _DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"


@dataclass(frozen=True)
class FetchResult:
    """The final (non-redirect) response. `text` is empty for non-2xx responses whose content
    type is not allowed; `truncated` says the body was cut at `max_bytes`."""

    url: str
    status: int
    content_type: str
    text: str
    truncated: bool


# --------------------------------------------------------------------------- resolution


def system_resolver(host: str, port: int) -> list[str]:
    """Default resolver: every address `getaddrinfo` returns for a TCP connection."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_ipv4_host(host: str) -> ipaddress.IPv4Address | None:
    """Parse `host` as an IPv4 address the way browsers (WHATWG URL) and `inet_aton` do.

    Returns None when `host` is a domain name. `127.1`, `0x7f.1`, `0177.0.0.1` and
    `2130706433` all become 127.0.0.1; a host that ends in a number but is not a valid
    address is refused rather than sent to DNS, as browsers do.
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    last = parts[-1]
    ends_in_number = last.isdigit() or bool(re.fullmatch(r"0[xX][0-9a-fA-F]*", last))
    if not ends_in_number:
        return None
    invalid = UnsupportedURL(f"'{host}' is not a valid IPv4 address")
    if len(parts) > 4:
        raise invalid
    numbers: list[int] = []
    for part in parts:
        if re.fullmatch(r"0[xX][0-9a-fA-F]*", part):
            numbers.append(int(part[2:] or "0", 16))
        elif re.fullmatch(r"0[0-7]+", part):
            numbers.append(int(part, 8))
        elif re.fullmatch(r"0|[1-9][0-9]*", part):
            numbers.append(int(part))
        else:
            raise invalid
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise invalid
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _idna(host: str) -> str:
    """ASCII form of an internationalised host name."""
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise UnsupportedURL(f"'{host}' is not a valid host name") from exc


@dataclass(frozen=True)
class _ParsedURL:
    url: str
    scheme: str
    host: str
    literal: IPAddress | None
    port: int
    path: str


def _parse_url(url: str) -> _ParsedURL:
    """Split and normalise an agent-supplied URL; refuse anything but plain http(s)."""
    if not isinstance(url, str):
        raise UnsupportedURL("the URL must be a string")
    raw = re.sub(r"[\t\r\n]", "", url.strip())
    if not raw:
        raise UnsupportedURL("the URL is empty")
    if re.search(r"[\x00-\x1f\x7f]", raw):
        raise UnsupportedURL("the URL contains control characters")
    try:
        parts = urlsplit(raw)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            shown = f"'{scheme}:'" if scheme else "no scheme"
            raise UnsupportedURL(
                f"only http:// and https:// URLs can be fetched (this URL has {shown})"
            )
        netloc = parts.netloc
        if not netloc:
            raise UnsupportedURL("the URL has no host name")
        if "@" in netloc:
            raise UnsupportedURL("URLs containing credentials (user@host) are not allowed")
        if "\\" in netloc:
            raise UnsupportedURL("the URL host contains a backslash")
        port = _DEFAULT_PORTS[scheme] if parts.port is None else parts.port
        hostname = parts.hostname or ""
        if not (netloc.startswith("[") or ":" in hostname):
            hostname = unquote(hostname, errors="strict")
    except ValueError as exc:  # includes UnicodeDecodeError from a bad %-escape
        raise UnsupportedURL(f"the URL is malformed ({exc})") from exc
    if not 0 < port < 65536:
        raise UnsupportedURL(f"invalid port {port}")

    literal: IPAddress | None
    if netloc.startswith("[") or ":" in hostname:
        if "%" in hostname:
            raise UnsupportedURL("IPv6 zone identifiers are not allowed in URLs")
        try:
            literal = ipaddress.IPv6Address(hostname)
        except ValueError as exc:
            raise UnsupportedURL(f"'{hostname}' is not a valid IPv6 address") from exc
        host = str(literal)
    else:
        host = hostname.lower()
        if not host.isascii():
            host = _idna(host)
        if host.endswith("."):
            host = host[:-1]
        if not host or len(host) > 253 or not _HOST_CHARS.fullmatch(host):
            raise UnsupportedURL(f"'{hostname}' is not a valid host name")
        literal = parse_ipv4_host(host)
        if literal is not None:
            host = str(literal)

    path = quote(parts.path or "/", safe="/%!$&'()*+,;=:@-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/?%!$&'()*+,;=:@-._~")
    shown_host = f"[{host}]" if ":" in host else host
    shown_port = "" if port == _DEFAULT_PORTS[scheme] else f":{port}"
    normalised = f"{scheme}://{shown_host}{shown_port}{path}"
    return _ParsedURL(normalised, scheme, host, literal, port, path)


def _describe(ip: IPAddress) -> str | None:
    """Why `ip` is not a public internet address, or None when it is."""
    if ip in _METADATA:
        return "a cloud metadata endpoint"
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
        return "an unspecified ('this host') address"
    if ip.is_loopback:
        return "a loopback address"
    if ip == _BROADCAST:
        return "the broadcast address"
    if ip.is_link_local:
        return "a link-local address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED_CGNAT:
        return "a carrier-grade NAT (shared) address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_private:
        return "a private network address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


# --------------------------------------------------------------------------- transport


class _Deadline(Deadline):
    def expired(self) -> FetchTimeout:
        return FetchTimeout(
            f"the page did not finish loading within the {self.timeout_s:g} s time limit"
        )


class _Decoder:
    """Content-Encoding decoding with an output limit, so compressed bodies cannot balloon."""

    def __init__(self, content_encoding: str) -> None:
        encoding = content_encoding.strip().lower()
        self._deflate = encoding == "deflate"
        self._started = False
        self._zlib: Any
        if encoding in ("", "identity"):
            self._zlib = None
        elif encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj()
        else:
            raise FetchFailed(f"the server used an unsupported content encoding '{encoding}'")

    def feed(self, data: bytes, limit: int) -> bytes:
        """Decode `data`, producing at most `limit` (>= 1) bytes."""
        if self._zlib is None:
            return data[:limit]
        try:
            first = not self._started
            self._started = True
            try:
                return bytes(self._zlib.decompress(data, limit))
            except zlib.error:
                if not (self._deflate and first):
                    raise
                # Some servers send raw deflate without the zlib header.
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                return bytes(self._zlib.decompress(data, limit))
        except zlib.error as exc:
            raise FetchFailed("the server sent corrupt compressed data") from exc


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return value.decode("latin-1")
    return None


def _media_type(content_type: str) -> tuple[str, str | None]:
    """(`type/subtype` lowercased, charset or None) from a Content-Type header."""
    media, *params = content_type.split(";")
    charset = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip("\"'") or None
    return media.strip().lower(), charset


def _decode_text(body: bytes, media_type: str, charset: str | None) -> str:
    """Bytes to text: declared charset, else an HTML `<meta charset>`, else UTF-8."""
    if charset is None and media_type in ("text/html", "application/xhtml+xml"):
        match = _META_CHARSET.search(body[:4096])
        if match:
            charset = match.group(1).decode("ascii")
    encoding = "utf-8"
    if charset:
        with suppress(LookupError):
            encoding = codecs.lookup(charset).name
    return body.decode(encoding, errors="replace")


# --------------------------------------------------------------------------- the guard


class NetGuard:
    """Validates and performs fetches of agent-supplied URLs (see module docstring).

    `allowed_networks` are operator-approved ranges (e.g. an intranet) that are reachable
    despite not being public. `resolver(host, port) -> [ip, ...]` replaces DNS (tests).
    `ssl_context` replaces the default certifi-based verification context.
    """

    def __init__(
        self,
        allowed_networks: Iterable[IPNetwork | str] = (),
        *,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._allowed: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n
            for n in allowed_networks
        )
        self._resolver: Resolver = resolver or system_resolver
        self._ssl_context = ssl_context or httpx.create_ssl_context()

    @property
    def allowed_networks(self) -> tuple[IPNetwork, ...]:
        return self._allowed

    def blocked_reason(self, ip: IPAddress) -> str | None:
        """Why a connection to `ip` is refused, or None if it is allowed."""
        if any(ip in network for network in self._allowed):
            return None
        if isinstance(ip, ipaddress.IPv6Address):
            mapped = ip.ipv4_mapped
            if mapped is not None:
                inner = self.blocked_reason(mapped)
                return None if inner is None else f"an IPv4-mapped form of {mapped}, {inner}"
            if ip in _NAT64:
                # DNS64/NAT64 synthesises these for IPv4-only sites: judge the IPv4 inside.
                embedded_v4 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
                inner = self.blocked_reason(embedded_v4)
                return None if inner is None else f"a NAT64 address of {embedded_v4}, {inner}"
            if ip in _NAT64_LOCAL:
                return "a local-use NAT64 address"
            if ip in _IPV4_COMPATIBLE and not (ip.is_unspecified or ip.is_loopback):
                return "a deprecated IPv4-compatible IPv6 address"
            embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
            if embedded is not None:
                inner = self.blocked_reason(embedded)
                if inner is not None:
                    return f"a 6to4/Teredo address embedding {embedded}, {inner}"
        return _describe(ip)

    def check(self, url: str, *, timeout_s: float = 10.0) -> Target:
        """Validate `url` and resolve its host once, without connecting. Raises `FetchError`."""
        return self._check(url, _Deadline(timeout_s))

    def _check(self, url: str, deadline: _Deadline) -> Target:
        parsed = _parse_url(url)
        if parsed.literal is not None:
            addresses: list[IPAddress] = [parsed.literal]
        else:
            addresses = self._resolve(parsed.host, parsed.port, deadline)
        for address in addresses:
            reason = self.blocked_reason(address)
            if reason is not None:
                where = (
                    str(address)
                    if parsed.literal is not None
                    else f"'{parsed.host}' resolves to {address}, which"
                )
                raise BlockedAddress(
                    f"refusing to fetch {parsed.url}: {where} is {reason}; only public "
                    "internet addresses can be fetched"
                )
        pinned = tuple(
            a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a
            for a in addresses
        )
        return Target(parsed.url, parsed.scheme, parsed.host, parsed.port, parsed.path, pinned)

    def _resolve(self, host: str, port: int, deadline: _Deadline) -> list[IPAddress]:
        """Run the resolver under the deadline (getaddrinfo cannot be interrupted, so it runs
        in a daemon thread we stop waiting for)."""
        outcome: list[list[str] | BaseException] = []

        def work() -> None:
            try:
                outcome.append(self._resolver(host, port))
            except BaseException as exc:  # handed to the caller below
                outcome.append(exc)

        thread = threading.Thread(target=work, name="netguard-resolve", daemon=True)
        thread.start()
        thread.join(max(deadline.remaining(), 0.0))
        if not outcome:
            raise deadline.expired()
        result = outcome[0]
        if isinstance(result, BaseException) or not result:
            raise FetchFailed(f"could not resolve host name '{host}'") from (
                result if isinstance(result, BaseException) else None
            )
        try:
            return [ipaddress.ip_address(r.split("%", 1)[0]) for r in result]
        except ValueError as exc:
            raise FetchFailed(f"could not resolve host name '{host}'") from exc

    def fetch(
        self,
        url: str,
        *,
        timeout_s: float,
        max_bytes: int,
        allowed_content_types: Collection[str] = DEFAULT_ALLOWED_CONTENT_TYPES,
    ) -> FetchResult:
        """GET `url` under the full policy (module docstring) and return the final response.

        Non-2xx responses are returned (not raised) so callers can report the status; their
        body is only read when its content type is allowed (else `text` is empty).
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        deadline = _Deadline(timeout_s)
        allowed = frozenset(t.lower() for t in allowed_content_types)
        current, previous = url, None
        for hop in range(MAX_REDIRECTS + 1):
            try:
                target = self._check(current, deadline)
            except FetchError as exc:
                if previous is None:
                    raise
                raise type(exc)(
                    f"{previous} redirected to {current}, which was refused: {exc}"
                ) from exc
            with self._exchange(target, deadline) as response:
                location = _header(response, b"location")
                if response.status in _REDIRECT_STATUSES and location:
                    if hop == MAX_REDIRECTS:
                        raise TooManyRedirects(
                            f"gave up after {MAX_REDIRECTS} redirects (last one from "
                            f"{target.url} to {location})"
                        )
                    previous, current = target.url, urljoin(target.url, location.strip())
                    continue
                return self._read(target, response, allowed, max_bytes, deadline)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _exchange(self, target: Target, deadline: _Deadline) -> Iterator[httpcore.Response]:
        """Send the GET over a connection pinned to the target's validated addresses and yield
        the streaming response; maps transport errors to `FetchError`s."""
        headers = [
            (b"Host", target.host_header.encode("ascii")),
            (b"User-Agent", USER_AGENT.encode("ascii")),
            (b"Accept", _ACCEPT.encode("ascii")),
            (b"Accept-Encoding", b"gzip, deflate"),
            (b"Connection", b"close"),
        ]
        with pinned_exchange(
            target,
            deadline,
            "GET",
            headers,
            ssl_context=self._ssl_context,
            expired=deadline.expired(),
            failed=FetchFailed,
            peer="server",
        ) as response:
            yield response

    def _read(
        self,
        target: Target,
        response: httpcore.Response,
        allowed: frozenset[str],
        max_bytes: int,
        deadline: _Deadline,
    ) -> FetchResult:
        """Check the content type, then stream the body up to `max_bytes` decoded bytes."""
        raw_type = _header(response, b"content-type") or ""
        media_type, charset = _media_type(raw_type)
        if media_type not in allowed:
            if 200 <= response.status < 300:
                shown = f"'{media_type}'" if media_type else "missing"
                raise UnsupportedContentType(
                    f"{target.url} has content type {shown}, which cannot be read as text "
                    f"(supported: {', '.join(sorted(allowed))})"
                )
            return FetchResult(target.url, response.status, media_type, "", False)
        decoder = _Decoder(_header(response, b"content-encoding") or "")
        body = bytearray()
        truncated = False
        for chunk in response.iter_stream():
            body += decoder.feed(chunk, max_bytes - len(body) + 1)
            if len(body) > max_bytes:
                del body[max_bytes:]
                truncated = True
                break
            if deadline.remaining() <= 0:
                raise deadline.expired()
        text = _decode_text(bytes(body), media_type, charset)
        return FetchResult(target.url, response.status, media_type, text, truncated)
