"""Plumbing shared by the provider simulators: a quiet HTTP server, a JSON request handler, stoppable sleeps,
bearer-token parsing, input downloads, a POST-with-retries loop for webhooks/callbacks, and `SimulatorCore`: the
lifecycle, request log, simulated clock and first-come-first-served processing workers of a simulator.

Nothing here knows a provider's paths or payloads; both the WaveSpeed and the CometAPI simulator are built on it.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import json
import logging
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Final, Generic, Self, TypeVar
from urllib.parse import parse_qsl, urlsplit

import httpx
from pydantic import ValidationError

from avatar_local.simulators.faults import AnswerLost, FaultPlan

logger = logging.getLogger("avatar_local.simulators")

Json = dict[str, Any]

RETRY_STATUSES: Final = frozenset({429})
"""Besides every 5xx: receiver answers that make a webhook/callback sender try again."""

DOWNLOAD_TIMEOUT: Final = httpx.Timeout(15.0, connect=5.0)
WEBHOOK_TIMEOUT: Final = httpx.Timeout(10.0, connect=5.0)
STOP_JOIN_SECONDS: Final = 5.0
OUTPUTS_PREFIX: Final = "/outputs/"
"""Where simulators serve rendered videos (``/outputs/<id>.mp4``, no auth), standing in for a provider's CDN."""
MAX_PROMPT_CHARS: Final = 2500


# ------------------------------------------------------------------------------------------------ values


def iso_now() -> str:
    """UTC now as ISO-8601 with nanoseconds and a Z, like WaveSpeed's ``created_at``."""
    ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}Z"


def status_message(status: int) -> str:
    """A short message for an injected 429/5xx answer."""
    return {
        429: "rate limit exceeded",
        500: "internal server error",
        502: "bad gateway",
        503: "service unavailable",
        504: "gateway timeout",
    }.get(status, "server error")


def is_http_url(value: Any) -> bool:
    """Whether `value` is a string holding an absolute http(s) URL."""
    if not isinstance(value, str):
        return False
    parts = urlsplit(value.strip())
    return parts.scheme in ("http", "https") and bool(parts.netloc)


# ------------------------------------------------------------------------------------------------ time


def pause(stopping: threading.Event, seconds: float) -> bool:
    """Sleep for `seconds` of real time unless `stopping` is set first. False when stopping."""
    if seconds > 0:
        return not stopping.wait(seconds)
    return not stopping.is_set()


# ------------------------------------------------------------------------------------------------ auth


