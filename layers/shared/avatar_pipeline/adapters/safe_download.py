"""Downloads of provider outputs that cannot be turned against us (SSRF): which URLs, which addresses, which hops.

A provider hands us a URL and we fetch it from inside AWS, where 169.254.169.254 hands out credentials and private
addresses reach internal services. So every hop of a download, redirects included, must pass three checks:

1. `OutputUrlPolicy`: https only, no credentials in the URL, a host on the allow-list (exact names or `*.suffix`
   wildcards: the providers' CDNs). An entry written as a whole origin (`http://127.0.0.1:8123`) trusts exactly that
   scheme, host and port as they are: that is how the local stack lets its simulators in, and nothing else should.
2. `GuardedNetworkBackend`: the host is resolved once, refused if *any* of its addresses is not a public unicast
   address, and the connection goes to an address that was checked. Checking one lookup and connecting after
   another would let a DNS answer that changes in between (rebinding) slip a private address through.
3. `SafeDownloader`: redirects are followed by hand, at most `MAX_REDIRECTS`, each new URL going through 1 and 2.

A refusal raises `RefusedOutputUrlError`, an `OutputUnusableError`: the same URL will be refused however often it is
tried. A DNS failure is a connection error, worth another attempt.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import httpcore
import httpx

from avatar_pipeline.domain import redaction
from avatar_pipeline.domain.errors import OutputUnusableError

logger = logging.getLogger(__name__)
# httpx logs every request's whole URL at INFO, the level Lambda's root logger has when functions log JSON: a
# provider's signed output URL (and its signature) would land in CloudWatch. Our own lines say `redact_url(url)`.
logging.getLogger("httpx").setLevel(logging.WARNING)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> its addresses, in the order to try them. The system resolver by default; a fake one in tests.
Resolver = Callable[[str, int], Sequence[IPAddress]]

MAX_REDIRECTS: Final = 5
# Provider CDNs can be slow to start and to stream large files: wait long for bytes, short for a connection.
DOWNLOAD_TIMEOUT: Final = httpx.Timeout(30.0, read=120.0)
# A video gains nothing from compression; asking for identity keeps Content-Length meaningful.
DOWNLOAD_HEADERS: Final = {"Accept-Encoding": "identity"}
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_HOST_PATTERN: Final = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
# Not covered by `is_global` on every Python version, or worth naming in a refusal.
_SHARED_ADDRESS_SPACE: Final = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT
_NAT64_PREFIX: Final = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: an IPv4 address in the low 32 bits
_METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254")
)


class RefusedOutputUrlError(OutputUnusableError):
    """A provider output URL (or a hop it redirected to) that downloads may not fetch."""


def redact_url(url: str | httpx.URL) -> str:
    """The URL without its query string (or userinfo): presigned provider links carry credentials there. One way of
    redacting for the whole pipeline: the domain's, which also masks provider text quoted in messages."""
    return redaction.redact_url(str(url))


# ------------------------------------------------------------------------------------------------ URLs


