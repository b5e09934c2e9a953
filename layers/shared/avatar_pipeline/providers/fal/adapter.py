"""fal.ai's queue API (talking-avatar models such as ``fal-ai/kling-video/ai-avatar/v2/standard``) as a
`VideoProvider`.

Calls
-----
- submit: ``POST {queue}/{model id}?fal_webhook=<url>`` with ``Authorization: Key <key>`` and the model input as the
  JSON body: ``{"image_url", "audio_url", "prompt", **request.options}``. The prompt is always sent (infinitalk
  requires one; Kling's defaults to "."), falling back to a neutral default. The answer's ``request_id`` is the
  provider task id.
- fetch: ``GET {queue}/{owner}/{app}/requests/{id}/status``, then, once ``COMPLETED`` without an ``error``,
  ``GET {queue}/{owner}/{app}/requests/{id}`` (the model output; its ``video.url`` is the video).
- callbacks: fal POSTs ``{"request_id", "gateway_request_id", "status": "OK"|"ERROR", "payload", "error"?,
  "payload_error"?}``, signed with Ed25519 (see `providers.fal.webhooks`).

Which app a request belongs to
------------------------------
Status and result URLs name only the model's owner and app (``fal-ai/kling-video``), not its endpoint path
(``/ai-avatar/v2/standard``), and `fetch` is given only the provider task id. That id stays fal's bare
``request_id``: a callback carries nothing else (its body and signed headers name the request, never the model),
and the domain records a callback only when its job id is the one submit returned, so an id carrying the app
(``owner/app/request_id``) could not be matched by callbacks. The adapter is given instead the model ids it may
submit to (its spec's) and derives each one's app as fal's own client does (``AppId.from_endpoint_id``: owner and
alias, after a ``workflows``/``comfy`` namespace). Submitting to a model outside that list is refused (its request
could never be fetched). With one app, fetch asks it; with several, it asks each in turn, a 404 meaning "not this
app" [inferred: fal answers 404 for a request id it does not know under an app], and reports "no such request"
only when every app said so.

Statuses
--------
``IN_QUEUE`` → QUEUED, ``IN_PROGRESS`` → PROCESSING, ``COMPLETED`` with ``error`` → FAILED (``error_type`` as the
code, ``error`` as the message), ``COMPLETED`` → the result: its ``video.url`` → SUCCEEDED (none → FAILED).
Callbacks: ``OK`` → SUCCEEDED with ``payload.video.url``, ``ERROR`` → FAILED with ``error`` and ``payload.detail``;
``OK`` whose payload fal could not serialise (``payload`` null, ``payload_error`` set) → PROCESSING, so the poller
reads the result from the queue rather than the task failing for a video that exists.

Error mapping
-------------
=====================================================  ==============================================
What happened                                          Raised
=====================================================  ==============================================
HTTP 401 / 403                                         ProviderConfigError
HTTP 404 on a submit (no such model)                   ProviderConfigError
HTTP 404 on the status, under every app                ProviderInputError (no such request)
HTTP 404 on the result after a COMPLETED status        ProviderError, code ``result_expired``: fal keeps
                                                       a result 1 h (6 min when >= 10 KB); the video
                                                       may still come by the webhook's retries
HTTP 429                                               ProviderTransientError (TransientHttpError, with
                                                       Retry-After; a submit's is not retried in-call)
HTTP 503 on a submit without ``X-Fal-Request-Id``      ProviderTransientError (refused before fal's
                                                       queue gave the request an id: not taken)
any other 5xx on a submit                              ProviderOutcomeUnknownError (may be queued)
HTTP 5xx on a status or result                         ProviderTransientError
HTTP 422 (``detail`` list), other 4xx                  submit, status: ProviderInputError;
                                                       result: a FAILED job (the model refused it)
any other non-2xx status                               ProviderError
HTTP 2xx, body not JSON / no request id / unknown      submit: ProviderOutcomeUnknownError (the request
status                                                 may be queued); fetch: ProviderError
ConnectError, ConnectTimeout, PoolTimeout, ProxyError  ProviderTransientError (request never sent)
UnsupportedProtocol (bad base URL)                     ProviderConfigError
ReadTimeout, WriteTimeout, ReadError, WriteError,      submit: ProviderOutcomeUnknownError
RemoteProtocolError, any other transport failure       fetch: ProviderTransientError
=====================================================  ==============================================

The error's ``code`` is, in order: the first ``detail`` entry's ``type`` (e.g. ``content_policy_violation``), the
body's ``error_type`` or the ``X-Fal-Error-Type`` header (infrastructure errors: ``runner_scheduling_failure``...),
else the HTTP status. Its message is the body's ``detail`` (each entry as ``loc: msg``), ``error`` or ``message``, or
the raw text. Whatever fal wrote is masked (`mask_secrets`, and the key) before it is quoted: it may echo our
presigned inputs or the callback URL's token.

Retries (see `http_retry`): only ProviderTransientError is retried, for fetch and submit alike, because each of those
answers proves the request was not taken. ProviderOutcomeUnknownError is never retried: a re-POSTed submit could
queue a second, paid request (fal has no idempotency key).

Deliveries: fal retries a failed webhook delivery 10 times over 2 h. Each retry repeats the request's one completion
notice, so ``X-Fal-Webhook-Request-Id`` (signed) names the delivery; the timestamp and signature change per try.
``gateway_request_id`` is no better: it lies in the body (``delivery_id`` sees headers only) and names fal's last
internal attempt at running the request, not the notice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal, NoReturn
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
from avatar_pipeline.providers.fal import DEFAULT_BASE_URL, DEFAULT_JWKS_URL, DEFAULT_PROMPT
from avatar_pipeline.providers.fal.webhooks import (
    MAX_JWKS_BYTES,
    REQUEST_ID_HEADER,
    SHARED_JWKS_CACHE,
    JwksCache,
    JwksUnavailableError,
    header,
    read_signed_headers,
)
from avatar_pipeline.providers.spec import OptionValue

logger = logging.getLogger(__name__)

# A submit only queues the request (fal fetches the media later): it answers fast.
DEFAULT_TIMEOUT: Final = httpx.Timeout(20.0, connect=5.0)
# The JWKS is fetched while a webhook waits: short.
JWKS_TIMEOUT: Final = httpx.Timeout(5.0, connect=3.0)

SUBMIT_PATH: Final = "/{model_id}"
STATUS_PATH: Final = "/{app}/requests/{request_id}/status"
RESULT_PATH: Final = "/{app}/requests/{request_id}"
# fal_client's AppId.from_endpoint_id: these first segments are a namespace before owner/alias.
APP_NAMESPACES: Final = frozenset({"workflows", "comfy"})
FAL_REQUEST_ID_HEADER: Final = "x-fal-request-id"
FAL_ERROR_TYPE_HEADER: Final = "x-fal-error-type"

_STATUSES: Final[Mapping[str, ProviderJobStatus]] = {
    "IN_QUEUE": ProviderJobStatus.QUEUED,
    "IN_PROGRESS": ProviderJobStatus.PROCESSING,
}


def app_of(model_id: str) -> str:
    """The ``owner/app`` (after its namespace, if any) of a model (endpoint) id, as fal's client splits it:
    ``fal-ai/kling-video/ai-avatar/v2/standard`` → ``fal-ai/kling-video``. ValueError for an id without both."""
    parts = model_id.strip("/").split("/")
    keep = 3 if parts[0] in APP_NAMESPACES else 2
    if len(parts) < keep or not all(parts[:keep]):
        raise ValueError(f"{model_id!r} is not a fal model id (owner/app[/path])")
    return "/".join(parts[:keep])


class FalSubmitAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")

    request_id: str = Field(min_length=1)
    status_url: str | None = None


class FalStatus(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    error: str | None = None
    error_type: str | None = None


class FalWebhook(BaseModel):
    """A webhook body: the request's end, with the model output (``payload``) or its error."""

    model_config = ConfigDict(extra="allow")

    request_id: str = Field(min_length=1)
    gateway_request_id: str | None = None
    status: str
    payload: Any = None
    error: str | None = None
    payload_error: str | None = None