def authorization_token(header: str | None, scheme: str) -> str | None:
    """The token of an ``Authorization: <scheme> <token>`` header (the scheme matched case-insensitively); None when
    the header is missing, empty or another scheme."""
    given, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    if given.lower() != scheme.lower() or not token:
        return None
    return token


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when the header is missing, empty or another
    scheme."""
    return authorization_token(header, "Bearer")


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
    # TCP_NODELAY: headers and body go out as two writes, which Nagle plus the client's delayed ACK hold ~40 ms.
    disable_nagle_algorithm = True
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
        """Send a file with its full ``Content-Length``, streamed from disk (a large video is never held in memory).
        With `truncate` (GET only), send half of it and hang up, like a CDN connection dropped mid-transfer."""
        size = path.stat().st_size
        truncate = truncate and self.command == "GET"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size))
        if truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        count = size // 2 if truncate else size
        if count > 0:
            with path.open("rb") as file:
                self.wfile.flush()
                # os.sendfile where the platform has it: the kernel copies the bytes, as a CDN's server would.
                self.connection.sendfile(file, 0, count)
        if not truncate:
            return
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


# ------------------------------------------------------------------------------------------------ outbound requests


def download_input(url: str, what: str, fail: Callable[[str], Exception]) -> bytes:
    """GET an input file (following redirects). A connection error, a status other than 200 or an empty body
    raises ``fail("media fetch failed: <what>: <reason>")``."""
    try:
        with httpx.Client(timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as client:
            response = client.get(url)
    except httpx.HTTPError as exc:
        raise fail(f"media fetch failed: {what}: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise fail(f"media fetch failed: {what}: HTTP {response.status_code}")
    if not response.content:
        raise fail(f"media fetch failed: {what}: empty body")
    return response.content


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


# ------------------------------------------------------------------------------------------------ simulator core

JobT = TypeVar("JobT")


class SimulatorCore(Generic[JobT]):
    """What every simulator has: a `QuietHTTPServer` on ``host:port`` (port 0: any free port), a replaceable fault
    plan, simulated time (real time x `time_factor`), a log of API requests and of outbound deliveries, and
    `max_concurrent` processing workers that take job ids first come first served from ``_queue``.

    A subclass sets `display_name`, `thread_prefix` and `log`; queues a job by appending its id to ``_queue`` and
    notifying ``_work_ready`` while holding it; implements `_begin_locked` (id to job, marked as processing; called
    with the lock held) and `_process` (the work, without the lock); and registers its delivery threads in
    ``_senders`` so that `wait_until_idle` and `stop` see them.
    """

    display_name: ClassVar[str]
    thread_prefix: ClassVar[str]
    log: ClassVar[logging.Logger] = logger

    @staticmethod
    def check_settings(time_factor: float, max_concurrent: int) -> None:
        """Raise ValueError for settings no simulator accepts (call before binding anything)."""
        if time_factor <= 0:
            raise ValueError("time_factor must be positive")
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")

    def __init__(
        self,
        host: str,
        port: int,
        handler: type[BaseHTTPRequestHandler],
        faults: FaultPlan,
        time_factor: float,
        max_concurrent: int,
    ) -> None:
        self.check_settings(time_factor, max_concurrent)
        self.time_factor = time_factor
        self.max_concurrent = max_concurrent
        self._faults = faults

        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._queue: collections.deque[str] = collections.deque()
        self._processing = 0
        self._peak_processing = 0
        self.truncated_downloads = 0  # output downloads cut off halfway by the fault plan
        self._requests: list[Json] = []
        self._deliveries: list[Json] = []
        self._senders: set[threading.Thread] = set()

        self._server = QuietHTTPServer((host, port), handler, self, self.log)
        self._base_url = self._server.public_base_url
        self._server_thread: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self._workdir: Path | None = None
        self._stopped = False

    # ------------------------------------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running simulator, without a trailing slash."""
        return self._base_url

    @property
    def faults(self) -> FaultPlan:
        return self._faults

    def start(self) -> Self:
        """Serve in a daemon thread and start the processing workers. Returns self."""
        if self._stopped:
            raise RuntimeError("a stopped simulator cannot be restarted; create a new one")
        if self._server_thread is not None:
            return self
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.thread_prefix}-"))
        for index in range(self.max_concurrent):
            worker = threading.Thread(target=self._work, name=f"{self.thread_prefix}-worker-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        self._server_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.thread_prefix}-http",
            daemon=True,
        )
        self._server_thread.start()
        self.log.debug("%s simulator listening on %s", self.display_name, self._base_url)
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections, end workers and delivery threads, delete rendered videos."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        with self._work_ready:
            self._work_ready.notify_all()
        if self._server_thread is not None:
            self._server.shutdown()
        self._server.server_close()
        self._server.close_open_connections()
        deadline = time.monotonic() + STOP_JOIN_SECONDS
        with self._lock:
            senders = list(self._senders)
        for thread in [*self._workers, *senders]:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._server_thread is not None:
            self._server_thread.join(max(0.0, deadline - time.monotonic()))
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------ inspection

    def set_faults(self, plan: FaultPlan) -> None:
        """Replace the fault plan; it applies to requests and jobs from now on."""
        self._faults = plan

    def requests(self) -> list[Json]:
        """Every API request received so far (oldest first)."""
        with self._lock:
            return [dict(record) for record in self._requests]

    @property
    def peak_processing(self) -> int:
        """The most jobs that were ever processing at the same time."""
        with self._lock:
            return self._peak_processing

    def reset(self) -> None:
        """Forget recorded requests and deliveries (jobs stay)."""
        with self._lock:
            self._requests.clear()
            self._deliveries.clear()

    def wait_until_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no job is queued or processing and no delivery is pending. False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                busy = self._processing > 0 or bool(self._queue) or any(t.is_alive() for t in self._senders)
            if not busy:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def inspections(self) -> dict[str, Callable[[], Any]]:
        """``GET /_sim/...`` listing paths and what each answers (besides ``/_sim/faults``)."""
        return {"/_sim/requests": self.requests}

    # ------------------------------------------------------------------------------------------------ helpers

    def _scaled(self, simulated_seconds: float) -> float:
        return max(0.0, simulated_seconds) / self.time_factor

    def _pause(self, simulated_seconds: float) -> bool:
        """Sleep for a simulated duration; False when the simulator is stopping."""
        return pause(self._stopping, self._scaled(simulated_seconds))

    def _post_recorded(
        self,
        client: httpx.Client,
        url: str,
        body: bytes,
        *,
        headers: Callable[[], dict[str, str]],
        about: Callable[[], Json],
        attempts: int,
        first_backoff_seconds: float,
    ) -> bool:
        """A callback POSTed with `post_with_retries` (the backoff doubling from `first_backoff_seconds` of simulated
        time), each attempt kept in `_deliveries`: what `about()` says of it then, with its URL, number and answer."""

        def record(attempt: int, status: int | None, error: str | None) -> None:
            entry: Json = {**about(), "url": url, "attempt": attempt, "status": status, "error": error}
            with self._lock:
                self._deliveries.append(entry)

        return post_with_retries(
            client,
            url,
            body,
            headers=headers,
            attempts=attempts,
            backoff=lambda attempt: self._pause(first_backoff_seconds * 2 ** (attempt - 1)),
            record=record,
        )

    def _record(self, method: str, path: str, query: dict[str, str], body: Any) -> Json:
        record: Json = {"method": method, "path": path, "query": query, "json": body, "at": iso_now(), "status": None}
        with self._lock:
            self._requests.append(record)
        return record

    # ------------------------------------------------------------------------------------------------ processing

    def _output(self, job_id: str) -> Path | None:
        """The rendered video of a finished job, or None."""
        raise NotImplementedError

    def _begin_locked(self, job_id: str) -> JobT:
        """The queued job `job_id`, now marked as processing. Called with the lock held."""
        raise NotImplementedError

    def _process(self, job: JobT) -> None:
        """Do the job, to its end (called without the lock)."""
        raise NotImplementedError

    def _work(self) -> None:
        while True:
            with self._work_ready:
                while not self._queue and not self._stopping.is_set():
                    self._work_ready.wait()
                if self._stopping.is_set():
                    return
                job = self._begin_locked(self._queue.popleft())
                self._processing += 1
                self._peak_processing = max(self._peak_processing, self._processing)
            try:
                self._process(job)
            finally:
                with self._lock:
                    self._processing -= 1


