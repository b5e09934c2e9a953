"""CometAPI's Kling avatar image-to-video API as a `VideoProvider`.

Calls
-----
- submit: ``POST /<model id>`` (``kling/v1/videos/avatar/image2video``, the spec's), JSON ``{"image": url,
  "sound_file": url, "prompt": str, "mode": "std"|"pro", "callback_url": url, "external_task_id": our task id}``.
  The prompt is always sent (some versions of the docs say a request without one is refused), falling back to a
  neutral default.
- fetch: ``GET /kling/v1/videos/avatar/image2video/{task_id}``.
Both answer with a Kling envelope ``{"code": 0, "message": "SUCCEED", "request_id": ..., "data": {task}}``;
callbacks carry the bare task object (a body wrapped in ``{"code": 0, "data": {task}}`` is accepted too).

Statuses: ``submitted`` → QUEUED, ``processing`` → PROCESSING, ``succeed`` → SUCCEEDED (output = first video's
URL; no video → FAILED), ``failed`` → FAILED (message = ``task_status_msg``). Anything else is not understood.

Error mapping
-----------------------------------------------------------------------------------------------------------------
Errors come in two shapes: the gateway's ``{"error": {"message", "type", "code", "param"}}`` and, from the Kling
route, ``{"code": <non-zero>, "message": ...}`` (with HTTP 200 or not). A Kling code named in the table below decides
on its own, whatever the HTTP status (Kling answers 1102 with HTTP 429, yet it is no rate limit); otherwise the
HTTP status decides.

=====================================================  ==============================================
What happened                                          Raised
=====================================================  ==============================================
Kling code 1000-1004 (authentication), 1100-1103       ProviderConfigError (the account or key needs an
(account; 1102 = credits exhausted), 1304 (IP          operator: not the input, and waiting won't help)
allow-list)
Kling code 1301 (content safety), any other 1xxx       ProviderInputError
Kling code 1302 / 1303 (rate / concurrency limit)      ProviderTransientError (TransientHttpError,
                                                       with any Retry-After): not taken, safe to resend
Kling code 5000-5002                                   fetch: ProviderTransientError;
                                                       submit: ProviderOutcomeUnknownError
no such Kling code, HTTP 401 / 403                     ProviderConfigError
no such Kling code, HTTP 429, 503                      ProviderTransientError (TransientHttpError,
                                                       with the Retry-After hint)
no such Kling code, HTTP 500, 502, 504, other 5xx      fetch: ProviderTransientError;
                                                       submit: ProviderOutcomeUnknownError (may exist)
no such Kling code, HTTP 400, 404, other 4xx           ProviderInputError
no such Kling code, any other non-2xx status           ProviderError
HTTP 2xx, any other non-zero (or non-numeric) code     ProviderError
HTTP 2xx, body not JSON / not an envelope / no task /  fetch: ProviderError;
unknown task status                                    submit: ProviderOutcomeUnknownError (the task
                                                       may exist)
ConnectError, ConnectTimeout, PoolTimeout, ProxyError  ProviderTransientError (request never sent)
UnsupportedProtocol (bad base URL)                     ProviderConfigError
ReadTimeout, WriteTimeout, ReadError, WriteError,      submit: ProviderOutcomeUnknownError
RemoteProtocolError, any other transport failure       fetch: ProviderTransientError
=====================================================  ==============================================

The error's ``code`` is the Kling code when there is one, else the gateway's ``error.code`` when not empty, else
the HTTP status. Its message is the body's ``message`` (or ``error.message``, ``error``, ``detail``, or the raw
text), plus the envelope's ``request_id`` when there is one. Whatever CometAPI wrote is masked (`mask_secrets`)
before it is quoted: it may echo our presigned inputs, the callback URL's token or the API key.

Retries (see `http_retry`): only ProviderTransientError is retried, for fetch and submit alike, because each of
those answers proves the request was not taken. ProviderOutcomeUnknownError is never retried: a re-POSTed
submit could create a second, paid task.

Callbacks: CometAPI signs nothing, so `parse_callback` only parses. ``callback_auth = "query"`` tells the
domain that the task's token in the callback URL is all that authenticates a callback, and to confirm
what it says with `fetch` before acting on it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, Literal, NoReturn
from urllib.parse import quote

import httpx
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from avatar_pipeline.adapters.http_provider import HttpProvider, summarise, with_model_fields
from avatar_pipeline.adapters.http_retry import (
    RetryPolicy,
    TransientHttpError,
    parse_retry_after,
    raise_transport_error,
)
from avatar_pipeline.domain.errors import (
    ProviderConfigError,
    ProviderError,
    ProviderInputError,
    ProviderOutcomeUnknownError,
    WebhookPayloadError,
)
from avatar_pipeline.domain.models import ProviderJob, ProviderJobStatus, SubmissionRequest
from avatar_pipeline.domain.redaction import mask_secrets
from avatar_pipeline.providers.cometapi import DEFAULT_BASE_URL, DEFAULT_PROMPT, KLING_AVATAR
from avatar_pipeline.providers.spec import OptionValue

logger = logging.getLogger(__name__)

# CometAPI may fetch the media before it answers a create: a generous read timeout makes "outcome unknown" rarer.
DEFAULT_TIMEOUT: Final = httpx.Timeout(30.0, connect=5.0)
MAX_PROMPT_CHARS: Final = 2500

CREATE_PATH: Final = "/{model_id}"
# Every avatar task, std or pro, is queried at its model's endpoint.
QUERY_PATH: Final = f"/{KLING_AVATAR}/{{task_id}}"

# HTTP answers to a submit that prove the task was not created: rate limited. CometAPI is a gateway in front of
# Kling, so even a 503 may come after it forwarded the request: any server error on a submit is an unknown outcome
# (never resent, never failed over).
SUBMIT_NOT_TAKEN_HTTP: Final = frozenset({429})

# Kling's published error codes (its API reference, "common info"): 1000-1004 authentication, 1100-1103 account,
# 1200-1203 request, 1300-1304 policy and limits, 5000-5002 server side.
KLING_CONFIG_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1004, 1100, 1101, 1102, 1103, 1304})
KLING_CONTENT_SAFETY: Final = 1301
KLING_LIMIT_CODES: Final = frozenset({1302, 1303})
KLING_SERVER_CODES: Final = frozenset({5000, 5001, 5002})
# "No such task": Kling's 1203, or the gateway's HTTP 404.
NOT_FOUND_CODES: Final = frozenset({"1203", "404"})

_STATUSES: Final[Mapping[str, ProviderJobStatus]] = {
    "submitted": ProviderJobStatus.QUEUED,
    "processing": ProviderJobStatus.PROCESSING,
    "succeed": ProviderJobStatus.SUCCEEDED,
    "failed": ProviderJobStatus.FAILED,
}


def parse_duration(value: object) -> float | None:
    """Seconds of video from Kling's ``duration`` (documented as a string such as ``"5.034"``).

    Numbers and numeric strings (surrounding spaces and a trailing ``s`` allowed) are accepted; anything else,
    negative or not finite gives None rather than failing the whole answer.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip().removesuffix("s").strip())
        except ValueError:
            return None
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class CometVideo(BaseModel):
    """One video of a finished task."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    id: str | None = None
    url: str | None = None
    duration: Annotated[float | None, BeforeValidator(parse_duration)] = None


class CometTaskResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    videos: list[CometVideo] | None = None


class CometTask(BaseModel):
    """One task, as in the envelope's ``data`` and as the body of a callback."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    task_id: str = Field(min_length=1)
    task_status: str
    task_status_msg: str | None = None
    # Not documented on a task; kept as the failure's code should a failed task ever carry one.
    code: int | str | None = None
    task_info: dict[str, Any] | None = None
    task_result: CometTaskResult | None = None
    created_at: int | None = None
    updated_at: int | None = None

    @property
    def videos(self) -> list[CometVideo]:
        return [video for video in (self.task_result.videos if self.task_result else None) or [] if video.url]


