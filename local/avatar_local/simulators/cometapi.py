"""A local stand-in for CometAPI's Kling avatar image-to-video API: same paths, envelopes, statuses and callbacks.

Start it, point a client's CometAPI base URL at `CometApiSimulator.base_url`, and it turns (image URL, sound_file
URL, prompt) into a real MP4 of the image with the audio track, as long as the audio. No account, no network beyond
the input and callback URLs.

API
---
Every ``/kling/`` call needs ``Authorization: Bearer <key>``. A missing or empty key is HTTP 401 with the gateway's
error shape ``{"error": {"message": "... (request id: <id>)", "type": "comet_api_error", "param": "", "code": ""}}``;
when ``api_key`` is configured any other key is 401 too, otherwise any non-empty key is accepted. The key is the
account: ``external_task_id`` is unique per key.

Errors from the Kling route are Kling-style ``{"code": <non-zero>, "message": ..., "request_id": <uuid>}``:
1201 (HTTP 400) for a bad parameter, 1202 (HTTP 405) for a wrong method on a known path, 1203 (HTTP 404) for an
unknown task. Anything else unknown is a gateway-style 404.

``POST /kling/v1/videos/avatar/image2video``
    JSON object with ``image`` (http(s) URL; the real API also takes raw base64, the simulator does not),
    ``sound_file`` (http(s) URL; ``audio_id`` is refused with 1201, there is no TTS here), ``prompt`` (required
    here, a non-empty string of at most 2500 characters), ``mode`` (``std``, the default, or ``pro``),
    ``callback_url`` (optional http(s) URL) and ``external_task_id`` (optional string, unique per account: a
    repeat is 1201 "external_task_id already exists", so a retried create cannot make a second task; an empty
    string counts as absent). Any violation is 1201 and makes no task. Success is HTTP 200
    ``{"code": 0, "message": "SUCCEED", "request_id": <uuid>, "data": {"task_id": <18-digit string>,
    "task_status": "submitted", "task_info": {"external_task_id": <str or null>}, "created_at": <ms>,
    "updated_at": <ms>}}``.
``GET /kling/v1/videos/avatar/image2video/{id}``
    The same envelope; ``data`` adds ``task_status_msg`` ("" unless failed) and, once ``succeed``, ``task_result``
    ``{"videos": [{"id": <uuid>, "url": "<base_url>/outputs/<task_id>.mp4", "duration": "<seconds, one decimal>"}]}``
    (the duration as a string, e.g. ``"4.0"``, measured on the rendered file). ``id`` is a task_id, or else (as
    official Kling allows; not documented by CometAPI) an ``external_task_id`` of the calling account.
``GET /outputs/{task_id}.mp4`` (no auth: it stands in for the Kling CDN)
    The video, ``Content-Type: video/mp4`` with its ``Content-Length``.

``created_at`` / ``updated_at`` are real wall-clock epoch milliseconds (``updated_at``: the last status change);
only durations are scaled by ``time_factor``.

Processing
----------
``submitted`` → ``processing`` → ``succeed`` | ``failed`` (spelled as the provider spells it); a terminal status
never changes. At most ``max_concurrent`` tasks are processing; the others wait in ``submitted``, first come first
served (queued, not refused). Processing downloads ``image`` and ``sound_file`` (a failure ends the task ``failed``
with ``task_status_msg`` "media fetch failed: ..."), renders the video with `render_avatar_video` into a directory
the simulator owns (a failure, e.g. an image that is not an image: "invalid input: " and ffmpeg's reason), and lasts
at least ``processing_seconds / time_factor``. Input limits (sizes, 2-60 s of audio, ...) are not enforced.

Callbacks
---------
When ``callback_url`` is set, every status change after creation (``processing``, then ``succeed`` or ``failed``)
is POSTed there as the bare task ``{"task_id", "task_status", "task_status_msg", "created_at", "updated_at",
"task_result"}`` (``task_result`` is ``{}`` until ``succeed``), ``Content-Type: application/json``, with no
signature (CometAPI documents none). A callback goes out only after its status is visible through GET, and a task's
callbacks go out one at a time in the order they fall due (status order, unless jitter reorders them). Each is
retried on connection errors, 429 and 5xx with exponential backoff (up to `CALLBACK_ATTEMPTS` attempts); another
4xx ends it.

Faults
------
A seeded `FaultPlan` (replaceable at run time): ``latency_seconds`` before answering any API request; injected
errors on creates (``submit_error_rate``/``submit_error_status``) and queries (``result_error_rate``/
``result_error_status``): 429 and 5xx come gateway-style, and with a `CometFaultPlan` 1302 or 1303 come Kling-style
as HTTP 429 ``{"code": 1303, "message": "...concurrency limit..."}`` (no ``Retry-After`` either way: CometAPI
publishes no limits, clients must back off on their own); tasks that end ``failed`` with the plan's
``fail_message`` (``fail_rate``); creates carried out but never answered (``lost_answer_rate``: the connection
closes); callbacks lost (never sent), duplicated (sent twice) or delayed (each copy by ``webhook_delay_seconds``
plus a random share of ``webhook_jitter_seconds`` after its status change, so with jitter they can overtake each
other); output downloads that promise the full ``Content-Length`` and
hang up after half the bytes (``truncated_download_rate``); and the minimum ``processing_seconds``. Per-task
decisions (fail; lose or duplicate each of its two callbacks) are drawn when it is created, so the same seed and the
same sequence of requests give the same outcomes.

Inspection (no auth)
--------------------
``GET /_sim/requests`` every API request received (``method``, ``path``, ``query``, ``json``, ``at``, ``status``);
``GET /_sim/tasks``; ``GET /_sim/callbacks`` every callback attempt (and every callback deliberately lost);
``GET`` / ``POST /_sim/faults`` read or replace the fault plan (a `CometFaultPlan` body); ``POST /_sim/reset``
forgets recorded requests and callback attempts (tasks stay). The same from Python: `requests`, `submissions`,
`tasks`, `task`, `callback_deliveries`, `peak_processing`, `set_faults`, `reset`, `wait_until_idle`.

The server is quiet (no access log on stderr; debug logging on the ``avatar_local.cometapi`` logger) and `stop`
closes the listener, open connections, processing workers and callback senders promptly.
"""

