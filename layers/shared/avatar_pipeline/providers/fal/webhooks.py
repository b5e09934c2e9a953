"""fal.ai webhook signatures: what a callback must carry, and the signing keys fal publishes (a JWKS), cached.

fal signs each webhook with Ed25519. The signed message is the UTF-8 of
``request_id + "\\n" + user_id + "\\n" + timestamp + "\\n" + sha256(raw body).hexdigest()`` taken from the headers
``X-Fal-Webhook-Request-Id``, ``-User-Id``, ``-Timestamp`` (unix seconds); ``X-Fal-Webhook-Signature`` is the 64-byte
signature in hex. A callback is accepted when any key of fal's JWKS (``{"keys": [{"kty": "OKP", "crv": "Ed25519",
"x": <base64url>}]}``) verifies it and its timestamp is within 300 s of now. fal signs every customer's webhooks with
the same keys: the domain's per-task token (checked first) is what ties a callback to one of our tasks, and the
optional user id check ties it to our fal account.

Key cache (`JwksCache`): one per container (module-level `SHARED_JWKS_CACHE`), because the adapter is built anew for
each call with the current secrets. Keys are used for at most 24 h after they were fetched. When no cached key
verifies a well-formed, timely callback, the JWKS is fetched again once (fal may have rotated its keys). Whatever
the reason, fal's JWKS is asked at most once a minute, so a flood of forged callbacks cannot make us hammer it, and
keys older than 24 h are not used even if fal cannot be reached then (the callback is refused; fal retries it, and
the poller does not depend on callbacks).

Pure apart from the fetch function it is given: no HTTP client here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from avatar_pipeline.domain.errors import WebhookAuthError
from avatar_pipeline.domain.redaction import mask_secrets

logger = logging.getLogger(__name__)

TOLERANCE_SECONDS: Final = 300
JWKS_MAX_AGE_SECONDS: Final = 24 * 3600.0
JWKS_MIN_INTERVAL_SECONDS: Final = 60.0
# A JWKS is a few hundred bytes; anything far larger is not one.
MAX_JWKS_BYTES: Final = 64 * 1024

REQUEST_ID_HEADER: Final = "x-fal-webhook-request-id"
USER_ID_HEADER: Final = "x-fal-webhook-user-id"
TIMESTAMP_HEADER: Final = "x-fal-webhook-timestamp"
SIGNATURE_HEADER: Final = "x-fal-webhook-signature"

_TIMESTAMP_RE: Final = re.compile(r"[0-9]{1,12}")
_SIGNATURE_RE: Final = re.compile(r"[0-9a-fA-F]{128}")  # 64 bytes
_ED25519_KEY_BYTES: Final = 32


class JwksUnavailableError(Exception):
    """fal's keys could not be fetched, or the answer holds no Ed25519 key."""


def header(headers: Mapping[str, str], name: str) -> str:
    """A header's value (stripped) whatever the case of its name; empty when it is absent."""
    return next((value.strip() for key, value in headers.items() if key.lower() == name), "")


@dataclass(frozen=True)
class SignedHeaders:
    """The signature headers of one callback, checked for presence, shape and freshness (not yet verified)."""

    request_id: str
    user_id: str
    timestamp: str
    signature: bytes

    def message(self, body: bytes) -> bytes:
        """What fal signed: the ids, the timestamp and the raw body's SHA-256 (lowercase hex), one per line."""
        digest = hashlib.sha256(body).hexdigest()
        return "\n".join((self.request_id, self.user_id, self.timestamp, digest)).encode("utf-8")


def read_signed_headers(headers: Mapping[str, str], now: datetime, expected_user_id: str = "") -> SignedHeaders:
    """The callback's signature headers, refused (WebhookAuthError) when one is missing or malformed, when the
    timestamp is more than 300 s from `now`, or when a user id is expected and the callback names another.

    These checks cost nothing, so they come before any key is looked up (or fetched)."""
    request_id = header(headers, REQUEST_ID_HEADER)
    user_id = header(headers, USER_ID_HEADER)
    timestamp = header(headers, TIMESTAMP_HEADER)
    signature = header(headers, SIGNATURE_HEADER)
    if not (request_id and user_id and timestamp and signature):
        raise WebhookAuthError("missing X-Fal-Webhook-Request-Id, -User-Id, -Timestamp or -Signature header")
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise WebhookAuthError("X-Fal-Webhook-Timestamp is not an integer")
    now_ts = (now if now.tzinfo is not None else now.replace(tzinfo=UTC)).timestamp()
    if abs(now_ts - int(timestamp)) > TOLERANCE_SECONDS:
        raise WebhookAuthError("X-Fal-Webhook-Timestamp is outside the accepted window")
    if not _SIGNATURE_RE.fullmatch(signature):
        raise WebhookAuthError("X-Fal-Webhook-Signature is not a hex Ed25519 signature")
    if expected_user_id and user_id != expected_user_id:
        raise WebhookAuthError("the callback is signed for another fal user")
    return SignedHeaders(request_id, user_id, timestamp, bytes.fromhex(signature))


