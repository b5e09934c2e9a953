"""Plumbing shared by the provider simulators: a quiet HTTP server, a JSON request handler, stoppable sleeps,
bearer-token parsing and a POST-with-retries loop for webhooks/callbacks.

Nothing here knows a provider's paths or payloads. The CometAPI simulator uses all of it; the WaveSpeed simulator
still carries its own copies of the same plumbing (`_Server`, `_Handler._read_body`/`_send_json`/`_serve_output`,
`_pause`, `_authorised`, `_deliver`) and could switch to these.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Final

import httpx

logger = logging.getLogger("avatar_local.simulators")

Json = dict[str, Any]

RETRY_STATUSES: Final = frozenset({429})
"""Besides every 5xx: receiver answers that make a webhook/callback sender try again."""


# ------------------------------------------------------------------------------------------------ time


def pause(stopping: threading.Event, seconds: float) -> bool:
    """Sleep for `seconds` of real time unless `stopping` is set first. False when stopping."""
    if seconds > 0:
        return not stopping.wait(seconds)
    return not stopping.is_set()


# ------------------------------------------------------------------------------------------------ auth


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when the header is missing, empty or another
    scheme."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def token_matches(token: str, expected: str | None) -> bool:
    """Whether `token` is acceptable: any token when `expected` is None, else a constant-time equality check."""
    return expected is None or hmac.compare_digest(token.encode(), expected.encode())


# ------------------------------------------------------------------------------------------------ HTTP server


class QuietHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that logs only at debug level and can cut its open (keep-alive) connections on stop.

    `owner` (the simulator) is reachable from handlers as ``self.server.owner``.
    """

    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        owner: Any,
        log: logging.Logger = logger,
    ) -> None:
        self.owner = owner
        self.log = log
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    @property
    def public_base_url(self) -> str:
        """``http://host:port`` to reach this server; a wildcard bind is reached through 127.0.0.1."""
        host, port = self.server_address[:2]
        public_host = "127.0.0.1" if host in ("0.0.0.0", "") else str(host)  # noqa: S104 - a comparison
        return f"http://{public_host}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.log.debug("error while serving %s", client_address, exc_info=True)


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler plumbing: whole-body reads (Content-Length or chunked), JSON answers, file
    downloads that can be cut short on purpose, and access logging at debug level on the server's logger."""

    protocol_version = "HTTP/1.1"
    server: QuietHTTPServer
    not_found: ClassVar[Json] = {"message": "not found"}

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log.debug("%s - %s", self.address_string(), format % args)

    def read_body(self) -> bytes:
        """The whole request body, so a keep-alive connection stays in step."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while size := int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            while self.rfile.readline().strip():  # optional trailers, up to the blank line
                pass
            return b"".join(chunks)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_file(self, path: Path, content_type: str, *, truncate: bool = False) -> None:
        """Send a file with its full ``Content-Length``. With `truncate` (GET only), send half of it and hang up,
        like a CDN connection dropped mid-transfer."""
        data = path.read_bytes()
        truncate = truncate and self.command == "GET"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        if not truncate:
            self.wfile.write(data)
            return
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


# ------------------------------------------------------------------------------------------------ outbound POSTs


def post_with_retries(
    client: httpx.Client,
    url: str,
    body: bytes,
    *,
    headers: Callable[[], dict[str, str]],
    attempts: int,
    backoff: Callable[[int], bool],
    record: Callable[[int, int | None, str | None], None],
) -> bool:
    """POST `body` to `url` until the receiver takes it: up to `attempts` tries, again after a connection error,
    a 429 or a 5xx. A 2xx-4xx answer other than 429 ends it (a 4xx is the receiver's final word).

    `headers()` is called per attempt (fresh timestamps, signatures); `record(attempt, status, error)` after each
    attempt; `backoff(attempt)` sleeps after a failed attempt and returns False to give up (e.g. when stopping).
    True when some attempt got a final answer.
    """
    for attempt in range(1, attempts + 1):
        status: int | None = None
        error: str | None = None
        try:
            status = client.post(url, content=body, headers=headers()).status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        record(attempt, status, error)
        if status is not None and status not in RETRY_STATUSES and status < 500:
            return True
        if attempt < attempts and not backoff(attempt):
            return False
    return False


__all__ = [
    "Json",
    "JsonHandler",
    "QuietHTTPServer",
    "bearer_token",
    "pause",
    "post_with_retries",
    "token_matches",
]
