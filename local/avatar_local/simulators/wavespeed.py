"""A local stand-in for WaveSpeedAI's Kling v1 AI Avatar API: same paths, envelopes, statuses and signed webhooks.

Start it, point a client's base URL at `WaveSpeedSimulator.base_url`, and it turns (image URL, audio URL) into a real
MP4 of the image with the audio track, as long as the audio. No account, no network beyond the input URLs.

API (paths and shapes as the provider documents them)
-----------------------------------------------------
Every ``/api/`` call needs ``Authorization: Bearer <key>``: a missing or empty key is HTTP 401
``{"code": 401, "message": "Unauthorized"}``; when ``api_key`` is configured any other key is 401 too, otherwise any
non-empty key is accepted.

``POST /api/v3/kwaivgi/kling-v1-ai-avatar-standard`` and ``POST /api/v3/kwaivgi/kling-v1-ai-avatar-pro``
    JSON ``{"image": url, "audio": url, "prompt"?: str}``; the webhook URL in the ``webhook`` query parameter or a
    ``webhook_url`` body field (both are accepted; the query parameter wins). Answers HTTP 200
    ``{"code": 200, "message": "success", "data": prediction}`` with the prediction ``created``. Input errors are
    HTTP 200 envelopes too: code 1400 when image or audio is missing, 1401 when a URL is not http(s) or the body is
    not a JSON object. With ``submissions_per_minute`` set, a submission beyond that many in the last
    (60 s / time_factor) is HTTP 429 ``{"code": 429, "message": "rate limit exceeded"}`` with ``Retry-After``.
``GET /api/v3/predictions/{id}/result`` and ``GET /api/v3/predictions/{id}``
    The envelope with the prediction; an unknown id is HTTP 404 with envelope code 404.
``GET /api/v3/webhook/secret``
    ``{"code": 200, "message": "success", "data": {"secret": webhook_secret}}``.
``GET /outputs/{id}.mp4`` (no auth: it stands in for the provider's CDN)
    The video, ``Content-Type: video/mp4`` with its ``Content-Length``.

A prediction is ``id`` (32 lowercase hex), ``model``, ``outputs`` (URLs; empty until completed), ``urls.get``,
``has_nsfw_contents`` (one false per output), ``status``, ``created_at`` (ISO-8601 UTC with nanoseconds), ``error``
("" unless failed), ``timings.inference`` (ms), plus ``executionTime`` (ms from creation) once it has ended and
``code`` when it failed. Times are simulated: real elapsed time x ``time_factor``.

Processing
----------
``created`` → ``processing`` → ``completed`` | ``failed``; a terminal status never changes. At most
``max_concurrent`` predictions are processing; the others wait in ``created``, first come first served (queued, not
refused, as the provider does beyond its concurrency limit). Processing downloads both inputs (a failure: code 1402
"media fetch failed"), renders the video with `render_avatar_video` into a directory the simulator owns (a failure,
e.g. an image that is not an image: code 1401 "invalid param" with ffmpeg's reason), and lasts at least
``processing_seconds / time_factor``.

Webhooks
--------
Only when a prediction completes or fails: a POST of the bare prediction (with ``input`` {image, audio, prompt} and
``executionTime``) to the webhook URL, with headers ``webhook-id`` (``msg_<hex>``, one per event: its retries and
an injected duplicate reuse it, so it works as a dedupe key), ``webhook-timestamp`` (unix seconds, fresh per
attempt) and ``webhook-signature: v3,<hex>``, hex being the lowercase HMAC-SHA256 of
``"{webhook-id}.{webhook-timestamp}." + body`` keyed with the secret minus ``whsec_`` as literal ASCII bytes.
Deliveries run on background threads and are retried on connection errors, 429 and 5xx with exponential backoff
(at least once, up to `WEBHOOK_ATTEMPTS` attempts).

Faults
------
A seeded `FaultPlan` (replaceable at run time): ``latency_seconds`` before answering any API request; 429/5xx
answers to submits (``submit_error_rate``) or result queries (``result_error_rate``); predictions that end
``failed`` with ``fail_code`` (``fail_rate``); webhooks lost, duplicated or delayed; output downloads that promise
the full ``Content-Length`` and close the connection after half the bytes (``truncated_download_rate``); and the
minimum ``processing_seconds``. Per-prediction decisions (fail, lose or duplicate its webhook) are drawn when it is
submitted, so the same seed and the same sequence of requests give the same outcomes.

Inspection (no auth)
--------------------
``GET /_sim/requests`` every API request received (``method``, ``path``, ``query``, ``json``, ``at``, ``status``);
``GET /_sim/predictions``; ``GET /_sim/webhooks`` every delivery attempt; ``GET`` / ``POST /_sim/faults`` read or
replace the fault plan; ``POST /_sim/reset`` forgets recorded requests and deliveries. The same from Python:
`requests`, `submissions`, `predictions`, `prediction`, `webhook_deliveries`, `peak_processing`, `set_faults`,
`reset`, `wait_until_idle`.

The server is quiet (no access log on stderr; debug logging on the ``avatar_local.wavespeed`` logger) and `stop`
closes the listener, open connections, processing workers and webhook senders promptly.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import logging
import math
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import httpx
from pydantic import ValidationError

from avatar_local.simulators.faults import FAILURE_MESSAGES, FaultPlan
from avatar_local.simulators.media import MediaError, render_avatar_video

logger = logging.getLogger("avatar_local.wavespeed")

DEFAULT_WEBHOOK_SECRET: Final = "whsec_local_simulator_secret"  # noqa: S105 - the local simulator's, not a real one
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a fixed prefix
MODELS: Final[dict[str, str]] = {
    "/api/v3/kwaivgi/kling-v1-ai-avatar-standard": "kwaivgi/kling-v1-ai-avatar-standard",
    "/api/v3/kwaivgi/kling-v1-ai-avatar-pro": "kwaivgi/kling-v1-ai-avatar-pro",
}
PREDICTIONS_PREFIX: Final = "/api/v3/predictions/"
SECRET_PATH: Final = "/api/v3/webhook/secret"  # noqa: S105 - a URL path
OUTPUTS_PREFIX: Final = "/outputs/"
TERMINAL: Final = frozenset({"completed", "failed"})

WEBHOOK_ATTEMPTS: Final = 5
WEBHOOK_BACKOFF_SECONDS: Final = 0.5  # simulated; doubles after each failed attempt
DOWNLOAD_TIMEOUT: Final = httpx.Timeout(15.0, connect=5.0)
WEBHOOK_TIMEOUT: Final = httpx.Timeout(10.0, connect=5.0)
STOP_JOIN_SECONDS: Final = 5.0
MAX_PROMPT_CHARS: Final = 2500

Json = dict[str, Any]


def _iso_now() -> str:
    """UTC now as ISO-8601 with nanoseconds and a Z, like the provider's ``created_at``."""
    ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}Z"


