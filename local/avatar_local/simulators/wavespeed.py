"""A local stand-in for WaveSpeedAI's talking-avatar API: same paths, envelopes, statuses and signed webhooks.

Start it, point a client's base URL at `WaveSpeedSimulator.base_url`, and it turns (image URL, audio URL) into a real
MP4 of the image with the audio track, as long as the audio. No account, no network beyond the input URLs.

API (paths and shapes as the provider documents them)
-----------------------------------------------------
Every ``/api/`` call needs ``Authorization: Bearer <key>``: a missing or empty key is HTTP 401
``{"code": 401, "message": "Unauthorized"}``; when ``api_key`` is configured any other key is 401 too, otherwise any
non-empty key is accepted.

``POST /api/v3/<model id>`` for each model in `MODELS` (``*`` = required; ``image`` and ``audio`` are http(s) URLs):
    - ``kwaivgi/kling-v1-ai-avatar-standard``, ``kwaivgi/kling-v1-ai-avatar-pro``,
      ``kwaivgi/kling-v2-ai-avatar-standard``, ``kwaivgi/kling-v2-ai-avatar-pro``: ``image``*, ``audio``*,
      ``prompt``;
    - ``bytedance/avatar-omni-human-1.5``: ``image``*, ``audio``* (no prompt);
    - ``wavespeed-ai/infinitetalk``: ``image``*, ``audio``*, ``prompt``, ``mask_image`` (URL), ``resolution``
      ``"480p"`` (default) | ``"720p"``, ``seed`` integer -1..2147483647 (default -1);
    - ``wavespeed-ai/infinitetalk-fast``: the same, but ``resolution`` ``"480p"`` only (the only value known to work:
      the model has no page of its own);
    - ``wavespeed-ai/wan-2.2/speech-to-video``: ``image``*, ``audio``*, ``prompt``, ``resolution`` ``"480p"``
      (default) | ``"720p"``, ``seed`` integer -1..2147483647 (default -1).

    A JSON body; the webhook URL in the ``webhook`` query parameter or a ``webhook_url`` body field (both are
    accepted; the query parameter wins). Answers HTTP 200 ``{"code": 200, "message": "success", "data":
    prediction}`` with the prediction ``created``. Input errors are HTTP 200 envelopes too, naming the field (the
    first problem found, see `input_error`): code 1400 ``"missing param: <field>"`` when image or audio is missing;
    1401 ``"invalid param: ..."`` when the body is not a JSON object, a URL is not http(s), a value has the wrong
    type, is not one of its choices or is outside its range, a prompt is longer than ``MAX_PROMPT_CHARS``, or the
    body has a field the model does not document (e.g. a ``prompt`` to OmniHuman, a ``resolution`` to Kling). That
    last refusal is stricter than the real API may be (which may ignore such a field): it is deliberate, so the
    pipeline never sends a field a model does not document. A field set to null counts as left out. With
    ``submissions_per_minute`` set, a submission beyond that many in the last (60 s / time_factor) is HTTP 429
    ``{"code": 429, "message": "rate limit exceeded"}`` with ``Retry-After``.
``GET /api/v3/predictions/{id}/result`` and ``GET /api/v3/predictions/{id}``
    The envelope with the prediction; an unknown id is HTTP 404 with envelope code 404.
``GET /api/v3/webhook/secret``
    ``{"code": 200, "message": "success", "data": {"secret": webhook_secret}}``.
``GET /outputs/{id}.mp4`` (no auth: it stands in for the provider's CDN)
    The video, ``Content-Type: video/mp4`` with its ``Content-Length``.

A prediction is ``id`` (32 lowercase hex), ``model`` (the model id), ``outputs`` (URLs; empty until completed),
``urls.get``, ``has_nsfw_contents`` (one false per output), ``status``, ``created_at`` (ISO-8601 UTC with
nanoseconds), ``error`` ("" unless failed), ``timings.inference`` (ms), plus ``executionTime`` (ms from creation)
once it has ended and ``code`` when it failed. Times are simulated: real elapsed time x ``time_factor``.

Processing
----------
``created`` → ``processing`` → ``completed`` | ``failed``; a terminal status never changes. At most
``max_concurrent`` predictions are processing; the others wait in ``created``, first come first served (queued, not
refused, as the provider does beyond its concurrency limit). Processing downloads the inputs (image, audio and any
``mask_image``; a failure: code 1402 "media fetch failed"), renders the video with `render_avatar_video` into a
directory the simulator owns (a failure, e.g. an image that is not an image: code 1401 "invalid param" with ffmpeg's
reason), and lasts at least ``processing_seconds / time_factor``. Every model renders the same way: the model's
fields are recorded but change nothing in the video (720p and 480p give the same render, the mask is not applied,
the seed is not used).

Webhooks
--------
Only when a prediction completes or fails: a POST of the bare prediction (with ``input`` {image, audio, prompt and
the model's fields as submitted} and ``executionTime``) to the webhook URL, with headers ``webhook-id``
(``msg_<hex>``, one per event: its retries and an injected duplicate reuse it, so it works as a dedupe key),
``webhook-timestamp`` (unix seconds, fresh per attempt) and ``webhook-signature: v3,<hex>``, hex being the
lowercase HMAC-SHA256 of ``"{webhook-id}.{webhook-timestamp}." + body`` keyed with the secret minus ``whsec_`` as
literal ASCII bytes.
Deliveries run on background threads and are retried on connection errors, 429 and 5xx with exponential backoff
(at least once, up to `WEBHOOK_ATTEMPTS` attempts).

Faults
------
A seeded `FaultPlan` (replaceable at run time): ``latency_seconds`` before answering any API request; 429/5xx
answers to submits (``submit_error_rate``) or result queries (``result_error_rate``); submits carried out but
never answered (``lost_answer_rate``: the connection closes); predictions that end ``failed`` with ``fail_code``
(``fail_rate``); webhooks lost, duplicated or delayed (``webhook_delay_seconds`` plus a random share of
``webhook_jitter_seconds`` before each copy); output downloads that promise
the full ``Content-Length`` and close the connection after half the bytes (``truncated_download_rate``); and the
minimum ``processing_seconds``. Per-prediction decisions (fail, lose or duplicate its webhook) are drawn when it is
submitted, so the same seed and the same sequence of requests give the same outcomes.

Inspection (no auth)
--------------------
``GET /_sim/requests`` every API request received (``method``, ``path``, ``query``, ``json``, ``at``, ``status``);
``GET /_sim/predictions`` every prediction with its ``input``, ``model_fields`` (the model's own fields as submitted,
e.g. ``{"resolution": "720p", "seed": 7}``; ``{}`` when none) and ``webhook_url``; ``GET /_sim/webhooks`` every
delivery attempt; ``GET`` / ``POST /_sim/faults`` read or replace the fault plan; ``POST /_sim/reset`` forgets
recorded requests and deliveries. The same from Python: `requests`, `submissions` (the submit requests, bodies as
sent), `predictions`, `prediction`, `model_fields` (one prediction's), `webhook_deliveries`, `peak_processing`,
`set_faults`, `reset`, `wait_until_idle`.

The server is quiet (no access log on stderr; debug logging on the ``avatar_local.wavespeed`` logger) and `stop`
closes the listener, open connections, processing workers and webhook senders promptly. The generic parts (server,
lifecycle, workers, input downloads, retried POSTs) are `avatar_local.simulators.common`'s.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

import httpx

from avatar_local.simulators.common import (
    MAX_PROMPT_CHARS,
    OUTPUTS_PREFIX,
    WEBHOOK_TIMEOUT,
    Answer,
    Json,
    SimulatorCore,
    SimulatorHandler,
    bearer_token,
    download_input,
    is_http_url,
    iso_now,
    status_message,
    token_matches,
)
from avatar_local.simulators.faults import FAILURE_MESSAGES, AnswerLost, FaultPlan
from avatar_local.simulators.media import MediaError, render_avatar_video

logger = logging.getLogger("avatar_local.wavespeed")

DEFAULT_WEBHOOK_SECRET: Final = "whsec_local_simulator_secret"  # noqa: S105 - the local simulator's, not a real one
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a fixed prefix
MODEL_PREFIX: Final = "/api/v3/"
PREDICTIONS_PREFIX: Final = "/api/v3/predictions/"
SECRET_PATH: Final = "/api/v3/webhook/secret"  # noqa: S105 - a URL path
TERMINAL: Final = frozenset({"completed", "failed"})

WEBHOOK_ATTEMPTS: Final = 5
WEBHOOK_BACKOFF_SECONDS: Final = 0.5  # simulated; doubles after each failed attempt


# ------------------------------------------------------------------------------------------------ models

SEED_RANGE: Final = (-1, 2_147_483_647)
MEDIA_FIELDS: Final = ("image", "audio")
"""The inputs every model requires: http(s) URLs of the portrait and the speech."""
TRANSPORT_FIELDS: Final = frozenset({"webhook_url"})
"""Body fields that are not the model's: the webhook URL, which may come in the body instead of the query."""