@dataclass(frozen=True)
class HostPattern:
    """An allowed host: `name` exactly, or (wildcard) any host ending in `.name`."""

    name: str
    wildcard: bool

    def matches(self, host: str) -> bool:
        return host.endswith("." + self.name) if self.wildcard else host == self.name


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class OutputUrlPolicy:
    """Which URLs a download may fetch (see the module docstring); `parse` reads the ALLOWED_OUTPUT_HOSTS entries."""

    def __init__(self, patterns: Iterable[HostPattern] = (), trusted_origins: Iterable[Origin] = ()) -> None:
        self.patterns = tuple(patterns)
        self.trusted_origins = frozenset(trusted_origins)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> OutputUrlPolicy:
        """Host patterns (`cdn.example.com`, `*.example.com`) and trusted origins (`http://127.0.0.1:8123`).

        Raises ValueError for an entry that is neither, or a wildcard so wide it would allow a whole top-level domain.
        """
        patterns: list[HostPattern] = []
        origins: list[Origin] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            if "://" in entry:
                origins.append(_parse_origin(entry))
                continue
            if not _HOST_PATTERN.match(entry):
                raise ValueError(f"allowed output host {raw!r} is not a host name or a *.suffix pattern")
            wildcard = entry.startswith("*.")
            name = entry.removeprefix("*.")
            if wildcard and "." not in name:
                raise ValueError(f"allowed output host {raw!r} would allow every host under .{name}")
            patterns.append(HostPattern(name, wildcard))
        return cls(patterns, origins)

    def check(self, url: httpx.URL) -> None:
        """Raises RefusedOutputUrlError unless `url` may be fetched (the address check comes at connection time)."""
        shown = redact_url(url)
        host = _host_of(url)
        if url.userinfo:
            raise RefusedOutputUrlError(f"the output URL {shown} carries credentials; such URLs are refused")
        if self.trusts(url.scheme, host, url.port or _DEFAULT_PORTS.get(url.scheme, 0)):
            return
        if url.scheme != "https":
            raise RefusedOutputUrlError(f"the output URL {shown} is not https; only https downloads are allowed")
        if not host:
            raise RefusedOutputUrlError(f"the output URL {shown} has no host")
        if not any(pattern.matches(host) for pattern in self.patterns):
            raise RefusedOutputUrlError(
                f"the output URL {shown} is on {host}, which is not in the allowed output hosts (ALLOWED_OUTPUT_HOSTS)"
            )

    def trusts(self, scheme: str, host: str, port: int) -> bool:
        return Origin(scheme, host, port) in self.trusted_origins

    def trusts_endpoint(self, host: str, port: int) -> bool:
        """Whether (host, port) is a trusted origin's: the connection-level view, which has no scheme."""
        host = host.lower()
        return any(origin.host == host and origin.port == port for origin in self.trusted_origins)


def _parse_origin(entry: str) -> Origin:
    try:
        url = httpx.URL(entry)
    except httpx.InvalidURL as exc:
        raise ValueError(f"allowed output origin {entry!r} is not a URL: {exc}") from exc
    if url.scheme not in _DEFAULT_PORTS or not url.host or url.userinfo or url.query or url.path not in ("", "/"):
        raise ValueError(f"allowed output origin {entry!r} must be scheme://host[:port] (http or https), nothing more")
    return Origin(url.scheme, _host_of(url), url.port or _DEFAULT_PORTS[url.scheme])


def _host_of(url: httpx.URL) -> str:
    """The host as it goes on the wire (IDNA-encoded), lower case, without the trailing dot of an absolute name."""
    return url.raw_host.decode("ascii").lower().removesuffix(".")


# ------------------------------------------------------------------------------------------------ addresses


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The host's addresses from the system resolver (an IP literal is its own address, without a lookup)."""
    addresses: list[IPAddress] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # drop an IPv6 scope id
        if address not in addresses:
            addresses.append(address)
    return addresses


