"""WaveSpeedAI's talking-avatar models as a `VideoProvider`.

Calls
-----
- submit: ``POST /api/v3/<model id>?webhook=<url>`` (e.g. ``kwaivgi/kling-v1-ai-avatar-standard``: the models are
  in the spec, ``providers/wavespeed/__init__.py``),
  JSON ``{"image": url, "audio": url, "prompt"?: str, **the model's fields}`` (InfiniteTalk's ``resolution`` and
  ``seed``...: `SubmissionRequest.options`).
- fetch: ``GET /api/v3/predictions/{id}/result``.
Both answer with an envelope ``{"code": 200, "message": ..., "data": {prediction}}``; callbacks carry the bare
prediction object.

Error mapping
-------------
=====================================================  ==============================================
What happened                                          Raised
=====================================================  ==============================================
HTTP 401 / 403                                         ProviderConfigError
HTTP 429, 5xx (for a submit: 429 and 503 only)         ProviderTransientError (TransientHttpError,
                                                       with the Retry-After hint)
HTTP 500, 502, 504... on a submit                      ProviderOutcomeUnknownError (may have been created)
any other HTTP 4xx                                     ProviderInputError
any other non-2xx status                               ProviderError
HTTP 2xx, envelope ``code`` 1000-1999                  ProviderInputError
HTTP 2xx, envelope ``code`` 5000-5999, 429, 500-599    ProviderTransientError (an HTTP-style code in the
                                                       envelope means what the HTTP status would)
  ... of those, on a submit, all but 429, 503, 5003    ProviderOutcomeUnknownError
HTTP 2xx, envelope ``code`` 401 / 403                  ProviderConfigError
HTTP 2xx, any other envelope ``code`` != 200           ProviderError
HTTP 2xx, body not JSON / not an envelope / no data /  fetch: ProviderError;
unknown prediction status                              submit: ProviderOutcomeUnknownError (the task
                                                       may exist)
ConnectError, ConnectTimeout, PoolTimeout, ProxyError  ProviderTransientError (request never sent)
UnsupportedProtocol (bad base URL)                     ProviderConfigError
ReadTimeout, WriteTimeout, ReadError, WriteError,      submit: ProviderOutcomeUnknownError
RemoteProtocolError, any other transport failure       fetch: ProviderTransientError
=====================================================  ==============================================

The error's ``code`` is the envelope/body ``code`` when there is one, else the HTTP status. Its message is read
from the body's ``message``, ``error`` or ``detail`` (or the raw text when the body is not JSON). Whatever WaveSpeed
wrote is masked (`mask_secrets`) before it is quoted: it may echo our presigned inputs, callback token or key.

Retries (see `http_retry`): only ProviderTransientError is retried, for fetch and submit alike, because each of
those answers proves the request was not taken. ProviderOutcomeUnknownError is never retried: a re-POSTed
submit could create a second, paid task.

Callbacks: ``webhook-signature: v3,<hex>`` where hex = HMAC-SHA256 over ``"{id}.{timestamp}." + raw body``, keyed
with the secret minus its ``whsec_`` prefix as literal bytes (not base64-decoded, unlike Standard Webhooks).
Several secrets may be configured at once for rotation. ``webhook-id`` names the delivery: its retries keep it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
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
    ProviderTransientError,
    WebhookAuthError,
    WebhookPayloadError,
)
from avatar_pipeline.domain.models import ProviderJob, ProviderJobStatus, SubmissionRequest
from avatar_pipeline.domain.redaction import mask_secrets
from avatar_pipeline.providers.spec import OptionValue
from avatar_pipeline.providers.wavespeed import DEFAULT_BASE_URL

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = httpx.Timeout(20.0, connect=5.0)

MODEL_PATH: Final = "/api/v3/{model_id}"
RESULT_PATH: Final = "/api/v3/predictions/{id}/result"

# Answers to a submit that prove the prediction was not created, so sending it again is safe: rate limited or
# unavailable. Any other server error on a submit leaves the outcome unknown.
SUBMIT_NOT_TAKEN_HTTP = frozenset({429, 503})
SUBMIT_NOT_TAKEN_CODES = frozenset({429, 503, 5003})

WEBHOOK_TOLERANCE_SECONDS: Final = 300
SIGNATURE_SCHEME: Final = "v3"
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a fixed prefix, not a secret

_STATUSES: Final[Mapping[str, ProviderJobStatus]] = {
    "created": ProviderJobStatus.QUEUED,
    "pending": ProviderJobStatus.QUEUED,
    "processing": ProviderJobStatus.PROCESSING,
    "completed": ProviderJobStatus.SUCCEEDED,
    "failed": ProviderJobStatus.FAILED,
}
_TIMESTAMP_RE: Final = re.compile(r"[0-9]{1,12}")


class WaveSpeedPrediction(BaseModel):
    """One prediction, as in the envelope's ``data`` and as the bare body of a callback."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    status: str
    outputs: list[str] | None = None
    error: str | None = None
    code: int | str | None = None