from __future__ import annotations

import collections
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx
from pydantic import field_validator

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
    pause,
    status_message,
    token_matches,
)
from avatar_local.simulators.faults import AnswerLost, FaultPlan
from avatar_local.simulators.media import MediaError, probe_media, render_avatar_video

logger = logging.getLogger("avatar_local.cometapi")

CREATE_PATH: Final = "/kling/v1/videos/avatar/image2video"
TASK_PREFIX: Final = CREATE_PATH + "/"
MODES: Final = ("std", "pro")
TERMINAL: Final = frozenset({"succeed", "failed"})

KLING_LIMIT_MESSAGES: Final[dict[int, str]] = {
    1302: "rate limit exceeded: requests are too frequent, please slow down",
    1303: "concurrency limit exceeded: too many tasks in progress, please try again later",
}
"""Kling's rate/concurrency limit codes, answered as HTTP 429 when a `CometFaultPlan` injects them."""

CALLBACK_ATTEMPTS: Final = 5
CALLBACK_BACKOFF_SECONDS: Final = 0.5  # simulated; doubles after each failed attempt
CALLBACK_SCHEDULER_TICK: Final = 0.05  # real seconds between looks at a task's queued callbacks
THREAD_PREFIX: Final = "cometapi-sim"


class CometFaultPlan(FaultPlan):
    """A `FaultPlan` whose injected submit/result errors may also be Kling's 1302 (rate) or 1303 (concurrency)
    limit codes, answered Kling-style as HTTP 429. Every other field is the plain plan's."""

    @field_validator("submit_error_status", "result_error_status")
    @classmethod
    def _transient_status(cls, value: int) -> int:  # overrides FaultPlan's validator of the same name
        if value != 429 and value not in KLING_LIMIT_MESSAGES and not 500 <= value <= 599:
            raise ValueError(f"must be 429, a 5xx status or a Kling limit code {sorted(KLING_LIMIT_MESSAGES)}")
        return value


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _gateway_request_id() -> str:
    """A request id in the style of CometAPI's gateway: a UTC timestamp followed by random characters."""
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + secrets.token_hex(8)


