"""Safe downloads of provider outputs: the URL policy, the address checks after DNS, and redirects hop by hop.

No real DNS and no real network: `FakeResolver` answers lookups and `FakeNetwork` stands in for httpcore's sockets,
under the real `GuardedTransport`; redirect rules are also tested over an `httpx.MockTransport`.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable

import httpcore
import httpx
import pytest
from support.network import (
    OTHER_PUBLIC_IP,
    PUBLIC_IP,
    FakeNetwork,
    FakeResolver,
    guarded_downloader,
    http_response,
)

from avatar_pipeline.adapters import safe_download
from avatar_pipeline.adapters.safe_download import (
    MAX_REDIRECTS,
    GuardedNetworkBackend,
    OutputUrlPolicy,
    RefusedOutputUrlError,
    SafeDownloader,
    why_unreachable,
)
from avatar_pipeline.config import Settings
from avatar_pipeline.domain.errors import OutputUnusableError

CDN = "cdn.provider.test"
URL = f"https://{CDN}/output/video.mp4"
POLICY = OutputUrlPolicy.parse(["*.provider.test", "files.example.test"])
LOCAL_ORIGIN = "http://127.0.0.1:8123"

Handler = Callable[[httpx.Request], httpx.Response]


def read(downloader: SafeDownloader, url: str = URL) -> bytes:
    with downloader.open(url) as response:
        return response.read()


def mock_downloader(handler: Handler, policy: OutputUrlPolicy = POLICY) -> SafeDownloader:
    return SafeDownloader(policy, httpx.Client(transport=httpx.MockTransport(handler)))


def redirecting(hops: dict[str, str], seen: list[str], body: bytes = b"video") -> Handler:
    """Answers a redirect to `hops[url]` for the URLs in `hops`, the body for any other; records what was asked."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if str(request.url) in hops:
            return httpx.Response(302, headers={"Location": hops[str(request.url)]})
        return httpx.Response(200, content=body)

    return handler


# --- the URL policy ------------------------------------------------------------------------------------------


def test_an_http_url_is_refused_before_any_connection() -> None:
    # Given an allow-listed host behind plain http
    network = FakeNetwork({PUBLIC_IP: http_response(body=b"video")})
    downloader = guarded_downloader(POLICY, FakeResolver({CDN: [PUBLIC_IP]}), network)

    # When it is downloaded, Then it is refused as not https, without a lookup or a connection
    with pytest.raises(RefusedOutputUrlError, match="is not https"):
        read(downloader, f"http://{CDN}/output/video.mp4")
    assert network.connections == []


def test_a_host_outside_the_allow_list_is_refused_before_any_connection() -> None:
    # Given a URL on a host the allow-list does not name
    resolver = FakeResolver({"evil.example": [PUBLIC_IP]})
    network = FakeNetwork({PUBLIC_IP: http_response(body=b"video")})

    # When it is downloaded, Then it is refused, naming the host and the setting, and nothing was looked up
    with pytest.raises(
        RefusedOutputUrlError, match=re.escape("evil.example, which is not in the allowed output hosts")
    ):
        read(guarded_downloader(POLICY, resolver, network), "https://evil.example/video.mp4")
    assert resolver.lookups == [] and network.connections == []


def test_a_refusal_is_an_unusable_output_so_it_is_never_retried() -> None:
    # Given a refused URL, When it is downloaded, Then the error is the permanent kind finalize does not retry
    with pytest.raises(OutputUnusableError):
        read(mock_downloader(lambda request: httpx.Response(200)), "https://evil.example/video.mp4")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("cdn.provider.test", True),
        ("a.b.provider.test", True),
        ("CDN.Provider.Test", True),
        ("cdn.provider.test.", True),  # the absolute form of the same name
        ("files.example.test", True),
        ("provider.test", False),  # a wildcard needs at least one more label
        ("evilprovider.test", False),
        ("cdn.provider.test.evil.example", False),
        ("other.files.example.test", False),  # an exact entry is exact
    ],
)
def test_wildcards_match_subdomains_and_exact_entries_match_only_themselves(host: str, allowed: bool) -> None:
    # Given the policy (*.provider.test, files.example.test), When a URL on `host` is checked, Then as expected
    url = httpx.URL(f"https://{host}/video.mp4")
    if allowed:
        POLICY.check(url)
    else:
        with pytest.raises(RefusedOutputUrlError, match="not in the allowed output hosts"):
            POLICY.check(url)