class FalProvider(HttpProvider):
    """fal.ai's queue API behind the `VideoProvider` protocol."""

    name = "fal"
    display_name = "fal.ai"
    callback_auth: Literal["signature", "query"] = "signature"  # webhooks are Ed25519-signed

    def __init__(
        self,
        api_key: str,
        model_ids: Sequence[str] = (),
        *,
        base_url: str = DEFAULT_BASE_URL,
        jwks_url: str = DEFAULT_JWKS_URL,
        user_id: str = "",
        default_prompt: str = DEFAULT_PROMPT,
        client: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
        jwks_cache: JwksCache | None = None,
    ) -> None:
        if isinstance(model_ids, str):
            raise TypeError("model_ids must be a sequence of model ids, not one string")
        if not default_prompt.strip():
            raise ValueError("default_prompt is empty (some fal models refuse a request without a prompt)")
        if not jwks_url.startswith("https://"):
            raise ValueError("jwks_url must be an https URL")
        # The models it may submit to, and every app they live in, in the spec's order (the order fetch asks them).
        self._model_ids = frozenset(model_ids)
        self._apps: tuple[str, ...] = tuple(dict.fromkeys(app_of(model_id) for model_id in model_ids))
        self._jwks_url = jwks_url
        self._user_id = user_id.strip()
        self._default_prompt = default_prompt
        self._jwks = jwks_cache if jwks_cache is not None else SHARED_JWKS_CACHE
        # Masked out of anything fal says that we quote, should it echo the key back.
        self._secrets: tuple[str, ...] = (api_key,)
        super().__init__(api_key, base_url, client, retry, DEFAULT_TIMEOUT)
        self._headers = {"Authorization": f"Key {api_key}", "Accept": "application/json"}

    # ---------------------------------------------------------------- submit

    def _request_body(self, request: SubmissionRequest) -> dict[str, str | int | bool]:
        """The model input: our media, the prompt (ours, or the default) and the model's options."""
        prompt = request.prompt if request.prompt and request.prompt.strip() else self._default_prompt
        inputs: dict[str, OptionValue] = {
            "image_url": request.image_url,
            "audio_url": request.audio_url,
            "prompt": prompt,
        }
        return with_model_fields(inputs, request, "fal submit")

    def _submit_once(self, request: SubmissionRequest) -> ProviderJob:
        app = app_of(request.model_id) if request.model_id in self._model_ids else None
        if app is None or app not in self._apps:
            raise ProviderConfigError(
                f"fal submit: model {request.model_id!r} is not among this adapter's models, so its request could"
                " not be fetched"
            )
        body = self._request_body(request)
        url = self._base_url + SUBMIT_PATH.format(model_id=request.model_id.strip("/"))
        try:
            response = self._client.post(
                url, params={"fal_webhook": request.webhook_url}, json=body, headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise_transport_error(exc, "fal", "submit", request_may_be_taken=True)
        if not response.is_success:
            self._raise_error(response, "submit")
        try:
            answer = FalSubmitAnswer.model_validate(response.json())
        except ValueError as exc:  # JSONDecodeError and ValidationError
            raise ProviderOutcomeUnknownError(
                f"fal submit: HTTP {response.status_code}: {_unreadable(exc)} (the request may be queued)"
            ) from exc
        self._check_status_url(answer, app)
        return ProviderJob(provider_task_id=answer.request_id, status=ProviderJobStatus.QUEUED)

    def _check_status_url(self, answer: FalSubmitAnswer, app: str) -> None:
        """Warn when fal's own status URL is not the one fetch will build (the app derivation would be wrong)."""
        expected = self._base_url + STATUS_PATH.format(app=app, request_id=quote(answer.request_id, safe=""))
        if answer.status_url and answer.status_url.split("?", 1)[0] != expected:
            logger.warning(
                "fal's status URL differs from the one fetch builds",
                extra={"status_url": mask_secrets(answer.status_url), "expected": expected},
            )

    # ---------------------------------------------------------------- fetch

    def _fetch_once(self, provider_task_id: str) -> ProviderJob:
        app, status = self._status(provider_task_id)
        if status.status == "COMPLETED":
            if status.error:
                return _failed(provider_task_id, status.error_type, status.error)
            return self._result(app, provider_task_id)
        job_status = _STATUSES.get(status.status)
        if job_status is None:
            raise ProviderError(f"fal status: request {provider_task_id} has an unknown status {_quote(status.status)}")
        return ProviderJob(provider_task_id=provider_task_id, status=job_status)

    def _status(self, request_id: str) -> tuple[str, FalStatus]:
        """The request's status and the app that knows it (each app asked in turn: see the module docstring)."""
        if not self._apps:
            raise ProviderConfigError("fal fetch: this adapter was given no model, so it knows no app to ask")
        for app in self._apps:
            response = self._get(STATUS_PATH.format(app=app, request_id=quote(request_id, safe="")), "status")
            if response.status_code == 404:
                continue
            if not response.is_success:
                self._raise_error(response, "status")
            try:
                return app, FalStatus.model_validate(response.json())
            except ValueError as exc:
                raise ProviderError(f"fal status: HTTP {response.status_code}: {_unreadable(exc)}") from exc
        raise ProviderInputError(
            f"fal status: no request {_quote(request_id)} under {', '.join(self._apps)}", code="404"
        )

    def _result(self, app: str, request_id: str) -> ProviderJob:
        response = self._get(RESULT_PATH.format(app=app, request_id=quote(request_id, safe="")), "result")
        if response.status_code == 404:
            raise ProviderError(
                f"fal result: request {_quote(request_id)} completed but its result is no longer kept (fal keeps"
                " it 1 h, 6 min when 10 KB or more); its webhook may still deliver the video",
                code="result_expired",
            )
        if _is_model_refusal(response):
            code, detail = self._error_details(response)
            return _failed(request_id, code, detail or f"HTTP {response.status_code}")
        if not response.is_success:
            self._raise_error(response, "result")
        try:
            output = response.json()
        except ValueError as exc:
            raise ProviderError(f"fal result: HTTP {response.status_code}: body is not JSON") from exc
        return _finished(request_id, output)

    def _get(self, path: str, operation: str) -> httpx.Response:
        try:
            return self._client.get(self._base_url + path, headers=self._headers)
        except httpx.HTTPError as exc:
            raise_transport_error(exc, "fal", operation, request_may_be_taken=False)

    # ---------------------------------------------------------------- errors

    def _raise_error(self, response: httpx.Response, operation: str) -> NoReturn:
        """Raise the error an answer means (see the module docstring's table)."""
        status = response.status_code
        code, detail = self._error_details(response)
        message = f"fal {operation}: HTTP {status}" + (f": {detail}" if detail else "")
        if status in (401, 403) or (operation == "submit" and status == 404):
            raise ProviderConfigError(message, code=code)
        if operation == "submit" and 500 <= status <= 599 and not _refused_before_queue(response):
            # A 500/502/504 may come after fal queued the request: never resend it blindly.
            raise ProviderOutcomeUnknownError(f"{message} (the request may be queued)", code=code)
        if status == 429 or 500 <= status <= 599:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise TransientHttpError(message, code=code, status_code=status, retry_after=retry_after)
        if 400 <= status <= 499:
            raise ProviderInputError(message, code=code)
        raise ProviderError(message, code=code)

    def _error_details(self, response: httpx.Response) -> tuple[str, str]:
        """The error's code and its message, masked (see the module docstring)."""
        header_type = response.headers.get(FAL_ERROR_TYPE_HEADER, "").strip()
        try:
            payload = response.json()
        except ValueError:
            return self._clean(header_type) or str(response.status_code), self._clean(response.text.strip())
        kind, text = describe_error(payload)
        return self._clean(kind or header_type) or str(response.status_code), self._clean(text)

    def _clean(self, text: str) -> str:
        return mask_secrets(text, known=self._secrets)

    # ---------------------------------------------------------------- callbacks

    def parse_callback(self, headers: Mapping[str, str], body: bytes, now: datetime) -> ProviderJob:
        """Authenticate a callback (its Ed25519 signature, against fal's published keys), then parse its body."""
        signed = read_signed_headers(headers, now, self._user_id)
        self._jwks.verify(self._jwks_url, self._fetch_jwks, signed.signature, signed.message(body))
        try:
            webhook = FalWebhook.model_validate(json.loads(body))
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, ValidationError
            raise WebhookPayloadError(f"fal callback body is not a webhook: {_unreadable(exc)}") from exc
        return self._webhook_job(webhook)

    def _webhook_job(self, webhook: FalWebhook) -> ProviderJob:
        if webhook.status == "ERROR":
            kind, detail = describe_error(webhook.payload)
            message = "; ".join(part for part in (webhook.error or "", detail) if part)
            return _failed(webhook.request_id, kind, message)
        if webhook.status != "OK":
            raise WebhookPayloadError(f"fal callback: request has an unknown status {_quote(webhook.status)}")
        if webhook.payload is None and webhook.payload_error:
            logger.warning(
                "fal's callback has no payload; the poller reads the result from the queue",
                extra={"payload_error": self._clean(webhook.payload_error)},
            )
            return ProviderJob(provider_task_id=webhook.request_id, status=ProviderJobStatus.PROCESSING)
        return _finished(webhook.request_id, webhook.payload)

    def _fetch_jwks(self, url: str) -> bytes:
        """fal's JWKS document, through this adapter's client (without our key: the keys are public)."""
        try:
            response = self._client.get(url, headers={"Accept": "application/json"}, timeout=JWKS_TIMEOUT)
        except httpx.HTTPError as exc:
            raise JwksUnavailableError(f"fetching {url} failed ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise JwksUnavailableError(f"fetching {url} answered HTTP {response.status_code}")
        if len(response.content) > MAX_JWKS_BYTES:
            raise JwksUnavailableError(f"{url} answered more than {MAX_JWKS_BYTES} bytes")
        return response.content

    def delivery_id(self, headers: Mapping[str, str]) -> str | None:
        """``X-Fal-Webhook-Request-Id``: the request's one completion notice, kept on its retries, and signed."""
        return header(headers, REQUEST_ID_HEADER) or None

    # fal cannot look a request up by an id of ours: a submit whose answer was lost is only known from its webhook.
    finds_by_task = False

    def find_by_task(self, task_id: str) -> ProviderJob | None:
        return None


# -------------------------------------------------------------------- mapping helpers


def describe_error(payload: object) -> tuple[str, str]:
    """An error body's kind and text, unmasked: a 422's ``{"detail": [{"loc", "msg", "type"}]}`` (kind: the first
    entry's type), an infrastructure error's ``{"detail": "...", "error_type": "..."}``, or ``error``/``message``."""
    if not isinstance(payload, dict):
        return "", ("" if payload is None else json.dumps(payload)[:1000])
    detail = payload.get("detail")
    kind = payload.get("error_type") if isinstance(payload.get("error_type"), str) else ""
    if isinstance(detail, list):
        entries = [entry for entry in detail if isinstance(entry, dict)]
        first_type = next((entry["type"] for entry in entries if isinstance(entry.get("type"), str)), "")
        return first_type or str(kind), "; ".join(_describe_entry(entry) for entry in entries)
    for text in (detail, payload.get("error"), payload.get("message")):
        if isinstance(text, str) and text:
            return str(kind), text
    return str(kind), ""


def _describe_entry(entry: Mapping[str, Any]) -> str:
    """One validation entry as ``loc: msg`` (never its ``input``, which may echo our signed URLs)."""
    loc = entry.get("loc")
    where = ".".join(str(part) for part in loc) if isinstance(loc, list) else ""
    msg = str(entry.get("msg") or entry.get("type") or "invalid")
    return f"{where}: {msg}" if where else msg


def _video_url(output: object) -> str | None:
    video = output.get("video") if isinstance(output, dict) else None
    url = video.get("url") if isinstance(video, dict) else None
    return url if isinstance(url, str) and url else None


def _finished(request_id: str, output: object) -> ProviderJob:
    """A completed request's job: its video, or FAILED when the output has none."""
    url = _video_url(output)
    if url is None:
        return ProviderJob(
            provider_task_id=request_id,
            status=ProviderJobStatus.FAILED,
            error_message="fal reported the request completed but gave no video URL",
        )
    return ProviderJob(provider_task_id=request_id, status=ProviderJobStatus.SUCCEEDED, output_url=url)


def _failed(request_id: str, code: str | None, message: str) -> ProviderJob:
    return ProviderJob(
        provider_task_id=request_id,
        status=ProviderJobStatus.FAILED,
        error_code=mask_secrets(code, limit=80) if code else None,
        error_message=mask_secrets(message) or "fal reported the request failed without a message",
    )


def _is_model_refusal(response: httpx.Response) -> bool:
    """A completed request's result that is the model's own refusal (422 and other 4xx but auth and rate limits)."""
    status = response.status_code
    return 400 <= status <= 499 and status not in (401, 403, 404, 429)


def _refused_before_queue(response: httpx.Response) -> bool:
    """A submit answer proving fal's queue never took the request: a 503 before fal gave it a request id."""
    return response.status_code == 503 and FAL_REQUEST_ID_HEADER not in response.headers


def _quote(text: str) -> str:
    return repr(mask_secrets(text, limit=80))


def _unreadable(exc: ValueError) -> str:
    return summarise(exc) if isinstance(exc, ValidationError) else "body is not JSON"