def sign_webhook(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    """The ``webhook-signature`` header value WaveSpeed sends: ``v3,<lowercase hex HMAC-SHA256>``."""
    key = secret.removeprefix(SECRET_PREFIX).encode("ascii")
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v3,{digest}"


class _Rejected(Exception):
    """Processing ended the prediction as failed with a documented code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Prediction:
    id: str
    model: str
    image: str
    audio: str
    prompt: str | None
    webhook_url: str | None
    created_at: str
    created_monotonic: float
    inject_failure: bool
    lose_webhook: bool
    duplicate_webhook: bool
    status: str = "created"
    outputs: list[str] = field(default_factory=list)
    error: str = ""
    code: int | None = None
    inference_ms: int = 0
    execution_ms: int | None = None
    video: Path | None = None

    def view(self, base_url: str, *, webhook: bool = False) -> Json:
        data: Json = {
            "id": self.id,
            "model": self.model,
            "outputs": list(self.outputs),
            "urls": {"get": f"{base_url}{PREDICTIONS_PREFIX}{self.id}/result"},
            "has_nsfw_contents": [False] * len(self.outputs),
            "status": self.status,
            "created_at": self.created_at,
            "error": self.error,
            "timings": {"inference": self.inference_ms},
        }
        if self.code is not None:
            data["code"] = self.code
        if self.execution_ms is not None:
            data["executionTime"] = self.execution_ms
        if webhook:
            data["input"] = {"image": self.image, "audio": self.audio, "prompt": self.prompt}
            data["executionTime"] = self.execution_ms or 0
        return data


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that stays quiet and can cut its open (keep-alive) connections on stop."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], simulator: WaveSpeedSimulator) -> None:
        self.simulator = simulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

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
        logger.debug("error while serving %s", client_address, exc_info=True)


class WaveSpeedSimulator:
    """The WaveSpeedAI avatar API on ``host:port`` (port 0: any free port). See the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
        faults: FaultPlan | None = None,
        time_factor: float = 1.0,
        max_concurrent: int = 3,
        submissions_per_minute: int | None = None,
    ) -> None:
        if time_factor <= 0:
            raise ValueError("time_factor must be positive")
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if submissions_per_minute is not None and submissions_per_minute < 1:
            raise ValueError("submissions_per_minute must be at least 1 (or None for no limit)")
        if not webhook_secret.removeprefix(SECRET_PREFIX):
            raise ValueError("webhook_secret is empty")
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.time_factor = time_factor
        self.max_concurrent = max_concurrent
        self.submissions_per_minute = submissions_per_minute
        self._faults = faults if faults is not None else FaultPlan()

        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._predictions: dict[str, _Prediction] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._processing = 0
        self._peak_processing = 0
        self._recent_submissions: collections.deque[float] = collections.deque()
        self._requests: list[Json] = []
        self._deliveries: list[Json] = []
        self._senders: set[threading.Thread] = set()

        self._server = _Server((host, port), self)
        bound_host, bound_port = self._server.server_address[:2]
        public_host = "127.0.0.1" if bound_host in ("0.0.0.0", "") else str(bound_host)  # noqa: S104 - a check
        self._base_url = f"http://{public_host}:{bound_port}"
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

    def start(self) -> WaveSpeedSimulator:
        """Serve in a daemon thread and start the processing workers. Returns self."""
        if self._stopped:
            raise RuntimeError("a stopped simulator cannot be restarted; create a new one")
        if self._server_thread is not None:
            return self
        self._workdir = Path(tempfile.mkdtemp(prefix="wavespeed-sim-"))
        for index in range(self.max_concurrent):
            worker = threading.Thread(target=self._work, name=f"wavespeed-sim-worker-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="wavespeed-sim-http", daemon=True
        )
        self._server_thread.start()
        logger.debug("WaveSpeed simulator listening on %s", self._base_url)
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections, end workers and webhook senders, delete rendered videos."""
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

    def __enter__(self) -> WaveSpeedSimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------ inspection

    def set_faults(self, plan: FaultPlan) -> None:
        """Replace the fault plan; it applies to requests and predictions from now on."""
        self._faults = plan

    def requests(self) -> list[Json]:
        """Every API request received so far (oldest first)."""
        with self._lock:
            return [dict(record) for record in self._requests]

    def submissions(self) -> list[Json]:
        """The submit requests among `requests`, whatever their answer."""
        return [r for r in self.requests() if r["method"] == "POST" and r["path"] in MODELS]

    def predictions(self) -> list[Json]:
        """Every prediction (oldest first), as the result endpoint shows it plus ``input`` and ``webhook_url``."""
        with self._lock:
            return [
                {**prediction.view(self._base_url, webhook=True), "webhook_url": prediction.webhook_url}
                for prediction in self._predictions.values()
            ]

    def prediction(self, prediction_id: str) -> Json | None:
        with self._lock:
            prediction = self._predictions.get(prediction_id)
            return None if prediction is None else prediction.view(self._base_url)

    def webhook_deliveries(self) -> list[Json]:
        """Every webhook delivery attempt (and every webhook deliberately lost), oldest first."""
        with self._lock:
            return [dict(record) for record in self._deliveries]

    @property
    def peak_processing(self) -> int:
        """The most predictions that were ever processing at the same time."""
        with self._lock:
            return self._peak_processing

    def reset(self) -> None:
        """Forget recorded requests and webhook deliveries (predictions stay)."""
        with self._lock:
            self._requests.clear()
            self._deliveries.clear()

    def wait_until_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no prediction is queued or processing and no webhook is being sent. False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                busy = self._processing > 0 or bool(self._queue) or any(t.is_alive() for t in self._senders)
            if not busy:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    # ------------------------------------------------------------------------------------------------ API

    def _scaled(self, simulated_seconds: float) -> float:
        return max(0.0, simulated_seconds) / self.time_factor

    def _pause(self, simulated_seconds: float) -> bool:
        """Sleep for a simulated duration; False when the simulator is stopping."""
        seconds = self._scaled(simulated_seconds)
        if seconds > 0:
            return not self._stopping.wait(seconds)
        return not self._stopping.is_set()

    def _authorised(self, header: str | None) -> bool:
        scheme, _, token = (header or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        return self.api_key is None or hmac.compare_digest(token.encode(), self.api_key.encode())

    def _submit(self, path: str, query: dict[str, str], body: Any) -> tuple[int, Json, dict[str, str]]:
        plan = self._faults
        if self.submissions_per_minute is not None:
            window = 60.0 / self.time_factor
            now = time.monotonic()
            with self._lock:
                while self._recent_submissions and now - self._recent_submissions[0] >= window:
                    self._recent_submissions.popleft()
                if len(self._recent_submissions) >= self.submissions_per_minute:
                    wait = window - (now - self._recent_submissions[0])
                    headers = {"Retry-After": str(max(1, math.ceil(wait)))}
                    return 429, {"code": 429, "message": "rate limit exceeded"}, headers
        if plan.should(plan.submit_error_rate):
            status = plan.submit_error_status
            headers = {"Retry-After": "1"} if status in (429, 503) else {}
            return status, {"code": status, "message": _status_message(status)}, headers

        if not isinstance(body, dict):
            return 200, _envelope_error(1401, "invalid param: the body must be a JSON object"), {}
        for name in ("image", "audio"):
            if body.get(name) in (None, ""):
                return 200, _envelope_error(1400, f"missing param: {name}"), {}
        for name in ("image", "audio"):
            if not _is_http_url(body[name]):
                return 200, _envelope_error(1401, f"invalid param: {name} must be an http(s) URL"), {}
        prompt = body.get("prompt")
        if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
            return (
                200,
                _envelope_error(1401, f"invalid param: prompt must be a string of at most {MAX_PROMPT_CHARS}"),
                {},
            )
        webhook = query.get("webhook") or body.get("webhook_url") or None
        if webhook is not None and not _is_http_url(webhook):
            return 200, _envelope_error(1401, "invalid param: webhook must be an http(s) URL"), {}

        with self._work_ready:
            if self.submissions_per_minute is not None:
                self._recent_submissions.append(time.monotonic())
            prediction = _Prediction(
                id=uuid.uuid4().hex,
                model=MODELS[path],
                image=body["image"],
                audio=body["audio"],
                prompt=prompt,
                webhook_url=webhook,
                created_at=_iso_now(),
                created_monotonic=time.monotonic(),
                # Drawn now, in submission order, so a seed gives the same outcomes run after run.
                inject_failure=plan.should(plan.fail_rate),
                lose_webhook=plan.should(plan.lost_webhook_rate),
                duplicate_webhook=plan.should(plan.duplicate_webhook_rate),
            )
            self._predictions[prediction.id] = prediction
            self._queue.append(prediction.id)
            data = prediction.view(self._base_url)
            self._work_ready.notify()
        return 200, {"code": 200, "message": "success", "data": data}, {}

    def _result(self, prediction_id: str) -> tuple[int, Json, dict[str, str]]:
        plan = self._faults
        if plan.should(plan.result_error_rate):
            status = plan.result_error_status
            headers = {"Retry-After": "1"} if status in (429, 503) else {}
            return status, {"code": status, "message": _status_message(status)}, headers
        data = self.prediction(prediction_id)
        if data is None:
            return 404, {"code": 404, "message": "prediction not found", "data": None}, {}
        return 200, {"code": 200, "message": "success", "data": data}, {}

    def _record(self, method: str, path: str, query: dict[str, str], body: Any) -> Json:
        record: Json = {"method": method, "path": path, "query": query, "json": body, "at": _iso_now(), "status": None}
        with self._lock:
            self._requests.append(record)
        return record

    # ------------------------------------------------------------------------------------------------ processing

    def _work(self) -> None:
        while True:
            with self._work_ready:
                while not self._queue and not self._stopping.is_set():
                    self._work_ready.wait()
                if self._stopping.is_set():
                    return
                prediction = self._predictions[self._queue.popleft()]
                prediction.status = "processing"
                self._processing += 1
                self._peak_processing = max(self._peak_processing, self._processing)
            try:
                self._process(prediction)
            finally:
                with self._lock:
                    self._processing -= 1

    def _process(self, prediction: _Prediction) -> None:
        started = time.monotonic()
        plan = self._faults
        try:
            image = self._download(prediction.image, "image")
            audio = self._download(prediction.audio, "audio")
            if self._stopping.is_set():
                return
            if prediction.inject_failure:
                code = plan.fail_code
                outcome = _Rejected(code, f"{FAILURE_MESSAGES[code]} (simulated failure)")
            else:
                assert self._workdir is not None
                video = self._workdir / f"{prediction.id}.mp4"
                try:
                    render_avatar_video(image, audio, video)
                except MediaError as exc:
                    raise _Rejected(1401, f"invalid param: {exc}") from exc
                prediction.video = video
                outcome = None
            if not self._pause(plan.processing_seconds - (time.monotonic() - started) * self.time_factor):
                return
            if outcome is not None:
                raise outcome
            self._finish(prediction, started, "completed")
        except _Rejected as rejected:
            self._finish(prediction, started, "failed", code=rejected.code, error=rejected.message)
        except Exception as exc:  # a simulator bug must still end the prediction, as the provider's 5000 would
            logger.exception("WaveSpeed simulator failed on prediction %s", prediction.id)
            self._finish(prediction, started, "failed", code=5000, error=f"internal server error: {exc}")

    def _download(self, url: str, what: str) -> bytes:
        try:
            with httpx.Client(timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as client:
                response = client.get(url)
        except httpx.HTTPError as exc:
            raise _Rejected(1402, f"media fetch failed: {what}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise _Rejected(1402, f"media fetch failed: {what}: HTTP {response.status_code}")
        if not response.content:
            raise _Rejected(1402, f"media fetch failed: {what}: empty body")
        return response.content

    def _finish(
        self, prediction: _Prediction, started: float, status: str, *, code: int | None = None, error: str = ""
    ) -> None:
        with self._lock:
            if prediction.status in TERMINAL or self._stopping.is_set():
                return
            now = time.monotonic()
            prediction.status = status
            prediction.inference_ms = round((now - started) * self.time_factor * 1000)
            prediction.execution_ms = round((now - prediction.created_monotonic) * self.time_factor * 1000)
            if status == "completed":
                prediction.outputs = [f"{self._base_url}{OUTPUTS_PREFIX}{prediction.id}.mp4"]
            else:
                prediction.code, prediction.error = code, error
            body = json.dumps(prediction.view(self._base_url, webhook=True), separators=(",", ":")).encode()
        logger.debug("prediction %s %s", prediction.id, status)
        self._dispatch_webhook(prediction, body)

    # ------------------------------------------------------------------------------------------------ webhooks

    def _dispatch_webhook(self, prediction: _Prediction, body: bytes) -> None:
        url = prediction.webhook_url
        if url is None:
            return
        webhook_id = f"msg_{uuid.uuid4().hex}"
        if prediction.lose_webhook:
            with self._lock:
                self._deliveries.append(
                    {
                        "webhook_id": webhook_id,
                        "prediction_id": prediction.id,
                        "url": url,
                        "lost": True,
                        "at": _iso_now(),
                    }
                )
            return
        copies = 2 if prediction.duplicate_webhook else 1
        delay = self._faults.webhook_delay_seconds
        thread = threading.Thread(
            target=self._send_webhook,
            args=(prediction.id, url, webhook_id, body, copies, delay),
            name=f"wavespeed-sim-webhook-{prediction.id[:8]}",
            daemon=True,
        )
        with self._lock:
            self._senders = {t for t in self._senders if t.is_alive()}
            self._senders.add(thread)
        thread.start()

    def _send_webhook(
        self, prediction_id: str, url: str, webhook_id: str, body: bytes, copies: int, delay: float
    ) -> None:
        if not self._pause(delay):
            return
        with httpx.Client(timeout=WEBHOOK_TIMEOUT) as client:
            for copy in range(copies):
                self._deliver(client, prediction_id, url, webhook_id, body, duplicate=copy > 0)

    def _deliver(
        self, client: httpx.Client, prediction_id: str, url: str, webhook_id: str, body: bytes, *, duplicate: bool
    ) -> None:
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            if self._stopping.is_set():
                return
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "webhook-id": webhook_id,
                "webhook-timestamp": timestamp,
                "webhook-signature": sign_webhook(self.webhook_secret, webhook_id, timestamp, body),
            }
            record: Json = {
                "webhook_id": webhook_id,
                "prediction_id": prediction_id,
                "url": url,
                "attempt": attempt,
                "duplicate": duplicate,
                "at": _iso_now(),
                "status": None,
                "error": None,
            }
            try:
                response = client.post(url, content=body, headers=headers)
                record["status"] = response.status_code
            except httpx.HTTPError as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._deliveries.append(record)
            status = record["status"]
            if status is not None and status != 429 and status < 500:
                return  # delivered (or refused for good: a 4xx is the receiver's final word)
            if attempt < WEBHOOK_ATTEMPTS and not self._pause(WEBHOOK_BACKOFF_SECONDS * 2 ** (attempt - 1)):
                return
        logger.debug("webhook %s for %s gave up after %d attempts", webhook_id, prediction_id, WEBHOOK_ATTEMPTS)

    # ------------------------------------------------------------------------------------------------ outputs

    def _output(self, prediction_id: str) -> Path | None:
        with self._lock:
            prediction = self._predictions.get(prediction_id)
            if prediction is None or prediction.status != "completed":
                return None
            video = prediction.video
        return video if video is not None and video.is_file() else None


def _envelope_error(code: int, message: str) -> Json:
    return {"code": code, "message": message, "data": None}


def _status_message(status: int) -> str:
    return {
        429: "rate limit exceeded",
        500: "internal server error",
        502: "bad gateway",
        503: "service unavailable",
        504: "gateway timeout",
    }.get(status, "server error")


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value.strip())
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "WaveSpeedSimulator/1.0"
    server: _Server

    @property
    def sim(self) -> WaveSpeedSimulator:
        return self.server.simulator

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    # ---------------------------------------------------------------- plumbing

    def _read_body(self) -> bytes:
        """The whole request body (Content-Length or chunked), so a keep-alive connection stays in step."""
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

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        raw = self._read_body()
        if path.startswith("/_sim/"):
            self._control(method, path, raw)
        elif path.startswith(OUTPUTS_PREFIX) and method in ("GET", "HEAD"):
            self._serve_output(path.removeprefix(OUTPUTS_PREFIX).removesuffix(".mp4"))
        elif path.startswith("/api/"):
            self._api(method, path, query, raw)
        else:
            self._send_json(404, {"code": 404, "message": "not found"})

    # ---------------------------------------------------------------- API

    def _api(self, method: str, path: str, query: dict[str, str], raw: bytes) -> None:
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        record = self.sim._record(method, path, query, body)
        status, payload, headers = self._answer(method, path, query, raw, body)
        record["status"] = status
        self._send_json(status, payload, headers)

    def _answer(
        self, method: str, path: str, query: dict[str, str], raw: bytes, body: Any
    ) -> tuple[int, Json, dict[str, str]]:
        sim = self.sim
        sim._pause(sim.faults.latency_seconds)
        if not sim._authorised(self.headers.get("Authorization")):
            return 401, {"code": 401, "message": "Unauthorized"}, {"WWW-Authenticate": "Bearer"}
        if path in MODELS:
            if method != "POST":
                return 405, {"code": 405, "message": "method not allowed"}, {"Allow": "POST"}
            # No body reads as an empty object (so: missing param); a body that is not JSON stays raw (invalid).
            submitted: Any = {} if not raw else raw if body is None else body
            return sim._submit(path, query, submitted)
        if path == SECRET_PATH and method == "GET":
            return 200, {"code": 200, "message": "success", "data": {"secret": sim.webhook_secret}}, {}
        if path.startswith(PREDICTIONS_PREFIX) and method == "GET":
            rest = path.removeprefix(PREDICTIONS_PREFIX).removesuffix("/result")
            if rest and "/" not in rest:
                return sim._result(rest)
        return 404, {"code": 404, "message": "not found"}, {}

    # ---------------------------------------------------------------- outputs

    def _serve_output(self, prediction_id: str) -> None:
        video = self.sim._output(prediction_id)
        if video is None:
            self._send_json(404, {"code": 404, "message": "not found"})
            return
        data = video.read_bytes()
        plan = self.sim.faults
        truncate = self.command == "GET" and plan.should(plan.truncated_download_rate)
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(data)))
        if truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        if not truncate:
            self.wfile.write(data)
            return
        # Promise every byte, send half, then hang up: a CDN connection dropped mid-transfer.
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # ---------------------------------------------------------------- inspection

    def _control(self, method: str, path: str, raw: bytes) -> None:
        sim = self.sim
        if method == "GET" and path == "/_sim/requests":
            self._send_json(200, sim.requests())
        elif method == "GET" and path == "/_sim/predictions":
            self._send_json(200, sim.predictions())
        elif method == "GET" and path == "/_sim/webhooks":
            self._send_json(200, sim.webhook_deliveries())
        elif method == "GET" and path == "/_sim/faults":
            self._send_json(200, sim.faults.model_dump())
        elif method == "POST" and path == "/_sim/faults":
            try:
                plan = FaultPlan.model_validate_json(raw or b"{}")
            except ValidationError as exc:
                self._send_json(400, {"message": "invalid fault plan", "errors": json.loads(exc.json())})
                return
            sim.set_faults(plan)
            self._send_json(200, plan.model_dump())
        elif method == "POST" and path == "/_sim/reset":
            sim.reset()
            self._send_json(200, {"reset": True})
        else:
            self._send_json(404, {"message": "not found"})


__all__ = [
    "DEFAULT_WEBHOOK_SECRET",
    "MODELS",
    "WaveSpeedSimulator",
    "sign_webhook",
]