def gateway_error(message: str, *, code: str = "") -> Json:
    """The CometAPI gateway's error body."""
    return {
        "error": {
            "message": f"{message} (request id: {_gateway_request_id()})",
            "type": "comet_api_error",
            "param": "",
            "code": code,
        }
    }


def kling_error(code: int, message: str) -> Json:
    """A Kling-style error body, as errors from the Kling route come back."""
    return {"code": code, "message": message, "request_id": str(uuid.uuid4())}


def _envelope(data: Json) -> Json:
    return {"code": 0, "message": "SUCCEED", "request_id": str(uuid.uuid4()), "data": data}


class _Invalid(Exception):
    """A create request breaks a parameter rule: Kling code 1201, HTTP 400."""


class _TaskFailed(Exception):
    """Processing ended the task as failed; the message becomes ``task_status_msg``."""


@dataclass
class _Callback:
    status: str
    body: bytes
    due: float  # time.monotonic() when it may go out
    duplicate: bool = False  # a second delivery of the same status change


@dataclass
class _Task:
    task_id: str
    account: str
    external_task_id: str | None
    image: str
    sound_file: str
    prompt: str
    mode: str
    callback_url: str | None
    created_at: int
    created_monotonic: float
    inject_failure: bool
    callback_faults: list[tuple[bool, bool]]  # (lose, duplicate) for the 1st and 2nd status change
    status: str = "submitted"
    status_msg: str = ""
    updated_at: int = 0
    changes: int = 0
    video: Path | None = None
    video_id: str | None = None
    duration: str | None = None
    outbox: collections.deque[_Callback] = field(default_factory=collections.deque)
    sender: threading.Thread | None = None

    def result(self, base_url: str) -> Json:
        if self.status != "succeed":
            return {}
        return {
            "videos": [
                {"id": self.video_id, "url": f"{base_url}{OUTPUTS_PREFIX}{self.task_id}.mp4", "duration": self.duration}
            ]
        }

    def view(self, base_url: str, *, created: bool = False) -> Json:
        """``data`` of the create answer (`created`) or of a query answer."""
        data: Json = {"task_id": self.task_id, "task_status": self.status}
        if not created:
            data["task_status_msg"] = self.status_msg
        data["task_info"] = {"external_task_id": self.external_task_id}
        if self.status == "succeed":
            data["task_result"] = self.result(base_url)
        data["created_at"] = self.created_at
        data["updated_at"] = self.updated_at
        return data

    def callback_body(self, base_url: str) -> Json:
        return {
            "task_id": self.task_id,
            "task_status": self.status,
            "task_status_msg": self.status_msg,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "task_result": self.result(base_url),
        }

    def inspection(self, base_url: str) -> Json:
        return {
            **self.view(base_url),
            "mode": self.mode,
            "prompt": self.prompt,
            "image": self.image,
            "sound_file": self.sound_file,
            "callback_url": self.callback_url,
        }