Answer = tuple[int, Json, dict[str, str]]
"""An API answer: HTTP status, JSON body, extra headers."""


class SimulatorHandler(JsonHandler):
    """The request handler of a `SimulatorCore`: routes ``/_sim/`` to the inspection endpoints, ``GET``/``HEAD
    /outputs/<id>.mp4`` to the job's video, paths under `api_prefix` to `answer` (recording each request with its
    answer's status) and anything else to a 404 `not_found`."""

    api_prefix: ClassVar[str] = "/"
    fault_plan_type: ClassVar[type[FaultPlan]] = FaultPlan

    @property
    def core(self) -> SimulatorCore[Any]:
        core: SimulatorCore[Any] = self.server.owner
        return core

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_HEAD(self) -> None:
        self.dispatch("HEAD")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path
        raw = self.read_body()
        if path.startswith("/_sim/"):
            self.control(method, path, raw)
        elif path.startswith(OUTPUTS_PREFIX) and method in ("GET", "HEAD"):
            self.serve_output(path.removeprefix(OUTPUTS_PREFIX).removesuffix(".mp4"))
        elif path.startswith(self.api_prefix):
            self.api(method, path, dict(parse_qsl(split.query, keep_blank_values=True)), raw)
        else:
            self.send_json(404, self.not_found)

    def answer(self, method: str, path: str, query: dict[str, str], raw: bytes, body: Any) -> Answer:
        """The answer to an API request; `body` is the parsed JSON body or None."""
        raise NotImplementedError

    def api(self, method: str, path: str, query: dict[str, str], raw: bytes) -> None:
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        record = self.core._record(method, path, query, body)
        try:
            status, payload, headers = self.answer(method, path, query, raw, body)
        except AnswerLost:
            record["status"] = "lost"
            self.close_connection = True  # hang up without a word, as a timed-out or broken connection would
            return
        record["status"] = status
        self.send_json(status, payload, headers)

    def serve_output(self, job_id: str) -> None:
        video = self.core._output(job_id)
        if video is None:
            self.send_json(404, self.not_found)
            return
        plan = self.core.faults
        truncate = self.command == "GET" and plan.should(plan.truncated_download_rate)
        if truncate:
            with self.core._lock:
                self.core.truncated_downloads += 1
        self.send_file(video, "video/mp4", truncate=truncate)

    def control(self, method: str, path: str, raw: bytes) -> None:
        core = self.core
        listing = core.inspections().get(path) if method == "GET" else None
        if listing is not None:
            self.send_json(200, listing())
        elif method == "GET" and path == "/_sim/faults":
            self.send_json(200, core.faults.model_dump())
        elif method == "POST" and path == "/_sim/faults":
            try:
                plan = self.fault_plan_type.model_validate_json(raw or b"{}")
            except ValidationError as exc:
                self.send_json(400, {"message": "invalid fault plan", "errors": json.loads(exc.json())})
                return
            core.set_faults(plan)
            self.send_json(200, plan.model_dump())
        elif method == "POST" and path == "/_sim/reset":
            core.reset()
            self.send_json(200, {"reset": True})
        else:
            self.send_json(404, {"message": "not found"})


__all__ = [
    "DOWNLOAD_TIMEOUT",
    "MAX_PROMPT_CHARS",
    "OUTPUTS_PREFIX",
    "STOP_JOIN_SECONDS",
    "WEBHOOK_TIMEOUT",
    "Answer",
    "Json",
    "JsonHandler",
    "QuietHTTPServer",
    "SimulatorCore",
    "SimulatorHandler",
    "authorization_token",
    "bearer_token",
    "download_input",
    "is_http_url",
    "iso_now",
    "pause",
    "post_with_retries",
    "status_message",
    "token_matches",
]