@pytest.mark.parametrize(
    "url", ["https://user:secret@cdn.provider.test/video.mp4", "https://cdn.provider.test@evil.example/video.mp4"]
)
def test_a_url_carrying_credentials_is_refused(url: str) -> None:
    # Given a URL with userinfo (credentials, or a host name dressed up as them), When checked, Then refused
    with pytest.raises(RefusedOutputUrlError, match="carries credentials") as caught:
        POLICY.check(httpx.URL(url))
    # And the refusal does not quote the credentials it refuses
    assert "user:secret" not in str(caught.value)


def test_an_explicit_local_origin_is_allowed_over_http_to_loopback() -> None:
    # Given a policy trusting the local simulator's origin, and that simulator on 127.0.0.1:8123
    policy = OutputUrlPolicy.parse([LOCAL_ORIGIN])
    network = FakeNetwork({"127.0.0.1": http_response(body=b"simulated video")})
    resolver = FakeResolver({})

    # When an output on that origin is downloaded
    body = read(guarded_downloader(policy, resolver, network), f"{LOCAL_ORIGIN}/outputs/abc.mp4")

    # Then it is fetched over plain http from loopback, as written, without a lookup
    assert body == b"simulated video"
    assert [(c.address, c.port, c.tls_server_name) for c in network.connections] == [("127.0.0.1", 8123, None)]
    assert resolver.lookups == []


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8124/outputs/abc.mp4", "https://127.0.0.1:8123/outputs/abc.mp4", "http://localhost:8123/x"],
)
def test_a_trusted_origin_trusts_nothing_else_on_its_host(url: str) -> None:
    # Given a policy trusting only http://127.0.0.1:8123, When another port, scheme or name is checked, Then refused
    with pytest.raises(RefusedOutputUrlError):
        OutputUrlPolicy.parse([LOCAL_ORIGIN]).check(httpx.URL(url))


def test_parse_reads_host_patterns_and_origins_separately() -> None:
    # Given patterns and an origin, with odd spacing and case
    policy = OutputUrlPolicy.parse([" *.CloudFront.net", "cdn.example.test", "", "HTTP://127.0.0.1:8123/"])

    # When parsed, Then the patterns are normalised and the origin is kept whole, default port filled in
    assert [(p.name, p.wildcard) for p in policy.patterns] == [("cloudfront.net", True), ("cdn.example.test", False)]
    assert [str(origin) for origin in policy.trusted_origins] == ["http://127.0.0.1:8123"]
    assert [str(o) for o in OutputUrlPolicy.parse(["https://sim.test"]).trusted_origins] == ["https://sim.test:443"]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("*", "not a host name"),
        ("*.com", "would allow every host under .com"),
        ("cdn.*.example", "not a host name"),
        ("bad host", "not a host name"),
        ("ftp://files.example.test", "must be scheme://host"),
        ("http://127.0.0.1:8123/outputs", "must be scheme://host"),
        ("http://user@127.0.0.1:8123", "must be scheme://host"),
    ],
)
def test_parse_refuses_entries_that_are_neither_host_patterns_nor_origins(entry: str, reason: str) -> None:
    # Given a malformed or overly wide entry, When parsed, Then it is refused with the reason (a deploy-time error)
    with pytest.raises(ValueError, match=reason):
        OutputUrlPolicy.parse([entry])


def test_settings_split_allowed_output_hosts_and_default_to_the_provider_cdns() -> None:
    # Given the environment of a deployment, with and without ALLOWED_OUTPUT_HOSTS
    base = {"TASK_TABLE_NAME": "t", "MEDIA_BUCKET": "b", "TOPIC_ARN": "arn", "WAVESPEED_SECRET_ID": "s"}
    given = Settings.from_env(
        {**base, "ALLOWED_OUTPUT_HOSTS": "*.cloudfront.net, cdn.example.test\nhttp://127.0.0.1:1"}
    )

    # Then commas and whitespace separate entries, and the default is the providers' CDNs
    assert given.allowed_output_hosts == ("*.cloudfront.net", "cdn.example.test", "http://127.0.0.1:1")
    assert Settings.from_env(base).allowed_output_hosts == (
        "*.cloudfront.net",
        "*.wavespeed.ai",
        "*.klingai.com",
        "*.cometapi.com",
        "*.fal.media",
    )
    # And an empty list is a configuration error rather than a finalize that refuses everything
    with pytest.raises(ValueError, match=r"allowed_output_hosts|ALLOWED_OUTPUT_HOSTS"):
        Settings.from_env({**base, "ALLOWED_OUTPUT_HOSTS": " , "})