def why_unreachable(address: IPAddress) -> str | None:
    """Why downloads must not connect to `address`, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        # IPv4 written as IPv6 (mapped, NAT64) reaches the IPv4 address: judge that one.
        embedded = address.ipv4_mapped or (
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in _NAT64_PREFIX else None
        )
        if embedded is not None:
            return why_unreachable(embedded)
        if address.sixtofour is not None and why_unreachable(address.sixtofour):
            return "a 6to4 address of a non-public IPv4 address"
    if address in _METADATA_ADDRESSES:
        return "the cloud metadata service"
    for unreachable, label in (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.version == 4 and address in _SHARED_ADDRESS_SPACE, "carrier-grade NAT (shared address space)"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
        (not address.is_global, "not publicly routable"),
    ):
        if unreachable:
            return label
    return None


class GuardedNetworkBackend(httpcore.NetworkBackend):
    """httpcore's network backend, connecting only to vetted public addresses (or to trusted origins as they are).

    httpcore asks the backend for a TCP connection to the request's host; TLS is started afterwards on that stream
    with the host name (SNI and certificate verification), so connecting to an IP we chose loses nothing.
    """

    def __init__(
        self,
        policy: OutputUrlPolicy,
        resolver: Resolver = system_resolver,
        inner: httpcore.NetworkBackend | None = None,
    ) -> None:
        self._policy = policy
        self._resolve = resolver
        self._inner = inner if inner is not None else httpcore.SyncBackend()

    def vetted_addresses(self, host: str, port: int) -> list[IPAddress]:
        """The host's addresses, all of them public; raises RefusedOutputUrlError if any is not, ConnectError if
        there are none."""
        try:
            addresses = list(self._resolve(host, port))
        except OSError as exc:  # socket.gaierror: the name does not resolve (now); worth another attempt
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        for address in addresses:
            problem = why_unreachable(address)
            if problem is not None:
                raise RefusedOutputUrlError(f"{host} resolves to {address}, {problem}; downloads may not go there")
        return addresses

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if self._policy.trusts_endpoint(host, port):
            return self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        last_error: Exception | None = None
        for address in self.vetted_addresses(host, port):
            try:
                return self._inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc  # try the next address, as socket.create_connection would
        assert last_error is not None
        raise last_error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("downloads never use Unix sockets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's own HTTP transport (TLS, pooling, HTTP/1.1), over a `GuardedNetworkBackend`."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        super().__init__()
        # httpx 0.28 takes no network backend: replace its pool with the same pool over ours. (respx, in tests,
        # patches ConnectionPool itself, so it still intercepts requests made through this transport.)
        self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(), network_backend=backend)


def guarded_client(policy: OutputUrlPolicy, resolver: Resolver = system_resolver) -> httpx.Client:
    """An httpx client whose connections go to public addresses only (plus the policy's trusted origins).

    No proxies or .netrc from the environment (`trust_env=False`): a proxy would do the DNS lookup we check, and
    netrc would hand a CDN our credentials. Redirects are left to `SafeDownloader`.
    """
    backend = GuardedNetworkBackend(policy, resolver)
    return httpx.Client(
        transport=GuardedTransport(backend), timeout=DOWNLOAD_TIMEOUT, follow_redirects=False, trust_env=False
    )


# ------------------------------------------------------------------------------------------------ downloads


class SafeDownloader:
    """GETs a provider's output under an `OutputUrlPolicy`, following redirects by hand and checking every hop.

    `client` defaults to `guarded_client(policy, resolver)`, built at the first download: its TLS setup takes tens of
    ms, which functions that never download (webhook, poller, submit) are spared. Tests pass one over an
    `httpx.MockTransport`.
    """

    def __init__(
        self,
        policy: OutputUrlPolicy,
        client: httpx.Client | None = None,
        *,
        resolver: Resolver = system_resolver,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        self.policy = policy
        self._given_client = client
        self._resolver = resolver
        self._max_redirects = max_redirects

    @functools.cached_property
    def _client(self) -> httpx.Client:
        return self._given_client or guarded_client(self.policy, self._resolver)

    @contextmanager
    def open(self, url: str) -> Iterator[httpx.Response]:
        """The final (non-redirect) response, streaming; closed when the block ends.

        Raises RefusedOutputUrlError for a URL or hop the policy refuses or too many redirects; httpx errors as
        they come (the caller decides what is worth retrying).
        """
        try:
            current = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise RefusedOutputUrlError(f"the output URL {redact_url(url)} is not a valid URL: {exc}") from exc
        for hops in range(self._max_redirects + 1):
            self.policy.check(current)
            request = self._client.build_request("GET", current, headers=DOWNLOAD_HEADERS, timeout=DOWNLOAD_TIMEOUT)
            response = self._client.send(request, stream=True, follow_redirects=False)
            if not response.has_redirect_location:
                try:
                    yield response
                finally:
                    response.close()
                return
            location = response.headers["Location"]
            response.close()
            try:
                following = current.join(location)
            except httpx.InvalidURL as exc:
                raise RefusedOutputUrlError(
                    f"{redact_url(current)} redirected to an invalid URL {redact_url(location)}: {exc}"
                ) from exc
            logger.info("%s redirects to %s (hop %d)", redact_url(current), redact_url(following), hops + 1)
            current = following
        raise RefusedOutputUrlError(
            f"the output URL {redact_url(url)} redirected more than {self._max_redirects} times"
        )