class WaveSpeedEnvelope(BaseModel):
    """The wrapper around submit and result answers; ``data`` is validated only once ``code`` is 200."""

    model_config = ConfigDict(extra="allow")

    code: int
    message: str | None = None
    data: Any = None


class WaveSpeedProvider(HttpProvider):
    """WaveSpeedAI's model API (every model at its own path, one result path) behind the `VideoProvider` protocol."""

    name = "wavespeed"
    display_name = "WaveSpeed"
    callback_auth: Literal["signature", "query"] = "signature"  # webhooks are HMAC-signed

    def __init__(
        self,
        api_key: str,
        webhook_secrets: Sequence[str],
        base_url: str = DEFAULT_BASE_URL,
        client: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if isinstance(webhook_secrets, str):
            raise TypeError("webhook_secrets must be a sequence of secrets, not one string")
        keys = [_signing_key(secret) for secret in webhook_secrets]
        if any(not key for key in keys):
            # An empty HMAC key is known to everyone: accepting it would let anyone forge callbacks.
            raise ValueError("a WaveSpeed webhook secret is empty")
        self._signing_keys: tuple[bytes, ...] = tuple(keys)
        # Masked out of anything WaveSpeed says that we quote, should it echo the key back.
        self._secrets: tuple[str, ...] = (api_key,)
        super().__init__(api_key, base_url, client, retry, DEFAULT_TIMEOUT)

    # ---------------------------------------------------------------- submit / fetch

    def _submit_once(self, request: SubmissionRequest) -> ProviderJob:
        inputs: dict[str, OptionValue] = {"image": request.image_url, "audio": request.audio_url}
        if request.prompt is not None:
            inputs["prompt"] = request.prompt
        if request.mask_url is not None:
            inputs["mask_image"] = request.mask_url
        body = with_model_fields(inputs, request, "WaveSpeed submit")
        url = self._base_url + MODEL_PATH.format(model_id=request.model_id)
        try:
            response = self._client.post(url, params={"webhook": request.webhook_url}, json=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise_transport_error(exc, "WaveSpeed", "submit", request_may_be_taken=True)
        return _job_from_response(response, "submit", unusable=ProviderOutcomeUnknownError, secrets=self._secrets)

    def _fetch_once(self, provider_task_id: str) -> ProviderJob:
        url = self._base_url + RESULT_PATH.format(id=quote(provider_task_id, safe=""))
        try:
            response = self._client.get(url, headers=self._headers)
        except httpx.HTTPError as exc:
            raise_transport_error(exc, "WaveSpeed", "fetch", request_may_be_taken=False)
        return _job_from_response(response, "fetch", unusable=ProviderError, secrets=self._secrets)

    # ---------------------------------------------------------------- callbacks

    def parse_callback(self, headers: Mapping[str, str], body: bytes, now: datetime) -> ProviderJob:
        """Authenticate a callback, then parse its body (a bare prediction object)."""
        webhook_id = _header(headers, "webhook-id")
        timestamp = _header(headers, "webhook-timestamp")
        signature = _header(headers, "webhook-signature")
        if not (webhook_id and timestamp and signature):
            raise WebhookAuthError("missing webhook-id, webhook-timestamp or webhook-signature header")
        if not _TIMESTAMP_RE.fullmatch(timestamp):
            raise WebhookAuthError("webhook-timestamp is not an integer")
        now_ts = (now if now.tzinfo is not None else now.replace(tzinfo=UTC)).timestamp()
        if abs(now_ts - int(timestamp)) > WEBHOOK_TOLERANCE_SECONDS:
            raise WebhookAuthError("webhook-timestamp is outside the accepted window")
        if not self._signing_keys:
            raise WebhookAuthError("no webhook secret is configured")
        signed = f"{webhook_id}.{timestamp}.".encode() + body
        expected = [hmac.new(key, signed, hashlib.sha256).hexdigest().encode("ascii") for key in self._signing_keys]
        offered = [
            # A repeated header may arrive comma-joined ("v3,a, v3,b"): drop the stray separator.
            value.strip().strip(",").lower().encode("utf-8")
            for scheme, _, value in (entry.partition(",") for entry in signature.split())
            if scheme == SIGNATURE_SCHEME
        ]
        # Check every pair rather than stopping early, so timing tells nothing about which entry matched.
        matched = False
        for candidate in offered:
            for digest in expected:
                matched |= hmac.compare_digest(candidate, digest)
        if not matched:
            raise WebhookAuthError("webhook signature does not match")

        try:
            payload = json.loads(body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise WebhookPayloadError("callback body is not valid JSON") from exc
        return _parse_prediction(payload, WebhookPayloadError, "callback body")

    def delivery_id(self, headers: Mapping[str, str]) -> str | None:
        """The ``webhook-id`` header: one per webhook, kept on its retries, and covered by the signature."""
        return _header(headers, "webhook-id") or None

    # WaveSpeed keeps no id of ours: a prediction whose submit answer was lost is only known from its webhook.
    finds_by_task = False

    def find_by_task(self, task_id: str) -> ProviderJob | None:
        return None


# -------------------------------------------------------------------- mapping helpers


def prediction_to_job(prediction: WaveSpeedPrediction) -> ProviderJob | None:
    """The normalised view of a prediction; None when its status is not one WaveSpeed documents."""
    status = _STATUSES.get(prediction.status.strip().lower())
    if status is None:
        return None
    if status is ProviderJobStatus.SUCCEEDED:
        outputs = [url for url in prediction.outputs or [] if url]
        if not outputs:
            return ProviderJob(
                provider_task_id=prediction.id,
                status=ProviderJobStatus.FAILED,
                error_message="WaveSpeed reported the prediction completed but gave no output URL",
            )
        return ProviderJob(provider_task_id=prediction.id, status=status, output_url=outputs[0])
    if status is ProviderJobStatus.FAILED:
        return ProviderJob(
            provider_task_id=prediction.id,
            status=status,
            error_code=None if prediction.code is None else str(prediction.code),
            error_message=mask_secrets(prediction.error or "")
            or "WaveSpeed reported the prediction failed without a message",
        )
    return ProviderJob(provider_task_id=prediction.id, status=status)


def _header(headers: Mapping[str, str], name: str) -> str:
    """A header's value (stripped) whatever the case of its name; empty when it is absent."""
    return next((value.strip() for key, value in headers.items() if key.lower() == name), "")


def _signing_key(secret: str) -> bytes:
    return secret.removeprefix(SECRET_PREFIX).encode("utf-8")


def _job_from_response(
    response: httpx.Response, operation: str, *, unusable: type[ProviderError], secrets: Sequence[str]
) -> ProviderJob:
    """Turn an HTTP answer into a job, or raise the mapped error. `unusable` is raised for a garbled 2xx; `secrets`
    are masked out of whatever of the answer the error quotes."""
    if not response.is_success:
        _raise_http_error(response, operation, secrets)
    try:
        payload = response.json()
    except ValueError as exc:
        raise unusable(f"WaveSpeed {operation}: HTTP {response.status_code} body is not JSON") from exc
    try:
        envelope = WaveSpeedEnvelope.model_validate(payload)
    except ValidationError as exc:
        raise unusable(f"WaveSpeed {operation}: unexpected answer: {summarise(exc)}") from exc
    if envelope.code != 200:
        _raise_envelope_error(envelope, operation, secrets)
    return _parse_prediction(envelope.data, unusable, f"WaveSpeed {operation} answer")


def _parse_prediction(data: object, error: type[Exception], what: str) -> ProviderJob:
    """A prediction object (enveloped answer's data, or a bare callback body) as a ProviderJob; `error` otherwise."""
    if not isinstance(data, dict):
        raise error(f"{what} has no prediction object")
    try:
        prediction = WaveSpeedPrediction.model_validate(data)
    except ValidationError as exc:
        raise error(f"{what} is not a prediction: {summarise(exc)}") from exc
    job = prediction_to_job(prediction)
    if job is None:
        status = mask_secrets(prediction.status, limit=80)
        raise error(f"{what}: prediction {mask_secrets(prediction.id, limit=80)} has an unknown status {status!r}")
    return job


def _raise_http_error(response: httpx.Response, operation: str, secrets: Sequence[str]) -> NoReturn:
    status = response.status_code
    body_code, detail = _error_details(response, secrets)
    code = body_code or str(status)
    message = f"WaveSpeed {operation}: HTTP {status}" + (f": {detail}" if detail else "")
    if status in (401, 403):
        raise ProviderConfigError(message, code=code)
    if operation == "submit" and 500 <= status <= 599 and status not in SUBMIT_NOT_TAKEN_HTTP:
        # A 500/502/504 may come after the prediction was created: never resend it blindly.
        raise ProviderOutcomeUnknownError(message, code=code)
    if status == 429 or 500 <= status <= 599:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise TransientHttpError(message, code=code, status_code=status, retry_after=retry_after)
    if 400 <= status <= 499:
        raise ProviderInputError(message, code=code)
    raise ProviderError(message, code=code)


def _raise_envelope_error(envelope: WaveSpeedEnvelope, operation: str, secrets: Sequence[str]) -> NoReturn:
    code = envelope.code
    data_error = envelope.data.get("error") if isinstance(envelope.data, dict) else None
    detail = envelope.message or data_error or "no message"
    message = f"WaveSpeed {operation}: error code {code}: {mask_secrets(str(detail), known=secrets)}"
    if 1000 <= code <= 1999:
        raise ProviderInputError(message, code=str(code))
    transient = 5000 <= code <= 5999 or code == 429 or 500 <= code <= 599
    if transient and operation == "submit" and code not in SUBMIT_NOT_TAKEN_CODES:
        raise ProviderOutcomeUnknownError(message, code=str(code))
    if transient:
        raise ProviderTransientError(message, code=str(code))
    if code in (401, 403):
        raise ProviderConfigError(message, code=str(code))
    raise ProviderError(message, code=str(code))


def _error_details(response: httpx.Response, secrets: Sequence[str]) -> tuple[str | None, str]:
    """The body's own error code (if any) and message, from JSON `message`/`error`/`detail` or raw text, masked."""
    try:
        payload = response.json()
    except ValueError:
        return None, mask_secrets(response.text.strip(), known=secrets)
    if not isinstance(payload, dict):
        return None, mask_secrets(json.dumps(payload), known=secrets)
    raw_code = payload.get("code")
    code = str(raw_code) if isinstance(raw_code, int | str) and not isinstance(raw_code, bool) else None
    code = mask_secrets(code, known=secrets, limit=80) if code is not None else None
    for key in ("message", "error", "detail"):
        value = payload.get(key)
        if value:
            return code, mask_secrets(value if isinstance(value, str) else json.dumps(value), known=secrets)
    return code, ""