def parse_jwks(raw: bytes) -> tuple[Ed25519PublicKey, ...]:
    """The Ed25519 keys of a JWKS document (keys of other types are skipped); JwksUnavailableError when none."""
    if len(raw) > MAX_JWKS_BYTES:
        raise JwksUnavailableError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise JwksUnavailableError("the JWKS is not JSON") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    keys = tuple(key for entry in entries or [] if (key := _ed25519_key(entry)) is not None)
    if not keys:
        raise JwksUnavailableError("the JWKS holds no Ed25519 key")
    return keys


def _ed25519_key(entry: object) -> Ed25519PublicKey | None:
    if not isinstance(entry, dict) or entry.get("kty", "OKP") != "OKP" or entry.get("crv", "Ed25519") != "Ed25519":
        return None
    x = entry.get("x")
    if not isinstance(x, str):
        return None
    try:
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
    except (binascii.Error, ValueError):
        return None
    return Ed25519PublicKey.from_public_bytes(raw) if len(raw) == _ED25519_KEY_BYTES else None


def _verifies(keys: tuple[Ed25519PublicKey, ...], signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False


@dataclass(frozen=True)
class _Entry:
    keys: tuple[Ed25519PublicKey, ...]
    fetched_at: float | None  # when these keys were fetched (None: never)
    attempted_at: float  # when a fetch was last tried, successful or not


class JwksCache:
    """fal's signing keys by JWKS URL: fetched on first use, used for at most `max_age` seconds, refetched once when
    no key verifies (rotation), and never fetched more often than every `min_interval` seconds. Thread-safe."""

    def __init__(
        self,
        *,
        max_age: float = JWKS_MAX_AGE_SECONDS,
        min_interval: float = JWKS_MIN_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_age = max_age
        self._min_interval = min_interval
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def verify(self, url: str, fetch: Callable[[str], bytes], signature: bytes, message: bytes) -> None:
        """Accept `signature` over `message` if a key of the JWKS at `url` verifies it; WebhookAuthError otherwise.
        `fetch(url)` returns the JWKS document or raises JwksUnavailableError."""
        with self._lock:
            now = self._clock()
            keys = self._usable(url, now)
            refreshed = False
            if not keys:
                refreshed = self._refresh(url, fetch, now)
                keys = self._usable(url, now)
            if _verifies(keys, signature, message):
                return
            # A key fal rotated in since we fetched: one more look (at most once a minute, whoever asks).
            if not refreshed and self._refresh(url, fetch, now):
                keys = self._usable(url, now)
                if _verifies(keys, signature, message):
                    return
        if not keys:
            raise WebhookAuthError("fal's webhook signing keys are not available now")
        raise WebhookAuthError("webhook signature does not match any of fal's keys")

    def _usable(self, url: str, now: float) -> tuple[Ed25519PublicKey, ...]:
        """The cached keys of `url` if they were fetched less than `max_age` ago; none otherwise."""
        entry = self._entries.get(url)
        if entry is None or entry.fetched_at is None or now - entry.fetched_at >= self._max_age:
            return ()
        return entry.keys

    def _refresh(self, url: str, fetch: Callable[[str], bytes], now: float) -> bool:
        """Fetch the keys again unless a fetch was tried within `min_interval`; whether new keys were stored."""
        entry = self._entries.get(url)
        if entry is not None and now - entry.attempted_at < self._min_interval:
            return False
        try:
            keys = parse_jwks(fetch(url))
        except JwksUnavailableError as exc:
            logger.warning("fal's JWKS could not be read", extra={"error": mask_secrets(str(exc))})
            self._entries[url] = _Entry(
                keys=entry.keys if entry else (), fetched_at=entry.fetched_at if entry else None, attempted_at=now
            )
            return False
        self._entries[url] = _Entry(keys=keys, fetched_at=now, attempted_at=now)
        logger.info("fal's JWKS fetched", extra={"keys": len(keys)})
        return True


# The container's cache: every adapter built in this process shares it (see the module docstring).
SHARED_JWKS_CACHE: Final = JwksCache()