# --- addresses -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "label"),
    [
        ("10.0.0.7", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.10.10", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address under test, not a bind
        ("224.0.0.251", "multicast"),
        ("240.0.0.1", "reserved"),
        ("198.18.0.1", "private"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fd00::1", "private"),
        ("fd00:ec2::254", "cloud metadata"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: it is 127.0.0.1
        ("::ffff:10.0.0.7", "private"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64 of 169.254.169.254
        ("2002:a00:7::1", "6to4"),  # 6to4 of 10.0.0.7
        ("2001:db8::1", "private"),  # documentation
    ],
)
def test_addresses_that_are_not_public_are_refused_with_their_kind(address: str, label: str) -> None:
    # Given a non-public address, When judged, Then it is refused with what kind of address it is
    problem = why_unreachable(ipaddress.ip_address(address))
    assert problem is not None and label in problem


@pytest.mark.parametrize("address", [PUBLIC_IP, "2606:4700::1111", "::ffff:93.184.216.34", "64:ff9b::5db8:d822"])
def test_public_unicast_addresses_are_allowed(address: str) -> None:
    # Given a public address (IPv4, IPv6, or IPv4 written as IPv6), When judged, Then nothing is wrong with it
    assert why_unreachable(ipaddress.ip_address(address)) is None


# --- the guarded backend: resolve once, check all, connect to what was checked -------------------------------


def test_the_backend_connects_to_the_vetted_address_and_resolves_only_once() -> None:
    # Given a host resolving to a public address, and a network that answers there
    resolver = FakeResolver({CDN: [PUBLIC_IP]})
    network = FakeNetwork({PUBLIC_IP: b""})
    backend = GuardedNetworkBackend(POLICY, resolver, inner=network)

    # When the backend opens a connection to the host
    backend.connect_tcp(CDN, 443, timeout=5.0)

    # Then it looked the name up once and connected to the address it checked, not to the name
    assert resolver.lookups == [CDN]
    assert [(c.address, c.port) for c in network.connections] == [(PUBLIC_IP, 443)]


def test_the_backend_refuses_a_host_when_any_of_its_addresses_is_not_public() -> None:
    # Given a host resolving to a public and a private address (round-robin DNS an attacker controls)
    network = FakeNetwork({PUBLIC_IP: b"", "10.0.0.7": b""})
    backend = GuardedNetworkBackend(POLICY, FakeResolver({CDN: [PUBLIC_IP, "10.0.0.7"]}), inner=network)

    # When a connection is asked for, Then it is refused, naming the address, and no connection is made at all
    with pytest.raises(RefusedOutputUrlError, match=r"cdn.provider.test resolves to 10.0.0.7, private"):
        backend.connect_tcp(CDN, 443)
    assert network.connections == []


def test_the_backend_tries_the_next_vetted_address_when_one_does_not_answer() -> None:
    # Given a host with two public addresses, the first of which refuses connections
    network = FakeNetwork({PUBLIC_IP: b"", OTHER_PUBLIC_IP: b""}, down=[PUBLIC_IP])
    backend = GuardedNetworkBackend(POLICY, FakeResolver({CDN: [PUBLIC_IP, OTHER_PUBLIC_IP]}), inner=network)

    # When a connection is asked for, Then it lands on the second address
    backend.connect_tcp(CDN, 443)
    assert network.addresses == [OTHER_PUBLIC_IP]


def test_a_host_that_does_not_resolve_is_a_connection_error_worth_another_attempt() -> None:
    # Given a name the DNS does not know (now), When a connection is asked for, Then it is httpcore's ConnectError
    backend = GuardedNetworkBackend(POLICY, FakeResolver({}), inner=FakeNetwork({}))
    with pytest.raises(httpcore.ConnectError, match=re.escape("cannot resolve cdn.provider.test")):
        backend.connect_tcp(CDN, 443)


def test_the_backend_connects_to_a_trusted_origin_as_written_without_a_lookup() -> None:
    # Given a policy trusting http://127.0.0.1:8123
    resolver = FakeResolver({})
    network = FakeNetwork({"127.0.0.1": b""})
    backend = GuardedNetworkBackend(OutputUrlPolicy.parse([LOCAL_ORIGIN]), resolver, inner=network)

    # When a connection to 127.0.0.1:8123 is asked for, Then it is made as is; another port is checked and refused
    backend.connect_tcp("127.0.0.1", 8123)
    assert network.addresses == ["127.0.0.1"] and resolver.lookups == []
    with pytest.raises(RefusedOutputUrlError, match="loopback"):
        GuardedNetworkBackend(POLICY, FakeResolver({"127.0.0.1": ["127.0.0.1"]}), inner=network).connect_tcp(
            "127.0.0.1", 8124
        )


# --- whole downloads through the guarded transport -----------------------------------------------------------


def test_a_download_goes_to_the_vetted_address_with_the_host_name_kept_for_tls_and_http() -> None:
    # Given an allow-listed CDN host resolving to a public address that serves the video
    network = FakeNetwork({PUBLIC_IP: http_response(body=b"the video")})
    downloader = guarded_downloader(POLICY, FakeResolver({CDN: [PUBLIC_IP]}), network)

    # When it is downloaded
    body = read(downloader)

    # Then the bytes came from the checked address, while TLS (SNI, certificate) and Host still name the CDN
    assert body == b"the video"
    (connection,) = network.connections
    assert (connection.address, connection.port, connection.tls_server_name) == (PUBLIC_IP, 443, CDN)
    assert b"GET /output/video.mp4 HTTP/1.1\r\n" in connection.sent
    assert f"Host: {CDN}\r\n".encode() in connection.sent


def test_dns_rebinding_cannot_swap_in_a_private_address_after_the_check() -> None:
    # Given a DNS that answers a public address first, then 127.0.0.1 to any later lookup
    resolver = FakeResolver({CDN: [PUBLIC_IP]}, later={CDN: ["127.0.0.1"]})
    network = FakeNetwork({PUBLIC_IP: http_response(body=b"public"), "127.0.0.1": http_response(body=b"internal")})

    # When the output is downloaded
    body = read(guarded_downloader(POLICY, resolver, network))

    # Then the one lookup that was checked is the one connected to
    assert body == b"public"
    assert resolver.lookups == [CDN] and network.addresses == [PUBLIC_IP]


@pytest.mark.parametrize(
    "address", ["10.0.0.7", "127.0.0.1", "169.254.169.254", "::1", "fd00::1", "::ffff:127.0.0.1", "100.64.1.2"]
)
def test_an_allow_listed_host_resolving_to_a_non_public_address_is_refused(address: str) -> None:
    # Given an allow-listed host whose DNS points at an internal address
    network = FakeNetwork({address: http_response(body=b"internal secrets")})
    downloader = guarded_downloader(POLICY, FakeResolver({CDN: [address]}), network)

    # When it is downloaded, Then it is refused, naming the address, and no connection was made
    with pytest.raises(RefusedOutputUrlError, match=re.escape(f"resolves to {ipaddress.ip_address(address)}")):
        read(downloader)
    assert network.connections == []


def test_a_redirect_to_an_allow_listed_host_on_a_private_address_is_refused_before_connecting_there() -> None:
    # Given a public CDN redirecting to another allow-listed name that resolves to the metadata service
    resolver = FakeResolver({CDN: [PUBLIC_IP], "files.example.test": ["169.254.169.254"]})
    network = FakeNetwork(
        {
            PUBLIC_IP: http_response(302, headers={"Location": "https://files.example.test/latest/meta-data/"}),
            "169.254.169.254": http_response(body=b"credentials"),
        }
    )

    # When the output is downloaded, Then the hop is refused and only the public address was ever connected to
    with pytest.raises(RefusedOutputUrlError, match=re.escape("169.254.169.254, the cloud metadata service")):
        read(guarded_downloader(POLICY, resolver, network))
    assert network.addresses == [PUBLIC_IP]


# --- redirects -----------------------------------------------------------------------------------------------


def test_allowed_redirects_are_followed_absolute_and_relative() -> None:
    # Given a URL redirecting to another allowed host, which redirects to a relative path
    seen: list[str] = []
    hops = {URL: "https://files.example.test/a/b.mp4?sig=1", "https://files.example.test/a/b.mp4?sig=1": "/c.mp4"}

    # When it is downloaded
    body = read(mock_downloader(redirecting(hops, seen)))

    # Then each hop was requested in turn and the last one's body is what came back
    assert body == b"video"
    assert seen == [URL, "https://files.example.test/a/b.mp4?sig=1", "https://files.example.test/c.mp4"]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("https://evil.example/video.mp4", "not in the allowed output hosts"),
        (f"http://{CDN}/video.mp4", "is not https"),
        ("http://169.254.169.254/latest/meta-data/", "is not https"),
        (f"https://user:pw@{CDN}/video.mp4", "carries credentials"),
        ("file:///etc/passwd", "is not https"),
    ],
)
def test_a_redirect_the_policy_refuses_is_never_requested(location: str, reason: str) -> None:
    # Given an allowed URL redirecting somewhere the policy refuses
    seen: list[str] = []

    # When it is downloaded, Then the download is refused and the refused hop was never asked for
    with pytest.raises(RefusedOutputUrlError, match=reason):
        read(mock_downloader(redirecting({URL: location}, seen)))
    assert seen == [URL]


def test_a_chain_of_redirects_up_to_the_limit_is_followed() -> None:
    # Given exactly MAX_REDIRECTS redirects before the file
    seen: list[str] = []
    chain = {f"https://{CDN}/{n}": f"https://{CDN}/{n + 1}" for n in range(MAX_REDIRECTS)}

    # When it is downloaded, Then the file at the end is fetched
    assert read(mock_downloader(redirecting(chain, seen)), f"https://{CDN}/0") == b"video"
    assert len(seen) == MAX_REDIRECTS + 1


def test_a_chain_of_redirects_longer_than_the_limit_is_refused() -> None:
    # Given one redirect more than the limit
    seen: list[str] = []
    chain = {f"https://{CDN}/{n}": f"https://{CDN}/{n + 1}" for n in range(MAX_REDIRECTS + 1)}

    # When it is downloaded, Then it is refused after the limit, without asking for the file at the end
    with pytest.raises(RefusedOutputUrlError, match=f"redirected more than {MAX_REDIRECTS} times"):
        read(mock_downloader(redirecting(chain, seen)), f"https://{CDN}/0")
    assert f"https://{CDN}/{MAX_REDIRECTS + 1}" not in seen


def test_refusals_leave_the_query_strings_out() -> None:
    # Given a presigned URL redirecting to a refused, presigned URL
    seen: list[str] = []
    hops = {f"{URL}?X-Amz-Signature=first-secret": "https://evil.example/v.mp4?token=second-secret"}

    # When it is downloaded
    with pytest.raises(RefusedOutputUrlError) as caught:
        read(mock_downloader(redirecting(hops, seen)), f"{URL}?X-Amz-Signature=first-secret")

    # Then the message names the hop but neither secret
    assert "https://evil.example/v.mp4" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_a_malformed_url_is_refused() -> None:
    # Given a URL httpx cannot parse, When downloaded, Then it is refused as invalid (not retried)
    with pytest.raises(RefusedOutputUrlError, match="not a valid URL"):
        read(mock_downloader(lambda request: httpx.Response(200)), "https://[::1/video.mp4")


def test_a_downloader_builds_its_client_at_the_first_download_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a downloader made without a client, as the functions make it
    built: list[OutputUrlPolicy] = []

    def counting_guarded_client(policy: OutputUrlPolicy, resolver: object) -> httpx.Client:
        built.append(policy)
        return httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(200, content=b"video")))

    monkeypatch.setattr(safe_download, "guarded_client", counting_guarded_client)
    downloader = SafeDownloader(POLICY)

    # When nothing is downloaded, no client (and no TLS setup) exists; then two downloads follow
    before = len(built)
    bodies = [read(downloader), read(downloader)]

    # Then the client was built once, at the first download, under the downloader's policy
    assert before == 0
    assert built == [POLICY]
    assert bodies == [b"video", b"video"]


def test_a_signed_output_url_never_reaches_the_logs_with_logging_set_up_as_lambda_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given the root logger at INFO, as Lambda's runtime sets it up for functions logging JSON, when a signed output
    URL is downloaded, then no log record holds its query string (httpx would log the whole URL at INFO)."""
    signed = "https://cdn.provider.test/out.mp4?X-Amz-Signature=secretsignature&X-Amz-Credential=AKIAEXAMPLE"
    downloader = mock_downloader(lambda _: httpx.Response(200, content=b"video"))

    with caplog.at_level(logging.INFO):
        logging.getLogger().setLevel(logging.INFO)
        assert read(downloader, signed) == b"video"

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "secretsignature" not in logged
    assert "X-Amz-Credential" not in logged