class CometEnvelope(BaseModel):
    """The Kling wrapper around create and query answers; ``data`` is validated only once ``code`` is 0."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    code: int | str
    message: str | None = None
    request_id: str | None = None
    data: Any = None


class CometGatewayErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    message: str | None = None
    type: str | None = None
    code: str | None = None
    param: str | None = None


class CometGatewayError(BaseModel):
    """The gateway's own error body: ``{"error": {"message", "type", "code", "param"}}``."""

    model_config = ConfigDict(extra="allow")

    error: CometGatewayErrorDetail


class CometApiProvider(HttpProvider):
    """CometAPI's Kling avatar image-to-video API (std and pro) behind the `VideoProvider` protocol."""

    name = "cometapi"
    display_name = "CometAPI"
    # No signed callbacks: the domain authenticates them by the task's token only and confirms them with `fetch`.
    callback_auth: Literal["signature", "query"] = "query"

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        client: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
        default_prompt: str = DEFAULT_PROMPT,
    ) -> None:
        if not api_key or not api_key.strip():
            raise ValueError("CometAPI API key is empty")
        if not default_prompt.strip():
            raise ValueError("default_prompt is empty (CometAPI may refuse a request without a prompt)")
        if len(default_prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"default_prompt is longer than {MAX_PROMPT_CHARS} characters")
        self._api_key = api_key
        self._default_prompt = default_prompt
        super().__init__(api_key, base_url, client, retry, DEFAULT_TIMEOUT)

    # ---------------------------------------------------------------- submit / fetch

    def _request_body(self, request: SubmissionRequest) -> dict[str, OptionValue]:
        """The JSON body of a create call (the prompt always present: ours, or the default; the model's `mode` among
        its fields)."""
        prompt = request.prompt if request.prompt and request.prompt.strip() else self._default_prompt
        inputs: dict[str, OptionValue] = {
            "image": request.image_url,
            "sound_file": request.audio_url,
            "prompt": prompt,
            "callback_url": request.webhook_url,
            "external_task_id": request.task_id,
        }
        return with_model_fields(inputs, request, "CometAPI submit")

    def _submit_once(self, request: SubmissionRequest) -> ProviderJob:
        url = self._base_url + CREATE_PATH.format(model_id=request.model_id)
        try:
            response = self._client.post(url, json=self._request_body(request), headers=self._headers)
        except httpx.HTTPError as exc:
            raise_transport_error(exc, "CometAPI", "submit", request_may_be_taken=True)
        return self._job_from_response(response, "submit", unusable=ProviderOutcomeUnknownError)

    def _fetch_once(self, provider_task_id: str) -> ProviderJob:
        url = self._base_url + QUERY_PATH.format(task_id=quote(provider_task_id, safe=""))
        try:
            response = self._client.get(url, headers=self._headers)
        except httpx.HTTPError as exc:
            raise_transport_error(exc, "CometAPI", "fetch", request_may_be_taken=False)
        return self._job_from_response(response, "fetch", unusable=ProviderError)

    # ---------------------------------------------------------------- callbacks

    def parse_callback(self, headers: Mapping[str, str], body: bytes, now: datetime) -> ProviderJob:
        """Parse a callback body (a bare task object, or one wrapped in ``{"code": 0, "data": {...}}``).

        CometAPI does not sign its callbacks, so nothing here authenticates: `headers` and `now` are not used and
        no WebhookAuthError is ever raised. The domain authenticates the callback by the task's token in its URL
        (see ``callback_auth``) and treats what it says as a hint to confirm with `fetch`.

        Raises WebhookPayloadError when the body is not a task object with a known status.
        """
        try:
            payload = json.loads(body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise WebhookPayloadError("CometAPI callback body is not valid JSON") from exc
        if isinstance(payload, dict) and "task_id" not in payload and "data" in payload:
            if _numeric_code(payload.get("code", 0)) != 0:
                code = mask_secrets(repr(payload.get("code")), limit=80)
                raise WebhookPayloadError(f"CometAPI callback envelope has code {code}, not 0")
            payload = payload["data"]
        return _parse_task(payload, WebhookPayloadError, "CometAPI callback body")

    def delivery_id(self, headers: Mapping[str, str]) -> str | None:
        """CometAPI names no delivery; repeats are harmless anyway, as each callback is confirmed by a query."""
        return None

    finds_by_task = True

    def find_by_task(self, task_id: str) -> ProviderJob | None:
        """The query path takes our `external_task_id` as well as CometAPI's own id."""
        try:
            job = self.fetch(task_id)
        except ProviderInputError as error:
            if error.code in NOT_FOUND_CODES:
                return None
            raise
        return job if job.external_id == task_id else None

    # ---------------------------------------------------------------- answers

    def _job_from_response(
        self, response: httpx.Response, operation: str, *, unusable: type[ProviderError]
    ) -> ProviderJob:
        """Turn an HTTP answer into a job, or raise the mapped error. `unusable` is raised for a garbled 2xx."""
        if not response.is_success:
            self._raise_error(response, _json_or_none(response), operation)
        try:
            payload = response.json()
        except ValueError as exc:
            raise unusable(f"CometAPI {operation}: HTTP {response.status_code} body is not JSON") from exc
        if not isinstance(payload, dict) or not ("code" in payload or "error" in payload):
            raise unusable(f"CometAPI {operation}: HTTP {response.status_code} answer is not an envelope")
        if _numeric_code(payload.get("code")) != 0:
            self._raise_error(response, payload, operation)
        try:
            envelope = CometEnvelope.model_validate(payload)
        except ValidationError as exc:
            raise unusable(f"CometAPI {operation}: unexpected answer: {summarise(exc)}") from exc
        return _parse_task(envelope.data, unusable, f"CometAPI {operation} answer")

    def _raise_error(self, response: httpx.Response, payload: Any, operation: str) -> NoReturn:
        """Raise the error an answer means (see the module docstring's table)."""
        status = response.status_code
        kling_code, other_code, detail = self._error_details(response, payload)
        where = f"HTTP {status}" + (f", code {kling_code}" if kling_code else "")
        raise _ErrorAnswer(
            operation=operation,
            status=status,
            success=response.is_success,
            kling_code=kling_code,
            detail=detail,
            code=str(kling_code) if kling_code else other_code or str(status),
            message=f"CometAPI {operation}: {where}" + (f": {detail}" if detail else ""),
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        ).error()

    def _error_details(self, response: httpx.Response, payload: Any) -> tuple[int | None, str | None, str]:
        """The body's non-zero Kling code, its other (gateway or textual) code, and its message, key masked."""
        if not isinstance(payload, dict):
            text = response.text.strip() if payload is None else json.dumps(payload)
            return None, None, self._clean(text)
        kling_code = _numeric_code(payload.get("code")) or None
        other_code: str | None = None
        detail = ""
        if kling_code is None and isinstance(payload.get("code"), str) and payload["code"].strip():
            other_code = self._clean(payload["code"].strip())
        try:
            gateway = CometGatewayError.model_validate(payload).error
        except ValidationError:
            gateway = None
        if gateway is not None:
            other_code = other_code or (self._clean(gateway.code) if gateway.code else None)
            detail = gateway.message or gateway.type or ""
        for key in ("message", "error", "detail"):
            value = payload.get(key)
            if detail or not value:
                continue
            detail = value if isinstance(value, str) else json.dumps(value)
        request_id = payload.get("request_id")
        if isinstance(request_id, str) and request_id and request_id not in detail:
            detail = f"{detail} (request id: {request_id})".strip()
        return kling_code, other_code, self._clean(detail)

    def _clean(self, text: str) -> str:
        """Provider text fit for a message: secrets it may echo (the key, signed URLs, tokens) masked, and bounded."""
        return mask_secrets(text, known=(self._api_key,))


# -------------------------------------------------------------------- mapping helpers


def task_to_job(task: CometTask) -> ProviderJob | None:
    """The normalised view of a task; None when its status is not one Kling documents."""
    job = _task_to_job(task)
    external = (task.task_info or {}).get("external_task_id")
    return job.model_copy(update={"external_id": str(external)}) if job is not None and external else job


def _task_to_job(task: CometTask) -> ProviderJob | None:
    status = _STATUSES.get(task.task_status.strip().lower())
    if status is None:
        return None
    if status is ProviderJobStatus.SUCCEEDED:
        videos = task.videos
        if not videos:
            return ProviderJob(
                provider_task_id=task.task_id,
                status=ProviderJobStatus.FAILED,
                error_message="CometAPI reported the task succeeded but gave no video URL",
            )
        logger.debug("CometAPI task %s succeeded: %s s of video", task.task_id, videos[0].duration)
        return ProviderJob(provider_task_id=task.task_id, status=status, output_url=videos[0].url)
    if status is ProviderJobStatus.FAILED:
        return ProviderJob(
            provider_task_id=task.task_id,
            status=status,
            error_code=None if task.code in (None, "", 0) else str(task.code),
            error_message=mask_secrets(task.task_status_msg or "")
            or "CometAPI reported the task failed without a message",
        )
    return ProviderJob(provider_task_id=task.task_id, status=status)


def _parse_task(data: object, error: type[Exception], what: str) -> ProviderJob:
    """A task object (an answer's data, or a callback body) as a ProviderJob; `error` otherwise."""
    if not isinstance(data, dict):
        raise error(f"{what} has no task object")
    try:
        task = CometTask.model_validate(data)
    except ValidationError as exc:
        raise error(f"{what} is not a task: {summarise(exc)}") from exc
    job = task_to_job(task)
    if job is None:
        status = mask_secrets(task.task_status, limit=80)
        raise error(f"{what}: task {mask_secrets(task.task_id, limit=80)} has an unknown status {status!r}")
    return job


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _numeric_code(value: object) -> int | None:
    """A Kling ``code`` given as an integer or a string of digits; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


@dataclass(frozen=True)
class _ErrorAnswer:
    """What an error answer said, and the one error it means: by its Kling code first, else by its HTTP status."""

    operation: str
    status: int
    success: bool
    kling_code: int | None
    detail: str
    code: str
    message: str
    retry_after: float | None

    def error(self) -> ProviderError:
        return self._by_kling_code() or self._by_status()

    def _by_kling_code(self) -> ProviderError | None:
        kling_code = self.kling_code
        if kling_code in KLING_CONFIG_CODES:
            return ProviderConfigError(self.message, code=self.code)
        if kling_code == KLING_CONTENT_SAFETY:
            return ProviderInputError(self.message, code=self.code)
        if kling_code in KLING_LIMIT_CODES:
            return self._transient(rate_limit=True)  # a rate limit by its code, even over HTTP 200
        if kling_code in KLING_SERVER_CODES:
            return self._maybe_taken("the task may exist") if self.operation == "submit" else self._transient()
        if self.operation == "submit" and "external_task_id" in self.detail and "exist" in self.detail:
            # Our task id is already known there: an earlier attempt was taken. Wait for its callback.
            return self._maybe_taken("an earlier submission of this task exists")
        if kling_code is not None and 1000 <= kling_code <= 1999:
            return ProviderInputError(self.message, code=self.code)
        return None

    def _by_status(self) -> ProviderError:
        status = self.status
        if self.success:
            return ProviderError(self.message, code=self.code)
        if status in (401, 403):
            return ProviderConfigError(self.message, code=self.code)
        if self.operation == "submit" and 500 <= status <= 599 and status not in SUBMIT_NOT_TAKEN_HTTP:
            # A 500/502/504 may come after the task was created: never resend it blindly.
            return self._maybe_taken("the task may exist")
        if status == 429 or 500 <= status <= 599:
            return self._transient()
        if 400 <= status <= 499:
            return ProviderInputError(self.message, code=self.code)
        return ProviderError(self.message, code=self.code)

    def _transient(self, *, rate_limit: bool = False) -> ProviderError:
        return TransientHttpError(
            self.message, code=self.code, status_code=self.status, retry_after=self.retry_after, rate_limit=rate_limit
        )

    def _maybe_taken(self, why: str) -> ProviderError:
        return ProviderOutcomeUnknownError(f"{self.message} ({why})", code=self.code)