@dataclass(frozen=True)
class ModelSpec:
    """What the simulator knows of a model's request body: its documented fields, each of one kind."""

    model_id: str
    urls: tuple[str, ...] = ()
    """Optional fields holding an http(s) URL (besides the required ``image`` and ``audio``)."""
    strings: tuple[str, ...] = ("prompt",)
    """Optional free-text fields (a prompt: at most ``MAX_PROMPT_CHARS``)."""
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Optional fields taking one of a few strings."""
    ranges: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """Optional integer fields and their inclusive bounds."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """What the model uses for an optional field left out, as documented."""

    @property
    def path(self) -> str:
        return f"{MODEL_PREFIX}{self.model_id}"

    @property
    def fields(self) -> frozenset[str]:
        """Every field the model documents."""
        return frozenset((*MEDIA_FIELDS, *self.urls, *self.strings, *self.choices, *self.ranges))


def _kling(model_id: str) -> ModelSpec:
    # image, audio and an optional prompt: nothing else (no resolution, no seed, no duration).
    return ModelSpec(model_id)


MODELS: Final[dict[str, ModelSpec]] = {
    spec.model_id: spec
    for spec in (
        _kling("kwaivgi/kling-v1-ai-avatar-standard"),
        _kling("kwaivgi/kling-v1-ai-avatar-pro"),
        _kling("kwaivgi/kling-v2-ai-avatar-standard"),
        _kling("kwaivgi/kling-v2-ai-avatar-pro"),
        # The image and the audio only: no prompt.
        ModelSpec("bytedance/avatar-omni-human-1.5", strings=()),
        ModelSpec(
            "wavespeed-ai/infinitetalk",
            urls=("mask_image",),
            choices={"resolution": ("480p", "720p")},
            ranges={"seed": SEED_RANGE},
            defaults={"resolution": "480p", "seed": -1},
        ),
        # No page of its own: the fields third-party callers send; 480p is the only resolution known to work.
        ModelSpec(
            "wavespeed-ai/infinitetalk-fast",
            urls=("mask_image",),
            choices={"resolution": ("480p",)},
            ranges={"seed": SEED_RANGE},
            defaults={"resolution": "480p", "seed": -1},
        ),
        ModelSpec(
            "wavespeed-ai/wan-2.2/speech-to-video",
            choices={"resolution": ("480p", "720p")},
            ranges={"seed": SEED_RANGE},
            defaults={"resolution": "480p", "seed": -1},
        ),
    )
}
"""The models the simulator serves, by model id; each is ``POST /api/v3/<model id>``."""


def model_at(path: str) -> ModelSpec | None:
    """The model whose submit path `path` is, or None."""
    return MODELS.get(path.removeprefix(MODEL_PREFIX)) if path.startswith(MODEL_PREFIX) else None


def input_error(spec: ModelSpec, body: Any) -> tuple[int, str] | None:
    """WaveSpeed's refusal of `body` for `spec`'s model — (1400, "missing param: <field>") or (1401, "invalid param:
    <field> ...") for the first problem found — or None when the body is one the model takes. A field set to null
    counts as left out; a field the model does not document is refused, whatever its value."""
    if not isinstance(body, dict):
        return 1401, "invalid param: the body must be a JSON object"
    for name in MEDIA_FIELDS:
        if body.get(name) in (None, ""):
            return 1400, f"missing param: {name}"
    documented = spec.fields | TRANSPORT_FIELDS
    for name in body:
        if name not in documented:
            return 1401, f"invalid param: {name} is not a parameter of {spec.model_id}"
    for name in (*MEDIA_FIELDS, *spec.urls):
        value = body.get(name)
        if value is not None and not is_http_url(value):
            return 1401, f"invalid param: {name} must be an http(s) URL"
    for name in spec.strings:
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_PROMPT_CHARS):
            return 1401, f"invalid param: {name} must be a string of at most {MAX_PROMPT_CHARS}"
    for name, allowed in spec.choices.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or value not in allowed):
            return 1401, f"invalid param: {name} must be one of {', '.join(map(repr, allowed))}"
    for name, (low, high) in spec.ranges.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            return 1401, f"invalid param: {name} must be an integer"
        if not low <= value <= high:
            return 1401, f"invalid param: {name} must be from {low} to {high}"
    return None


def submitted_fields(spec: ModelSpec, body: Json) -> Json:
    """The model's own fields in an accepted `body` beyond the image, audio and prompt (resolution, seed,
    mask_image...), as sent: what a test asserts the pipeline chose."""
    return {
        name: value
        for name, value in body.items()
        if name in spec.fields and name not in (*MEDIA_FIELDS, "prompt") and value is not None
    }


# ------------------------------------------------------------------------------------------------ signing


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
    fields: Json = field(default_factory=dict)
    """The model's own fields as submitted (`submitted_fields`): resolution, seed, mask_image..."""

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
            data["input"] = {"image": self.image, "audio": self.audio, "prompt": self.prompt, **self.fields}
            data["executionTime"] = self.execution_ms or 0
        return data


