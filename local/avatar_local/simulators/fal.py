"""A local stand-in for fal.ai's queue API with its avatar models: same paths, statuses, errors and signed webhooks.

Start it, point a client's queue host at `FalSimulator.base_url`, and it turns (``image_url``, ``audio_url``) into a
real MP4 of the image with the audio track, as long as the audio. No account, no network beyond the input and
webhook URLs. With ``tls=True`` it serves HTTPS with a certificate of its own (`certificate_pem` is the CA to trust),
so the official ``fal-client``, which only speaks ``https://{FAL_QUEUE_RUN_HOST}/``, can be pointed at it.

API (as fal documents it; **[inferred]** marks what the simulator had to choose)
--------------------------------------------------------------------------------
Every call but the JWKS needs ``Authorization: Key <key>``: a missing key is HTTP 401, and when ``api_key`` is
configured any other key is 401 too (otherwise any non-empty key is accepted); the body is ``{"detail": ...}``.

``POST /{model_id}[?fal_webhook=<url>]``
    The body is the model's input. The model ids are `MODELS`' (an unknown one is 404). The request is queued and
    answered HTTP 200 ``{"status": "IN_QUEUE", "request_id", "response_url", "status_url", "cancel_url",
    "queue_position"}`` (plus ``gateway_request_id`` when a webhook is given), whatever the input: as on fal, the
    model validates it when the request runs (see Processing). The three URLs use only the owner/app of the model id:
    ``fal-ai/kling-video/ai-avatar/v2/standard`` → ``{base}/fal-ai/kling-video/requests/{id}``.
``GET /{owner}/{app}/requests/{id}/status[?logs=1]``
    HTTP 202 ``{"status": "IN_QUEUE", "queue_position": n, ...}`` (0 is next) or ``{"status": "IN_PROGRESS", ...}``;
    HTTP 200 ``{"status": "COMPLETED", "metrics": {"inference_time": s}, ...}``, with ``error`` and (for request
    errors) ``error_type`` when the request failed **[inferred: error is "Invalid status code: <n>", the webhook's
    wording]**. ``logs`` is null, or the request's log lines with ``logs=1`` (or ``true``, as fal-client sends it).
``GET /{owner}/{app}/requests/{id}``
    The model's output with HTTP 200, ``{"video": {"url", "content_type", "file_name", "file_size"}, "duration"}``
    (Kling, OmniHuman; seconds measured on the rendered file) or ``{"video": ..., "seed"}`` (InfiniTalk); for a
    failed request the model's error with its status code. Before completion: 400 ``{"detail": "Request is still
    in progress"}`` **[inferred]**. The result is kept ``RESULT_RETENTION_SECONDS`` (1 h), or
    ``LARGE_RESULT_RETENTION_SECONDS`` (6 min) when its JSON is at least ``LARGE_RESULT_BYTES`` (10 KB), in simulated
    time; after that it is 404 (the status stays COMPLETED, the video stays served: it is on the CDN).
``PUT /{owner}/{app}/requests/{id}/cancel``
    HTTP 202 ``{"status": "CANCELLATION_REQUESTED"}`` while queued (the request never runs; it ends COMPLETED with
    error_type ``client_cancelled``, its result 499, no webhook **[inferred]**) or running (the signal is ignored,
    as a model may); 400 ``{"status": "ALREADY_COMPLETED"}``; 404 ``{"status": "NOT_FOUND"}``.
``GET /.well-known/jwks.json`` (no auth: it stands in for ``https://rest.fal.ai/.well-known/jwks.json``)
    ``{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": <base64url, unpadded>, "kid"}]}``: every key kept.
``GET /outputs/{id}.mp4`` (no auth: it stands in for fal's CDN)
    The video, ``Content-Type: video/mp4`` with its ``Content-Length``.

A status, result or cancel of an unknown id, or of an id under another owner/app, is 404 ``{"detail": "Request not
found"}``.

Processing
----------
``IN_QUEUE`` → ``IN_PROGRESS`` → ``COMPLETED``. At most ``max_concurrent`` requests run (fal's concurrency limit: 2
for a new account); the rest wait IN_QUEUE, first come first served, their ``queue_position`` falling as those ahead
start: never refused. A running request first validates its input as the model's schema does: a missing required
field (``image_url``, ``audio_url``; InfiniTalk's ``prompt``), a value of the wrong type or outside its choices or
range ends it with HTTP 422 ``{"detail": [{"loc": ["body", field], "msg", "type"}]}`` in pydantic-v1 wording, as
fal's webhook example shows. It then downloads both inputs (http(s) or ``data:`` URIs; a failure is 422
``file_download_error`` on that field), renders the video with `render_avatar_video` (undecodable input: 422
``image_load_error`` / ``audio_load_error``), checks OmniHuman's audio limit (under 30 s at 1080p, 60 s at 720p:
422 ``audio_duration_too_long``) and lasts at least ``processing_seconds / time_factor``.

Webhooks
--------
When a request with ``fal_webhook`` completes: a POST of ``{"request_id", "gateway_request_id", "status": "OK",
"payload": <output>}`` or ``{..., "status": "ERROR", "error": "Invalid status code: <n>", "payload": <error body>}``
with headers ``X-Fal-Webhook-Request-Id``, ``X-Fal-Webhook-User-Id`` (``user_id``), ``X-Fal-Webhook-Timestamp``
(unix seconds, fresh per attempt) and ``X-Fal-Webhook-Signature``: the hex Ed25519 signature, by the current signing
key, of `webhook_message` (``request_id \\n user_id \\n timestamp \\n sha256(body).hexdigest()``, UTF-8). Receivers
verify it against the JWKS, trying each key. `rotate_signing_key` makes a new signing key (keeping or dropping the
old ones in the JWKS) and `drop_key` removes one. A delivery is retried on connection errors, 429 and 5xx:
``WEBHOOK_ATTEMPTS`` attempts (the first and fal's 10 retries) with backoff doubling from
``WEBHOOK_BACKOFF_SECONDS``, about 2 hours of simulated time in all.

Faults
------
A seeded `FalFaultPlan` (a plain `FaultPlan` is taken too), as the other simulators: ``latency_seconds``; 429/5xx
answers to submits (``submit_error_rate``) or to status/result GETs (``result_error_rate``); submits carried out but
never answered (``lost_answer_rate``); requests that fail (``fail_rate``) with the plan's ``fail_error`` (a request
error such as ``runner_server_error`` 500 or ``request_timeout`` 504, or a 422 ``content_policy_violation``; the
plain plan's WaveSpeed ``fail_code`` is not used); webhooks lost, duplicated or delayed; output downloads cut off
halfway (``truncated_download_rate``); the minimum ``processing_seconds``. fal's own: webhooks signed with a key
that is not in the JWKS (``foreign_key_signature_rate``), with a timestamp ``stale_timestamp_seconds`` in the past
(``stale_timestamp_rate``), or with ``payload: null`` and ``payload_error`` (``payload_error_rate``). Per-request
decisions are drawn when it is submitted, so a seed and a sequence of requests give the same outcomes.

Inspection (no auth)
--------------------
``GET /_sim/requests``, ``GET /_sim/jobs``, ``GET /_sim/webhooks`` (every delivery attempt and every webhook
deliberately lost), ``GET`` / ``POST /_sim/faults``, ``POST /_sim/reset``. The same from Python: `requests`,
`submissions`, `jobs`, `job`, `webhook_deliveries`, `peak_processing`, `set_faults`, `reset`, `wait_until_idle`,
`jwks`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import os
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import Field

from avatar_local.simulators.common import (
    OUTPUTS_PREFIX,
    WEBHOOK_TIMEOUT,
    Answer,
    Json,
    SimulatorCore,
    SimulatorHandler,
    authorization_token,
    download_input,
    iso_now,
    status_message,
    token_matches,
)
from avatar_local.simulators.faults import AnswerLost, FaultPlan, Rate
from avatar_local.simulators.media import MediaError, probe_media, render_avatar_video

logger = logging.getLogger("avatar_local.fal")

THREAD_PREFIX: Final = "fal-sim"
JWKS_PATH: Final = "/.well-known/jwks.json"
DEFAULT_USER_ID: Final = "local-simulator-user"
ERRORS_URL: Final = "https://docs.fal.ai/errors"

RESULT_RETENTION_SECONDS: Final = 3600.0
LARGE_RESULT_RETENTION_SECONDS: Final = 360.0
LARGE_RESULT_BYTES: Final = 10 * 1024

WEBHOOK_ATTEMPTS: Final = 11  # the first attempt and fal's 10 retries
WEBHOOK_BACKOFF_SECONDS: Final = 7.0  # simulated; doubles after each failed attempt: 7 x (2^10 - 1) s ≈ 2 h

# ------------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class ModelSpec:
    """What the simulator knows of a model's input schema and output."""

    endpoint_id: str
    required: tuple[str, ...] = ("image_url", "audio_url")
    strings: tuple[str, ...] = ("image_url", "audio_url", "prompt")
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ranges: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    integers: tuple[str, ...] = ()
    booleans: tuple[str, ...] = ()
    reports: Literal["duration", "seed"] = "duration"
    """The output's field besides ``video``: the video's ``duration`` in seconds, or the ``seed`` used."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # A model that makes as many frames as `num_frames` says, at this rate: the video stops there, voice or not.
    frames_per_second: int | None = None

    @property
    def app(self) -> str:
        """owner/app: the part of the id that status, result and cancel URLs use."""
        return "/".join(self.endpoint_id.split("/")[:2])

    def video_limit(self, arguments: Json) -> float | None:
        """Seconds of video the request asks for at most (`num_frames`), or None when the voice decides."""
        if self.frames_per_second is None:
            return None
        return int(arguments.get("num_frames", self.defaults["num_frames"])) / self.frames_per_second

    def audio_limit(self, arguments: Json) -> float | None:
        """Seconds of audio the model takes at most, or None for no limit the simulator enforces."""
        if self.endpoint_id == "fal-ai/bytedance/omnihuman/v1.5":
            return 30.0 if arguments.get("resolution", self.defaults.get("resolution")) == "1080p" else 60.0
        return None


MODELS: Final[dict[str, ModelSpec]] = {
    spec.endpoint_id: spec
    for spec in (
        ModelSpec("fal-ai/kling-video/ai-avatar/v2/standard", defaults={"prompt": "."}),
        ModelSpec("fal-ai/kling-video/ai-avatar/v2/pro", defaults={"prompt": "."}),
        ModelSpec(
            "fal-ai/bytedance/omnihuman/v1.5",
            choices={"resolution": ("720p", "1080p")},
            booleans=("turbo_mode",),
            defaults={"resolution": "1080p", "turbo_mode": False},
        ),
        ModelSpec(
            "fal-ai/infinitalk",
            required=("image_url", "audio_url", "prompt"),
            choices={"resolution": ("480p", "720p"), "acceleration": ("none", "regular", "high")},
            ranges={"num_frames": (41, 721)},
            integers=("num_frames", "seed"),
            reports="seed",
            defaults={"num_frames": 145, "resolution": "480p", "seed": 42, "acceleration": "regular"},
            # InfiniteTalk's reference code renders 25 frames a second (fal states no rate) [inferred].
            frames_per_second=25,
        ),
    )
}


def validation_errors(spec: ModelSpec, arguments: Any) -> list[Json]:
    """The model's 422 ``detail`` entries for `arguments` (pydantic-v1 wording, as fal's examples show); empty
    when they are valid."""
    if not isinstance(arguments, dict):
        return [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]
    errors: list[Json] = []
    for name in spec.required:
        if arguments.get(name) is None:
            errors.append({"loc": ["body", name], "msg": "field required", "type": "value_error.missing"})
    for name in spec.strings:
        value = arguments.get(name)
        if value is not None and not isinstance(value, str):
            errors.append({"loc": ["body", name], "msg": "str type expected", "type": "type_error.str"})
    for name in spec.booleans:
        value = arguments.get(name)
        if value is not None and not isinstance(value, bool):
            errors.append(
                {"loc": ["body", name], "msg": "value could not be parsed to a boolean", "type": "type_error.bool"}
            )
    for name in spec.integers:
        value = arguments.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            errors.append({"loc": ["body", name], "msg": "value is not a valid integer", "type": "type_error.integer"})
    for name, allowed in spec.choices.items():
        value = arguments.get(name)
        if value is not None and value not in allowed:
            permitted = ", ".join(repr(choice) for choice in allowed)
            errors.append(
                {
                    "loc": ["body", name],
                    "msg": f"unexpected value; permitted: {permitted}",
                    "type": "value_error.const",
                    "ctx": {"given": value, "permitted": list(allowed)},
                }
            )
    for name, (low, high) in spec.ranges.items():
        value = arguments.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if value < low:
            errors.append(_range_error(name, f"ensure this value is greater than or equal to {low}", "ge", low))
        elif value > high:
            errors.append(_range_error(name, f"ensure this value is less than or equal to {high}", "le", high))
    return errors


def _range_error(name: str, message: str, bound: str, limit: int) -> Json:
    return {
        "loc": ["body", name],
        "msg": message,
        "type": f"value_error.number.not_{bound}",
        "ctx": {"limit_value": limit},
    }


def result_retention_seconds(result_bytes: int) -> float:
    """Simulated seconds fal keeps a result of `result_bytes` bytes of JSON: 1 h, or 6 min from 10 KB on."""
    return LARGE_RESULT_RETENTION_SECONDS if result_bytes >= LARGE_RESULT_BYTES else RESULT_RETENTION_SECONDS


# ------------------------------------------------------------------------------------------------ faults

FalFailure = Literal["runner_server_error", "request_timeout", "runner_disconnected", "content_policy_violation"]

FAL_FAILURES: Final[dict[str, tuple[int, Json]]] = {
    "runner_server_error": (500, {"detail": "Internal server error", "error_type": "runner_server_error"}),
    "request_timeout": (504, {"detail": "Request timed out", "error_type": "request_timeout"}),
    "runner_disconnected": (503, {"detail": "Runner disconnected", "error_type": "runner_disconnected"}),
    "content_policy_violation": (
        422,
        {
            "detail": [
                {
                    "loc": ["body", "image_url"],
                    "msg": "The content could not be processed because it contained material flagged by a content "
                    "checker.",
                    "type": "content_policy_violation",
                    "url": f"{ERRORS_URL}#content_policy_violation",
                }
            ]
        },
    ),
}
"""What a request failed by the fault plan answers: status and body (a request error or a model error)."""


class FalFaultPlan(FaultPlan):
    """A `FaultPlan` with fal's failure kinds and webhook-signature faults. ``fail_code`` (WaveSpeed's) is unused."""

    fail_error: FalFailure = "runner_server_error"
    """How a request failed by ``fail_rate`` ends: see `FAL_FAILURES`."""

    foreign_key_signature_rate: Rate = 0.0
    """Webhooks signed with a key that is not in the JWKS (a receiver must refuse them)."""

    stale_timestamp_rate: Rate = 0.0
    stale_timestamp_seconds: float = Field(default=600.0, ge=0.0)
    """Webhooks whose (correctly signed) timestamp lies this many real seconds in the past: wall-clock time, not
    scaled, since receivers compare it with their clock (fal's tolerance is 300 s)."""

    payload_error_rate: Rate = 0.0
    """Successful requests whose webhook carries ``payload: null`` and ``payload_error`` (fal: the output could not be
    serialised); the result endpoint still has the output."""


def as_fal_plan(plan: FaultPlan) -> FalFaultPlan:
    """`plan` itself when it is a `FalFaultPlan`, else a `FalFaultPlan` with its fields (and a fresh seeded source)."""
    return plan if isinstance(plan, FalFaultPlan) else FalFaultPlan(**plan.model_dump())


# ------------------------------------------------------------------------------------------------ signing


def webhook_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """What fal signs: UTF-8 of ``request_id, user_id, timestamp, sha256(body) hex`` joined by newlines."""
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 key pair with its JWKS ``kid``."""

    kid: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(kid=f"fal-sim-{uuid.uuid4().hex[:12]}", private=Ed25519PrivateKey.generate())

    def jwk(self) -> Json:
        raw = self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": self.kid}

    def sign(self, message: bytes) -> str:
        return self.private.sign(message).hex()


# ------------------------------------------------------------------------------------------------ TLS


def make_tls_certificate(hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> tuple[bytes, bytes, bytes]:
    """A throwaway CA and a server certificate it signed for `hosts` (IP addresses or DNS names), valid for a week.
    Returns (CA certificate PEM, server certificate chain PEM, server key PEM)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fal simulator local CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca_cert.public_bytes(pem), cert.public_bytes(pem) + ca_cert.public_bytes(pem), key_pem


def _server_tls_context(chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # load_cert_chain reads files only: write them for the call, then delete them (the context keeps the keys).
    with tempfile.TemporaryDirectory(prefix=f"{THREAD_PREFIX}-tls-") as tmp:
        chain_path, key_path = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
        chain_path.write_bytes(chain_pem)
        key_path.write_bytes(key_pem)
        os.chmod(key_path, 0o600)
        context.load_cert_chain(chain_path, key_path)
    return context


# ------------------------------------------------------------------------------------------------ jobs


class _ModelError(Exception):
    """The request ends with this status code and body (and headers) as its result."""

    def __init__(self, status: int, body: Json, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body
        self.headers = headers or {}


def _unprocessable(field_name: str, message: str, error_type: str, **context: Any) -> _ModelError:
    detail: Json = {
        "loc": ["body", field_name],
        "msg": message,
        "type": error_type,
        "url": f"{ERRORS_URL}#{error_type}",
    }
    if context:
        detail["ctx"] = context
    return _ModelError(422, {"detail": [detail]}, {"X-Fal-Retryable": "false"})


def _failure(kind: str) -> _ModelError:
    status, body = FAL_FAILURES[kind]
    error_type = body.get("error_type")
    headers = {"X-Fal-Error-Type": error_type} if isinstance(error_type, str) else {"X-Fal-Retryable": "false"}
    return _ModelError(status, json.loads(json.dumps(body)), headers)


@dataclass
class _Job:
    id: str
    spec: ModelSpec
    arguments: Any
    webhook_url: str | None
    submitted_at: str
    inject_failure: bool
    lose_webhook: bool
    duplicate_webhook: bool
    foreign_signature: bool
    stale_timestamp: bool
    payload_error: bool
    status: str = "IN_QUEUE"
    started: float | None = None
    completed: float | None = None
    cancel_requested: bool = False
    result_status: int | None = None
    result_body: Json | None = None
    result_headers: dict[str, str] = field(default_factory=dict)
    video: Path | None = None
    logs: list[Json] = field(default_factory=list)

    def urls(self, base_url: str) -> Json:
        response_url = f"{base_url}/{self.spec.app}/requests/{self.id}"
        return {
            "request_id": self.id,
            "response_url": response_url,
            "status_url": f"{response_url}/status",
            "cancel_url": f"{response_url}/cancel",
        }

    def log(self, message: str, level: str = "INFO") -> None:
        self.logs.append({"message": message, "level": level, "source": "user", "timestamp": iso_now()})

    @property
    def error(self) -> str | None:
        if self.result_status is None or self.result_status < 400:
            return None
        return f"Invalid status code: {self.result_status}"

    @property
    def error_type(self) -> str | None:
        if self.result_body is None or self.result_status is None or self.result_status < 400:
            return None
        error_type = self.result_body.get("error_type")
        return error_type if isinstance(error_type, str) else None


class FalSimulator(SimulatorCore[_Job]):
    """fal.ai's queue API for its avatar models on ``host:port`` (port 0: any free port). See the module docstring."""

    display_name = "fal"
    thread_prefix = THREAD_PREFIX
    log = logger

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        user_id: str = DEFAULT_USER_ID,
        faults: FaultPlan | None = None,
        time_factor: float = 1.0,
        max_concurrent: int = 2,
        tls: bool = False,
    ) -> None:
        self.check_settings(time_factor, max_concurrent)
        if api_key is not None and not api_key.strip():
            raise ValueError("api_key is empty (use None to accept any key)")
        if not user_id:
            raise ValueError("user_id is empty")
        self.api_key = api_key
        self.user_id = user_id
        self._jobs: dict[str, _Job] = {}
        self._keys: list[SigningKey] = [SigningKey.generate()]  # the last one signs
        super().__init__(host, port, _Handler, as_fal_plan(faults or FalFaultPlan()), time_factor, max_concurrent)
        self.certificate_pem: bytes | None = None
        """With `tls`: the PEM certificate of the CA that signed the server's certificate, for clients to trust."""
        if tls:
            ca_pem, chain_pem, key_pem = make_tls_certificate()
            context = _server_tls_context(chain_pem, key_pem)
            # The handshake happens on the first read, in the request's own thread, not in the accepting one.
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            self._base_url = self._server.public_base_url.replace("http://", "https://", 1)
            self.certificate_pem = ca_pem

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts this simulator's certificate (for ``httpx.Client(verify=...)``)."""
        if self.certificate_pem is None:
            raise RuntimeError("the simulator does not serve TLS (tls=False)")
        return ssl.create_default_context(cadata=self.certificate_pem.decode("ascii"))

    # ------------------------------------------------------------------------------------------------ keys

    def jwks(self) -> Json:
        """The JWKS fal publishes: every key kept, the signing key last."""
        with self._lock:
            return {"keys": [key.jwk() for key in self._keys]}

    @property
    def signing_kid(self) -> str:
        with self._lock:
            return self._keys[-1].kid

    def rotate_signing_key(self, *, keep_previous: bool = True) -> str:
        """Sign from now on with a new key, listed in the JWKS; the previous keys stay listed unless
        `keep_previous` is False. Returns the new key's ``kid``."""
        key = SigningKey.generate()
        with self._lock:
            self._keys = [*self._keys, key] if keep_previous else [key]
        return key.kid

    def drop_key(self, kid: str) -> None:
        """Remove a key that no longer signs from the JWKS."""
        with self._lock:
            if self._keys[-1].kid == kid:
                raise ValueError("the signing key cannot be dropped: rotate first")
            kept = [key for key in self._keys if key.kid != kid]
            if len(kept) == len(self._keys):
                raise KeyError(kid)
            self._keys = kept

    # ------------------------------------------------------------------------------------------------ inspection

    @property
    def fal_faults(self) -> FalFaultPlan:
        plan = self._faults
        assert isinstance(plan, FalFaultPlan)
        return plan

    def set_faults(self, plan: FaultPlan) -> None:
        super().set_faults(as_fal_plan(plan))

    def submissions(self) -> list[Json]:
        """The submit requests among `requests`, whatever their answer."""
        return [r for r in self.requests() if r["method"] == "POST" and r["path"].strip("/") in MODELS]

    def jobs(self) -> list[Json]:
        """Every request submitted (oldest first): id, model, input, webhook URL, status, result status and body."""
        with self._lock:
            return [self._inspection(job) for job in self._jobs.values()]

    def job(self, request_id: str) -> Json | None:
        with self._lock:
            job = self._jobs.get(request_id)
            return None if job is None else self._inspection(job)

    def _inspection(self, job: _Job) -> Json:
        return {
            **job.urls(self._base_url),
            "model": job.spec.endpoint_id,
            "input": job.arguments,
            "webhook_url": job.webhook_url,
            "status": job.status,
            "cancel_requested": job.cancel_requested,
            "result_status": job.result_status,
            "result": job.result_body,
            "error": job.error,
            "error_type": job.error_type,
        }

    def webhook_headers(self, request_id: str, body: bytes, timestamp: int) -> dict[str, str]:
        """The headers fal sends with `body`, signed with the key the JWKS publishes now (for tests that forge the rest
        of a webhook)."""
        with self._lock:
            key = self._keys[-1]
        return {
            "Content-Type": "application/json",
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": self.user_id,
            "X-Fal-Webhook-Timestamp": str(timestamp),
            "X-Fal-Webhook-Signature": key.sign(webhook_message(request_id, self.user_id, str(timestamp), body)),
        }

    def webhook_deliveries(self) -> list[Json]:
        """Every webhook delivery attempt (and every webhook deliberately lost), oldest first."""
        with self._lock:
            return [dict(record) for record in self._deliveries]

    def inspections(self) -> dict[str, Callable[[], Any]]:
        return {**super().inspections(), "/_sim/jobs": self.jobs, "/_sim/webhooks": self.webhook_deliveries}

    # ------------------------------------------------------------------------------------------------ API

    def _authorised(self, header: str | None) -> Answer | None:
        """None when the caller may go on, else the 401 answer."""
        token = authorization_token(header, "Key")
        if token is None:
            return 401, {"detail": "Missing or invalid Authorization header: use 'Key <FAL_KEY>'"}, {}
        if not token_matches(token, self.api_key):
            return 401, {"detail": "No user found for Key ID and Secret"}, {}
        return None

    @staticmethod
    def _injected_error(status: int) -> Answer:
        headers = {"Retry-After": "1"} if status in (429, 503) else {}
        return status, {"detail": status_message(status)}, headers

    def _submit(self, endpoint_id: str, query: dict[str, str], body: Any) -> Answer:
        spec = MODELS.get(endpoint_id)
        if spec is None:
            return 404, {"detail": f"Application '{endpoint_id}' not found"}, {}
        plan = self.fal_faults
        if plan.should(plan.submit_error_rate):
            return self._injected_error(plan.submit_error_status)
        webhook = query.get("fal_webhook") or None
        if webhook is not None and not webhook.startswith(("http://", "https://")):
            return 400, {"detail": "fal_webhook must be an http(s) URL"}, {}
        with self._work_ready:
            job = _Job(
                id=str(uuid.uuid4()),
                spec=spec,
                arguments=body,
                webhook_url=webhook,
                submitted_at=iso_now(),
                # Drawn now, in submission order, so a seed gives the same outcomes run after run.
                inject_failure=plan.should(plan.fail_rate),
                lose_webhook=plan.should(plan.lost_webhook_rate),
                duplicate_webhook=plan.should(plan.duplicate_webhook_rate),
                foreign_signature=plan.should(plan.foreign_key_signature_rate),
                stale_timestamp=plan.should(plan.stale_timestamp_rate),
                payload_error=plan.should(plan.payload_error_rate),
            )
            self._jobs[job.id] = job
            self._queue.append(job.id)
            answer: Json = {"status": "IN_QUEUE", **job.urls(self._base_url), "queue_position": len(self._queue) - 1}
            if webhook is not None:
                answer["gateway_request_id"] = job.id
            self._work_ready.notify()
        if plan.should(plan.lost_answer_rate):
            raise AnswerLost(job.id)
        return 200, answer, {}

    def _find_locked(self, app: str, request_id: str) -> _Job | None:
        job = self._jobs.get(request_id)
        return job if job is not None and job.spec.app == app else None

    def _status(self, app: str, request_id: str, with_logs: bool) -> Answer:
        plan = self._faults
        if plan.should(plan.result_error_rate):
            return self._injected_error(plan.result_error_status)
        with self._lock:
            job = self._find_locked(app, request_id)
            if job is None:
                return 404, {"detail": "Request not found"}, {}
            data: Json = {
                "status": job.status,
                **job.urls(self._base_url),
                "logs": list(job.logs) if with_logs else None,
            }
            if job.status == "IN_QUEUE":
                data["queue_position"] = self._queue.index(job.id)
                return 202, data, {}
            if job.status == "IN_PROGRESS":
                return 202, data, {}
            started, completed = job.started or job.completed or 0.0, job.completed or 0.0
            data["metrics"] = {"inference_time": round((completed - started) * self.time_factor, 3)}
            if job.error is not None:
                data["error"] = job.error
                if job.error_type is not None:
                    data["error_type"] = job.error_type
            return 200, data, {}

    def _result(self, app: str, request_id: str) -> Answer:
        plan = self._faults
        if plan.should(plan.result_error_rate):
            return self._injected_error(plan.result_error_status)
        with self._lock:
            job = self._find_locked(app, request_id)
            if job is None:
                return 404, {"detail": "Request not found"}, {}
            if job.status != "COMPLETED" or job.result_body is None or job.result_status is None:
                return 400, {"detail": "Request is still in progress"}, {}
            size = len(json.dumps(job.result_body).encode())
            assert job.completed is not None
            if time.monotonic() - job.completed > self._scaled(result_retention_seconds(size)):
                return 404, {"detail": "Request not found"}, {}
            return job.result_status, json.loads(json.dumps(job.result_body)), dict(job.result_headers)

    def _cancel(self, app: str, request_id: str) -> Answer:
        with self._lock:
            job = self._find_locked(app, request_id)
            if job is None:
                return 404, {"status": "NOT_FOUND"}, {}
            if job.status == "COMPLETED":
                return 400, {"status": "ALREADY_COMPLETED"}, {}
            job.cancel_requested = True
            if job.status == "IN_QUEUE":
                self._queue.remove(job.id)
                job.log("Request cancelled while in queue")
                job.status, job.completed = "COMPLETED", time.monotonic()
                job.result_status = 499
                job.result_body = {"detail": "Request cancelled by the client", "error_type": "client_cancelled"}
                job.result_headers = {"X-Fal-Error-Type": "client_cancelled"}
            # A running request gets the signal, which the model ignores (fal: a model may).
            return 202, {"status": "CANCELLATION_REQUESTED"}, {}

    # ------------------------------------------------------------------------------------------------ processing

    def _begin_locked(self, job_id: str) -> _Job:
        job = self._jobs[job_id]
        job.status, job.started = "IN_PROGRESS", time.monotonic()
        job.log("Request started")
        return job

    def _process(self, job: _Job) -> None:
        started = time.monotonic()
        plan = self.fal_faults
        try:
            errors = validation_errors(job.spec, job.arguments)
            if errors:
                raise _ModelError(422, {"detail": errors}, {"X-Fal-Retryable": "false"})
            arguments: Json = job.arguments
            image = _fetch(arguments["image_url"], "image_url")
            audio = _fetch(arguments["audio_url"], "audio_url")
            with self._lock:
                job.log("Inputs downloaded")
            if self._stopping.is_set():
                return
            failure: _ModelError | None = None
            output: Json | None = None
            if job.inject_failure:
                failure = _failure(plan.fail_error)
            else:
                output = self._render(job, image, audio)
            if not self._pause(plan.processing_seconds - (time.monotonic() - started) * self.time_factor):
                return
            if failure is not None:
                raise failure
            assert output is not None
            self._finish(job, 200, output, {})
        except _ModelError as error:
            self._finish(job, error.status, error.body, error.headers)
        except Exception as exc:  # a simulator bug must still end the request, as fal's 500 would
            logger.exception("fal simulator failed on request %s", job.id)
            body = {"detail": f"Internal server error: {exc}", "error_type": "internal_error"}
            self._finish(job, 500, body, {"X-Fal-Error-Type": "internal_error"})

    def _render(self, job: _Job, image: bytes, audio: bytes) -> Json:
        assert self._workdir is not None
        video = self._workdir / f"{job.id}.mp4"
        try:
            render_avatar_video(image, audio, video, max_seconds=job.spec.video_limit(job.arguments))
        except MediaError as exc:
            if str(exc).startswith("audio"):
                raise _unprocessable("audio_url", f"Failed to load the audio file: {exc}", "audio_load_error") from exc
            raise _unprocessable("image_url", f"Failed to load the image file: {exc}", "image_load_error") from exc
        duration = probe_media(video).duration
        limit = job.spec.audio_limit(job.arguments)
        if limit is not None and duration > limit:
            video.unlink(missing_ok=True)
            raise _unprocessable(
                "audio_url",
                f"Audio duration must be under {limit:g} seconds at this resolution",
                "audio_duration_too_long",
                max_duration=limit,
                duration=duration,
            )
        job.video = video
        file = {
            "url": f"{self._base_url}{OUTPUTS_PREFIX}{job.id}.mp4",
            "content_type": "video/mp4",
            "file_name": f"{job.id}.mp4",
            "file_size": video.stat().st_size,
        }
        if job.spec.reports == "seed":
            return {"video": file, "seed": job.arguments.get("seed", job.spec.defaults.get("seed"))}
        return {"video": file, "duration": round(duration, 2)}

    def _finish(self, job: _Job, status: int, body: Json, headers: dict[str, str]) -> None:
        with self._lock:
            if job.status == "COMPLETED" or self._stopping.is_set():
                return
            job.status, job.completed = "COMPLETED", time.monotonic()
            job.result_status, job.result_body, job.result_headers = status, body, headers
            job.log("Request completed" if status < 400 else f"Request failed with status {status}")
            if job.webhook_url is None:
                return
            event: Json = {"request_id": job.id, "gateway_request_id": job.id}
            if status < 400:
                event["status"] = "OK"
                if job.payload_error:
                    event["payload"] = None
                    event["payload_error"] = (
                        "Failed to serialize the payload: Object of type bytes is not JSON serializable"
                    )
                else:
                    event["payload"] = body
            else:
                event.update({"status": "ERROR", "error": f"Invalid status code: {status}", "payload": body})
            payload = json.dumps(event, separators=(",", ":")).encode()
        logger.debug("request %s completed with %d", job.id, status)
        self._dispatch_webhook(job, job.webhook_url, payload)

    # ------------------------------------------------------------------------------------------------ webhooks

    def _dispatch_webhook(self, job: _Job, url: str, body: bytes) -> None:
        if job.lose_webhook:
            with self._lock:
                self._deliveries.append({"request_id": job.id, "url": url, "lost": True, "at": iso_now()})
            return
        copies = 2 if job.duplicate_webhook else 1
        delays = [self._faults.delivery_delay() for _ in range(copies)]
        thread = threading.Thread(
            target=self._send_webhook,
            args=(job, url, body, delays),
            name=f"{THREAD_PREFIX}-webhook-{job.id[:8]}",
            daemon=True,
        )
        with self._lock:
            self._senders = {t for t in self._senders if t.is_alive()}
            self._senders.add(thread)
        thread.start()

    def _send_webhook(self, job: _Job, url: str, body: bytes, delays: list[float]) -> None:
        """One delivery per delay (a duplicate is a second one with the same body), each after its wait."""
        with httpx.Client(timeout=WEBHOOK_TIMEOUT) as client:
            for copy, delay in enumerate(delays):
                if not self._pause(delay):
                    return
                self._deliver(client, job, url, body, duplicate=copy > 0)

    def _signing_key(self, job: _Job) -> SigningKey:
        if job.foreign_signature:
            return SigningKey.generate()  # a key no JWKS lists
        with self._lock:
            return self._keys[-1]

    def _deliver(self, client: httpx.Client, job: _Job, url: str, body: bytes, *, duplicate: bool) -> None:
        sent: Json = {}

        def headers() -> dict[str, str]:
            key = self._signing_key(job)
            now = int(time.time())
            timestamp = str(now - round(self.fal_faults.stale_timestamp_seconds) if job.stale_timestamp else now)
            signature = key.sign(webhook_message(job.id, self.user_id, timestamp, body))
            sent.update(at=iso_now(), kid=key.kid, timestamp=timestamp)
            return {
                "Content-Type": "application/json",
                "X-Fal-Webhook-Request-Id": job.id,
                "X-Fal-Webhook-User-Id": self.user_id,
                "X-Fal-Webhook-Timestamp": timestamp,
                "X-Fal-Webhook-Signature": signature,
            }

        delivered = self._post_recorded(
            client,
            url,
            body,
            headers=headers,
            about=lambda: {"request_id": job.id, "duplicate": duplicate, **sent},
            attempts=WEBHOOK_ATTEMPTS,
            first_backoff_seconds=WEBHOOK_BACKOFF_SECONDS,
        )
        if not delivered and not self._stopping.is_set():
            logger.debug("webhook for %s gave up after %d attempts", job.id, WEBHOOK_ATTEMPTS)

    # ------------------------------------------------------------------------------------------------ outputs

    def _output(self, request_id: str) -> Path | None:
        with self._lock:
            job = self._jobs.get(request_id)
            if job is None or job.result_status != 200:
                return None
            video = job.video
        return video if video is not None and video.is_file() else None


def _fetch(url: Any, field_name: str) -> bytes:
    """An input's bytes: a ``data:`` URI decoded, anything else downloaded; a failure is fal's 422
    ``file_download_error`` on that field."""

    def failed(message: str) -> _ModelError:
        return _unprocessable(field_name, f"Failed to download the file: {message}", "file_download_error", url=url)

    if isinstance(url, str) and url.startswith("data:"):
        header, _, data = url.partition(",")
        try:
            content = base64.b64decode(data, validate=True) if header.endswith(";base64") else data.encode()
        except (binascii.Error, ValueError) as exc:
            raise failed("invalid data URI") from exc
        if not content:
            raise failed("empty data URI")
        return content
    return download_input(str(url), field_name, failed)


class _Handler(SimulatorHandler):
    server_version = "FalSimulator/1.0"
    fault_plan_type = FalFaultPlan
    not_found: ClassVar[Json] = {"detail": "Not Found"}

    @property
    def sim(self) -> FalSimulator:
        simulator: FalSimulator = self.server.owner
        return simulator

    def do_PUT(self) -> None:
        self.dispatch("PUT")

    def answer(self, method: str, path: str, query: dict[str, str], raw: bytes, body: Any) -> Answer:
        sim = self.sim
        sim._pause(sim.faults.latency_seconds)
        if path == JWKS_PATH and method in ("GET", "HEAD"):
            return 200, sim.jwks(), {"Cache-Control": "max-age=86400"}
        refused = sim._authorised(self.headers.get("Authorization"))
        if refused is not None:
            return refused
        parts = path.strip("/").split("/")
        if len(parts) >= 4 and parts[2] == "requests":
            app, request_id, rest = "/".join(parts[:2]), parts[3], parts[4:]
            if rest == [] and method in ("GET", "HEAD"):
                return sim._result(app, request_id)
            if rest == ["status"] and method in ("GET", "HEAD"):
                return sim._status(app, request_id, query.get("logs", "").lower() in ("1", "true"))
            if rest == ["cancel"] and method == "PUT":
                return sim._cancel(app, request_id)
            return 405, {"detail": "Method Not Allowed"}, {}
        if method == "POST":
            # No body reads as an empty object (so: fields missing); a body that is not JSON stays raw (not a dict).
            submitted: Any = {} if not raw else raw.decode("utf-8", "replace") if body is None else body
            return sim._submit(path.strip("/"), query, submitted)
        return 404, {"detail": "Not Found"}, {}


__all__ = [
    "FAL_FAILURES",
    "JWKS_PATH",
    "LARGE_RESULT_BYTES",
    "LARGE_RESULT_RETENTION_SECONDS",
    "MODELS",
    "RESULT_RETENTION_SECONDS",
    "WEBHOOK_ATTEMPTS",
    "WEBHOOK_BACKOFF_SECONDS",
    "FalFaultPlan",
    "FalSimulator",
    "ModelSpec",
    "SigningKey",
    "make_tls_certificate",
    "result_retention_seconds",
    "validation_errors",
    "webhook_message",
]
