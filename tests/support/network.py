"""A fake DNS and a fake network under httpcore, so downloads run through the real guarded transport offline.

`FakeResolver` answers from a table (and can change its answer between lookups, like a rebinding attacker's DNS);
`FakeNetwork` stands in for httpcore's socket backend: it records every connection (to which address, with which TLS
server name, what was sent) and answers with canned HTTP/1.1 responses chosen by the address connected to.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from avatar_pipeline.adapters.safe_download import (
    GuardedNetworkBackend,
    GuardedTransport,
    IPAddress,
    OutputUrlPolicy,
    SafeDownloader,
)

PUBLIC_IP = "93.184.216.34"
OTHER_PUBLIC_IP = "93.184.216.35"


class FakeResolver:
    """host -> addresses. With `later`, a host's second and further lookups get a different answer, as from a DNS
    server that rebinds the name once it has been checked."""

    def __init__(self, answers: dict[str, list[str]], later: dict[str, list[str]] | None = None) -> None:
        self._answers = answers
        self._later = later or {}
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        answer = self._later.get(host) if host in self.lookups else None
        self.lookups.append(host)
        if answer is None:
            answer = self._answers.get(host)
        if answer is None:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return [ipaddress.ip_address(address) for address in answer]


def http_response(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """A raw HTTP/1.1 response that closes its connection (so each request opens a new one)."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Connection:
    address: str
    port: int
    tls_server_name: str | None = None
    sent: bytearray = field(default_factory=bytearray)


class _FakeStream(httpcore.NetworkStream):
    def __init__(self, connection: Connection, response: bytes) -> None:
        self._connection = connection
        self._chunks = [response[start : start + 4096] for start in range(0, len(response), 4096)]

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._connection.sent += buffer

    def close(self) -> None:
        pass

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        self._connection.tls_server_name = server_hostname  # no handshake: what matters is the name asked for
        return self

    def get_extra_info(self, info: str) -> Any:
        return None


class FakeNetwork(httpcore.NetworkBackend):
    """Serves `responses[address]` to each connection to that address; `down` addresses refuse connections."""

    def __init__(self, responses: dict[str, bytes], down: Iterable[str] = ()) -> None:
        self.responses = responses
        self.down = set(down)
        self.connections: list[Connection] = []

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if host in self.down or host not in self.responses:
            raise httpcore.ConnectError(f"connection to {host}:{port} refused")
        connection = Connection(host, port)
        self.connections.append(connection)
        return _FakeStream(connection, self.responses[host])

    @property
    def addresses(self) -> Sequence[str]:
        return [connection.address for connection in self.connections]


def guarded_downloader(policy: OutputUrlPolicy, resolver: FakeResolver, network: FakeNetwork) -> SafeDownloader:
    """A SafeDownloader over the real guarded transport, with fake DNS and a fake network underneath."""
    backend = GuardedNetworkBackend(policy, resolver, inner=network)
    return SafeDownloader(policy, httpx.Client(transport=GuardedTransport(backend)))