class CometApiSimulator(SimulatorCore[_Task]):
    """CometAPI's Kling avatar API on ``host:port`` (port 0: any free port). See the module docstring."""

    display_name = "CometAPI"
    thread_prefix = THREAD_PREFIX
    log = logger

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        faults: FaultPlan | None = None,
        time_factor: float = 1.0,
        max_concurrent: int = 3,
    ) -> None:
        self.check_settings(time_factor, max_concurrent)
        if api_key is not None and not api_key.strip():
            raise ValueError("api_key is empty (use None to accept any key)")
        self.api_key = api_key
        self._tasks: dict[str, _Task] = {}
        self._external: dict[tuple[str, str], str] = {}  # (account, external_task_id) -> task_id
        super().__init__(
            host, port, _Handler, faults if faults is not None else CometFaultPlan(), time_factor, max_concurrent
        )

    # ------------------------------------------------------------------------------------------------ inspection

    def submissions(self) -> list[Json]:
        """The create requests among `requests`, whatever their answer."""
        return [r for r in self.requests() if r["method"] == "POST" and r["path"] == CREATE_PATH]

    def tasks(self) -> list[Json]:
        """Every task (oldest first), as a query shows it plus ``mode``, ``prompt``, ``image``, ``sound_file`` and
        ``callback_url``."""
        with self._lock:
            return [task.inspection(self._base_url) for task in self._tasks.values()]

    def task(self, task_id: str) -> Json | None:
        """One task as a query shows it (``data``), or None."""
        with self._lock:
            task = self._tasks.get(task_id)
            return None if task is None else task.view(self._base_url)

    def callback_deliveries(self) -> list[Json]:
        """Every callback attempt (and every callback deliberately lost), oldest first."""
        with self._lock:
            return [dict(record) for record in self._deliveries]

    # ------------------------------------------------------------------------------------------------ API

    def _account(self, header: str | None) -> str | None:
        """The calling account (its key), or None when the request is not authorised."""
        token = bearer_token(header)
        return token if token is not None and token_matches(token, self.api_key) else None

    def _injected_error(self, status: int) -> Answer:
        if status in KLING_LIMIT_MESSAGES:
            return 429, kling_error(status, KLING_LIMIT_MESSAGES[status]), {}
        return status, gateway_error(status_message(status)), {}

    def _create(self, account: str, raw: bytes, body: Any) -> Answer:
        plan = self._faults
        if plan.should(plan.submit_error_rate):
            return self._injected_error(plan.submit_error_status)
        try:
            fields = _validate_create(raw, body)
        except _Invalid as exc:
            return 400, kling_error(1201, str(exc)), {}
        external = fields["external_task_id"]
        with self._work_ready:
            if external is not None and (account, external) in self._external:
                return 400, kling_error(1201, "external_task_id already exists"), {}
            task_id = _new_task_id()
            while task_id in self._tasks:
                task_id = _new_task_id()
            now = _now_ms()
            task = _Task(
                task_id=task_id,
                account=account,
                external_task_id=external,
                image=fields["image"],
                sound_file=fields["sound_file"],
                prompt=fields["prompt"],
                mode=fields["mode"],
                callback_url=fields["callback_url"],
                created_at=now,
                updated_at=now,
                created_monotonic=time.monotonic(),
                # Drawn now, in creation order, so a seed gives the same outcomes run after run.
                inject_failure=plan.should(plan.fail_rate),
                callback_faults=[
                    (plan.should(plan.lost_webhook_rate), plan.should(plan.duplicate_webhook_rate)) for _ in range(2)
                ],
            )
            self._tasks[task_id] = task
            if external is not None:
                self._external[(account, external)] = task_id
            self._queue.append(task_id)
            data = task.view(self._base_url, created=True)
            self._work_ready.notify()
        if plan.should(plan.lost_answer_rate):
            raise AnswerLost(task_id)
        return 200, _envelope(data), {}

    def _query(self, account: str, reference: str) -> Answer:
        plan = self._faults
        if plan.should(plan.result_error_rate):
            return self._injected_error(plan.result_error_status)
        with self._lock:
            task = self._tasks.get(reference)
            if task is None and (task_id := self._external.get((account, reference))) is not None:
                task = self._tasks[task_id]
            data = None if task is None else task.view(self._base_url)
        if data is None:
            return 404, kling_error(1203, "task not found"), {}
        return 200, _envelope(data), {}

    # ------------------------------------------------------------------------------------------------ processing

    def _begin_locked(self, job_id: str) -> _Task:
        task = self._tasks[job_id]
        self._change_status_locked(task, "processing")
        return task

    def _process(self, task: _Task) -> None:
        started = time.monotonic()
        plan = self._faults
        try:
            image = download_input(task.image, "image", _TaskFailed)
            audio = download_input(task.sound_file, "sound_file", _TaskFailed)
            if self._stopping.is_set():
                return
            failure: str | None = None
            video: Path | None = None
            duration = 0.0
            if task.inject_failure:
                failure = f"{plan.fail_message} (simulated failure)"
            else:
                assert self._workdir is not None
                video = self._workdir / f"{task.task_id}.mp4"
                try:
                    render_avatar_video(image, audio, video)
                    duration = probe_media(video).duration
                except MediaError as exc:
                    raise _TaskFailed(f"invalid input: {exc}") from exc
            if not self._pause(plan.processing_seconds - (time.monotonic() - started) * self.time_factor):
                return
            if failure is not None:
                raise _TaskFailed(failure)
            with self._lock:
                task.video, task.video_id, task.duration = video, str(uuid.uuid4()), f"{duration:.1f}"
                self._change_status_locked(task, "succeed")
        except _TaskFailed as failed:
            with self._lock:
                self._change_status_locked(task, "failed", str(failed))
        except Exception as exc:  # a simulator bug must still end the task, as the provider's 5000s would
            logger.exception("CometAPI simulator failed on task %s", task.task_id)
            with self._lock:
                self._change_status_locked(task, "failed", f"internal server error: {exc}")

    def _change_status_locked(self, task: _Task, status: str, message: str = "") -> None:
        """Move `task` to `status` and queue its callback. The caller holds the lock, so the callback (sent by
        another thread that needs the lock) cannot go out before a query can see the new status."""
        if task.status in TERMINAL or self._stopping.is_set():
            return
        task.status, task.status_msg, task.updated_at = status, message, _now_ms()
        logger.debug("task %s %s", task.task_id, status)
        self._queue_callback_locked(task)

    # ------------------------------------------------------------------------------------------------ callbacks

    def _queue_callback_locked(self, task: _Task) -> None:
        url = task.callback_url
        if url is None:
            return
        lose, duplicate = task.callback_faults[min(task.changes, len(task.callback_faults) - 1)]
        task.changes += 1
        if lose:
            self._deliveries.append(
                {"task_id": task.task_id, "task_status": task.status, "url": url, "lost": True, "at": iso_now()}
            )
            return
        body = json.dumps(task.callback_body(self._base_url), separators=(",", ":")).encode()
        now = time.monotonic()
        task.outbox.append(_Callback(task.status, body, now + self._scaled(self._faults.delivery_delay())))
        if duplicate:
            task.outbox.append(_Callback(task.status, body, now + self._scaled(self._faults.delivery_delay()), True))
        if task.sender is None:
            sender = threading.Thread(
                target=self._send_callbacks, args=(task,), name=f"{THREAD_PREFIX}-callback-{task.task_id}", daemon=True
            )
            task.sender = sender
            self._senders = {t for t in self._senders if t.is_alive()}
            self._senders.add(sender)
            sender.start()

    def _send_callbacks(self, task: _Task) -> None:
        """Send `task`'s queued callbacks one at a time, each when it is due, the earliest due first."""
        url = task.callback_url
        assert url is not None
        with httpx.Client(timeout=WEBHOOK_TIMEOUT) as client:
            while True:
                with self._lock:
                    if not task.outbox or self._stopping.is_set():
                        task.sender = None
                        return
                    callback = min(task.outbox, key=lambda queued: queued.due)
                    wait = callback.due - time.monotonic()
                    if wait <= 0:
                        task.outbox.remove(callback)
                if wait > 0:
                    # Short naps: a callback queued meanwhile may be due sooner than this one.
                    pause(self._stopping, min(wait, CALLBACK_SCHEDULER_TICK))
                    continue
                self._deliver(client, task.task_id, url, callback)

    def _deliver(self, client: httpx.Client, task_id: str, url: str, callback: _Callback) -> None:
        delivered = self._post_recorded(
            client,
            url,
            callback.body,
            headers=lambda: {"Content-Type": "application/json"},
            about=lambda: {
                "task_id": task_id,
                "task_status": callback.status,
                "duplicate": callback.duplicate,
                "at": iso_now(),
            },
            attempts=CALLBACK_ATTEMPTS,
            first_backoff_seconds=CALLBACK_BACKOFF_SECONDS,
        )
        if not delivered:
            logger.debug("callback %s for %s gave up after %d attempts", callback.status, task_id, CALLBACK_ATTEMPTS)

    # ------------------------------------------------------------------------------------------------ outputs

    def inspections(self) -> dict[str, Callable[[], Any]]:
        return {**super().inspections(), "/_sim/tasks": self.tasks, "/_sim/callbacks": self.callback_deliveries}

    def _output(self, task_id: str) -> Path | None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.status != "succeed":
                return None
            video = task.video
        return video if video is not None and video.is_file() else None