class WaveSpeedSimulator(SimulatorCore[_Prediction]):
    """The WaveSpeedAI avatar API on ``host:port`` (port 0: any free port). See the module docstring."""

    display_name = "WaveSpeed"
    thread_prefix = "wavespeed-sim"
    log = logger

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
        self.check_settings(time_factor, max_concurrent)
        if submissions_per_minute is not None and submissions_per_minute < 1:
            raise ValueError("submissions_per_minute must be at least 1 (or None for no limit)")
        if not webhook_secret.removeprefix(SECRET_PREFIX):
            raise ValueError("webhook_secret is empty")
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.submissions_per_minute = submissions_per_minute
        self._predictions: dict[str, _Prediction] = {}
        self._recent_submissions: collections.deque[float] = collections.deque()
        super().__init__(
            host, port, _Handler, faults if faults is not None else FaultPlan(), time_factor, max_concurrent
        )

    # ------------------------------------------------------------------------------------------------ inspection

    def submissions(self) -> list[Json]:
        """The submit requests among `requests`, whatever their answer."""
        return [r for r in self.requests() if r["method"] == "POST" and model_at(r["path"]) is not None]

    def predictions(self) -> list[Json]:
        """Every prediction (oldest first), as the result endpoint shows it plus ``input`` (image, audio, prompt and
        the model's fields), ``model_fields`` (the model's own fields as submitted: resolution, seed, mask_image...;
        ``{}`` when none was sent) and ``webhook_url``."""
        with self._lock:
            return [
                {
                    **prediction.view(self._base_url, webhook=True),
                    "model_fields": dict(prediction.fields),
                    "webhook_url": prediction.webhook_url,
                }
                for prediction in self._predictions.values()
            ]

    def model_fields(self, prediction_id: str) -> Json | None:
        """The model's own fields a prediction was submitted with (e.g. ``{"resolution": "720p", "seed": 7}``; ``{}``
        when none was sent), or None for an unknown id."""
        with self._lock:
            prediction = self._predictions.get(prediction_id)
            return None if prediction is None else dict(prediction.fields)

    def prediction(self, prediction_id: str) -> Json | None:
        with self._lock:
            prediction = self._predictions.get(prediction_id)
            return None if prediction is None else prediction.view(self._base_url)

    def add_completed(self, video: Path, model: str = "kwaivgi/kling-v1-ai-avatar-standard") -> Json:
        """A prediction that completed with `video` (a file the caller owns) as its output, without a submission,
        webhook or render: how a benchmark has the simulator serve a video far larger than it would render."""
        prediction_id = uuid.uuid4().hex
        with self._lock:
            prediction = _Prediction(
                id=prediction_id,
                model=model,
                image="",
                audio="",
                prompt=None,
                webhook_url=None,
                created_at=iso_now(),
                created_monotonic=time.monotonic(),
                inject_failure=False,
                lose_webhook=False,
                duplicate_webhook=False,
                status="completed",
                outputs=[f"{self._base_url}{OUTPUTS_PREFIX}{prediction_id}.mp4"],
                video=video,
            )
            self._predictions[prediction.id] = prediction
            return prediction.view(self._base_url)

    def webhook_deliveries(self) -> list[Json]:
        """Every webhook delivery attempt (and every webhook deliberately lost), oldest first."""
        with self._lock:
            return [dict(record) for record in self._deliveries]

    # ------------------------------------------------------------------------------------------------ API

    def _authorised(self, header: str | None) -> bool:
        token = bearer_token(header)
        return token is not None and token_matches(token, self.api_key)

    def _submit(self, spec: ModelSpec, query: dict[str, str], body: Any) -> tuple[int, Json, dict[str, str]]:
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
            return status, {"code": status, "message": status_message(status)}, headers

        refusal = input_error(spec, body)
        if refusal is not None:
            return 200, _envelope_error(*refusal), {}
        webhook = query.get("webhook") or body.get("webhook_url") or None
        if webhook is not None and not is_http_url(webhook):
            return 200, _envelope_error(1401, "invalid param: webhook must be an http(s) URL"), {}

        with self._work_ready:
            if self.submissions_per_minute is not None:
                self._recent_submissions.append(time.monotonic())
            prediction = _Prediction(
                id=uuid.uuid4().hex,
                model=spec.model_id,
                image=body["image"],
                audio=body["audio"],
                prompt=body.get("prompt"),
                fields=submitted_fields(spec, body),
                webhook_url=webhook,
                created_at=iso_now(),
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
        if plan.should(plan.lost_answer_rate):
            raise AnswerLost(prediction.id)
        return 200, {"code": 200, "message": "success", "data": data}, {}

    def _result(self, prediction_id: str) -> tuple[int, Json, dict[str, str]]:
        plan = self._faults
        if plan.should(plan.result_error_rate):
            status = plan.result_error_status
            headers = {"Retry-After": "1"} if status in (429, 503) else {}
            return status, {"code": status, "message": status_message(status)}, headers
        data = self.prediction(prediction_id)
        if data is None:
            return 404, {"code": 404, "message": "prediction not found", "data": None}, {}
        return 200, {"code": 200, "message": "success", "data": data}, {}

    # ------------------------------------------------------------------------------------------------ processing

    def _begin_locked(self, job_id: str) -> _Prediction:
        prediction = self._predictions[job_id]
        prediction.status = "processing"
        return prediction

    def _process(self, prediction: _Prediction) -> None:
        started = time.monotonic()
        plan = self._faults
        try:
            image = download_input(prediction.image, "image", _fetch_failed)
            audio = download_input(prediction.audio, "audio", _fetch_failed)
            mask = prediction.fields.get("mask_image")
            if isinstance(mask, str):  # fetched as the provider would, though the render does not use it
                download_input(mask, "mask_image", _fetch_failed)
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
                        "at": iso_now(),
                    }
                )
            return
        copies = 2 if prediction.duplicate_webhook else 1
        delays = [self._faults.delivery_delay() for _ in range(copies)]
        thread = threading.Thread(
            target=self._send_webhook,
            args=(prediction.id, url, webhook_id, body, delays),
            name=f"wavespeed-sim-webhook-{prediction.id[:8]}",
            daemon=True,
        )
        with self._lock:
            self._senders = {t for t in self._senders if t.is_alive()}
            self._senders.add(thread)
        thread.start()

    def _send_webhook(self, prediction_id: str, url: str, webhook_id: str, body: bytes, delays: list[float]) -> None:
        """One delivery per delay (a duplicate is a second one, with the same webhook-id), each after its wait."""
        with httpx.Client(timeout=WEBHOOK_TIMEOUT) as client:
            for copy, delay in enumerate(delays):
                if not self._pause(delay):
                    return
                self._deliver(client, prediction_id, url, webhook_id, body, duplicate=copy > 0)

    def _deliver(
        self, client: httpx.Client, prediction_id: str, url: str, webhook_id: str, body: bytes, *, duplicate: bool
    ) -> None:
        sent_at = ""

        def headers() -> dict[str, str]:
            nonlocal sent_at
            timestamp = str(int(time.time()))
            sent_at = iso_now()
            return {
                "Content-Type": "application/json",
                "webhook-id": webhook_id,
                "webhook-timestamp": timestamp,
                "webhook-signature": sign_webhook(self.webhook_secret, webhook_id, timestamp, body),
            }

        delivered = self._post_recorded(
            client,
            url,
            body,
            headers=headers,
            about=lambda: {
                "webhook_id": webhook_id,
                "prediction_id": prediction_id,
                "duplicate": duplicate,
                "at": sent_at,
            },
            attempts=WEBHOOK_ATTEMPTS,
            first_backoff_seconds=WEBHOOK_BACKOFF_SECONDS,
        )
        if not delivered and not self._stopping.is_set():
            logger.debug("webhook %s for %s gave up after %d attempts", webhook_id, prediction_id, WEBHOOK_ATTEMPTS)

    # ------------------------------------------------------------------------------------------------ outputs

    def inspections(self) -> dict[str, Callable[[], Any]]:
        return {
            **super().inspections(),
            "/_sim/predictions": self.predictions,
            "/_sim/webhooks": self.webhook_deliveries,
        }

    def _output(self, prediction_id: str) -> Path | None:
        with self._lock:
            prediction = self._predictions.get(prediction_id)
            if prediction is None or prediction.status != "completed":
                return None
            video = prediction.video
        return video if video is not None and video.is_file() else None