def _new_task_id() -> str:
    """An 18-digit decimal string, as Kling's task ids are."""
    return str(10**17 + secrets.randbelow(9 * 10**17))


def _validate_create(raw: bytes, body: Any) -> dict[str, Any]:
    """The create fields, or `_Invalid` with the first broken rule."""
    if not isinstance(body, dict):
        raise _Invalid("invalid request body: expected a JSON object" if raw else "request body is required")
    image = body.get("image")
    if image in (None, ""):
        raise _Invalid("image is required")
    if not is_http_url(image):
        raise _Invalid("image must be an http(s) URL (the simulator does not take base64)")
    sound_file, audio_id = body.get("sound_file"), body.get("audio_id")
    if audio_id not in (None, ""):
        if sound_file not in (None, ""):
            raise _Invalid("exactly one of audio_id and sound_file is allowed")
        raise _Invalid("audio_id is not supported by the simulator: send sound_file")
    if sound_file in (None, ""):
        raise _Invalid("sound_file is required")
    if not is_http_url(sound_file):
        raise _Invalid("sound_file must be an http(s) URL (the simulator does not take base64)")
    prompt = body.get("prompt")
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        raise _Invalid("prompt is required")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        raise _Invalid(f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
    mode = body.get("mode")
    if mode is None:
        mode = "std"
    if mode not in MODES:
        raise _Invalid("mode must be std or pro")
    callback_url = body.get("callback_url") or None
    if callback_url is not None and not is_http_url(callback_url):
        raise _Invalid("callback_url must be an http(s) URL")
    external = body.get("external_task_id")
    if external is not None and not isinstance(external, str):
        raise _Invalid("external_task_id must be a string")
    return {
        "image": image,
        "sound_file": sound_file,
        "prompt": prompt,
        "mode": mode,
        "callback_url": callback_url,
        "external_task_id": external or None,
    }


class _Handler(SimulatorHandler):
    server_version = "CometApiSimulator/1.0"
    fault_plan_type = CometFaultPlan

    @property
    def sim(self) -> CometApiSimulator:
        simulator: CometApiSimulator = self.server.owner
        return simulator

    def answer(self, method: str, path: str, query: dict[str, str], raw: bytes, body: Any) -> Answer:
        sim = self.sim
        sim._pause(sim.faults.latency_seconds)
        header = self.headers.get("Authorization")
        account = sim._account(header)
        if account is None:
            reason = "invalid API key" if bearer_token(header) else "no API key provided"
            return 401, gateway_error(reason), {"WWW-Authenticate": "Bearer"}
        if path == CREATE_PATH:
            if method != "POST":
                return 405, kling_error(1202, "invalid request method"), {"Allow": "POST"}
            return sim._create(account, raw, body)
        if path.startswith(TASK_PREFIX) and "/" not in (reference := path.removeprefix(TASK_PREFIX)) and reference:
            if method not in ("GET", "HEAD"):
                return 405, kling_error(1202, "invalid request method"), {"Allow": "GET"}
            return sim._query(account, reference)
        return 404, gateway_error(f"Invalid URL ({method} {path})"), {}


__all__ = [
    "CALLBACK_ATTEMPTS",
    "CREATE_PATH",
    "KLING_LIMIT_MESSAGES",
    "CometApiSimulator",
    "CometFaultPlan",
    "gateway_error",
    "kling_error",
]