def _envelope_error(code: int, message: str) -> Json:
    return {"code": code, "message": message, "data": None}


def _fetch_failed(message: str) -> _Rejected:
    return _Rejected(1402, message)


class _Handler(SimulatorHandler):
    server_version = "WaveSpeedSimulator/1.0"
    api_prefix = "/api/"
    not_found: ClassVar[Json] = {"code": 404, "message": "not found"}

    @property
    def sim(self) -> WaveSpeedSimulator:
        simulator: WaveSpeedSimulator = self.server.owner
        return simulator

    def answer(self, method: str, path: str, query: dict[str, str], raw: bytes, body: Any) -> Answer:
        sim = self.sim
        sim._pause(sim.faults.latency_seconds)
        if not sim._authorised(self.headers.get("Authorization")):
            return 401, {"code": 401, "message": "Unauthorized"}, {"WWW-Authenticate": "Bearer"}
        spec = model_at(path)
        if spec is not None:
            if method != "POST":
                return 405, {"code": 405, "message": "method not allowed"}, {"Allow": "POST"}
            # No body reads as an empty object (so: missing param); a body that is not JSON stays raw (invalid).
            submitted: Any = {} if not raw else raw if body is None else body
            return sim._submit(spec, query, submitted)
        if path == SECRET_PATH and method == "GET":
            return 200, {"code": 200, "message": "success", "data": {"secret": sim.webhook_secret}}, {}
        if path.startswith(PREDICTIONS_PREFIX) and method == "GET":
            rest = path.removeprefix(PREDICTIONS_PREFIX).removesuffix("/result")
            if rest and "/" not in rest:
                return sim._result(rest)
        return 404, {"code": 404, "message": "not found"}, {}


__all__ = [
    "DEFAULT_WEBHOOK_SECRET",
    "MODELS",
    "ModelSpec",
    "WaveSpeedSimulator",
    "input_error",
    "model_at",
    "sign_webhook",
    "submitted_fields",
]
