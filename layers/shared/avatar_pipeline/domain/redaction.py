"""Masking of secrets in text we quote: provider answers end up in task reasons, notifications and logs.

A provider's error can echo back what we sent it: presigned input URLs (X-Amz-Signature, X-Amz-Credential,
X-Amz-Security-Token in the query), our callback URL (its `token=` authenticates callbacks) or our API key. Whoever
reads a task's reason or a failure email must not be handed those. Pure text work: no AWS, no HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

REDACTED: Final = "[redacted]"
# Provider text quoted in our messages (task reasons, notifications) is kept short.
MAX_QUOTED_CHARS: Final = 500
# Only the start of a huge body (an HTML error page) is scanned: what lies beyond is cut by the cap anyway.
_SCAN_CHARS: Final = 64 * 1024
# Known secrets shorter than this are not masked: replacing a few common letters would garble text and hide nothing.
MIN_KNOWN_SECRET_CHARS: Final = 8

_USERINFO: Final = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/?#@]*@", re.IGNORECASE)
# A URL with a scheme, up to what ends it in prose, JSON or HTML (a `\` too: JSON may escape its slashes).
_URL: Final = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"'<>\\]+", re.IGNORECASE)
# A parameter name that says its value is secret: X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, token,
# api_key, sig... Written `name=value` (a URL without a scheme, a form) or percent-encoded inside another parameter
# (`token%3Dvalue`: our callback URL as WaveSpeed's `webhook=` value). A pattern of names, not a password:
_SECRET_NAME: Final = r"[\w.-]*?(?:signature|credential|token|secret|password|passwd|key|sig|auth)"  # noqa: S105
_SECRET_PARAM: Final = re.compile(rf"(?<![\w.-])({_SECRET_NAME}(?:=|%3D))(?:(?!%26)[^&\s\"'<>\\#,;)])+", re.IGNORECASE)
# The same names as JSON members: {"token": "..."}.
_SECRET_MEMBER: Final = re.compile(rf"(\"{_SECRET_NAME}\"\s*:\s*\")(?:[^\"\\]|\\.)*(?=\")", re.IGNORECASE)
_BEARER: Final = re.compile(r"\b(bearer)\s+[\w.~+/=-]+", re.IGNORECASE)
# Key shapes: OpenAI-style `sk-...` (CometAPI's), Standard Webhooks' `whsec_...`, AWS access key ids.
_KEY_SHAPES: Final = re.compile(r"\bsk-[\w-]{8,}|\bwhsec_[\w+/=-]+|\b(?:AKIA|ASIA)[A-Z0-9]{12,}\b")


def redact_url(url: str) -> str:
    """The URL without its query string, fragment or userinfo: presigned links carry credentials there."""
    bare = url.split("?", 1)[0].split("#", 1)[0]
    return _USERINFO.sub(rf"\g<1>{REDACTED}@", bare)


def mask_secrets(text: str, *, known: Iterable[str] = (), limit: int = MAX_QUOTED_CHARS) -> str:
    """`text` fit to quote: URLs without their query strings, secret-looking parameters, bearer tokens and keys
    (and every `known` secret) replaced by `[redacted]`, then cut to `limit` characters.

    Masking comes before the cut, so a secret straddling the cap cannot leave a readable piece behind.
    """
    masked = text[:_SCAN_CHARS]
    for secret in known:
        if len(secret) >= MIN_KNOWN_SECRET_CHARS:
            masked = masked.replace(secret, REDACTED)
    masked = _URL.sub(lambda match: redact_url(match.group(0)), masked)
    masked = _SECRET_PARAM.sub(rf"\g<1>{REDACTED}", masked)
    masked = _SECRET_MEMBER.sub(rf"\g<1>{REDACTED}", masked)
    masked = _BEARER.sub(rf"\g<1> {REDACTED}", masked)
    masked = _KEY_SHAPES.sub(REDACTED, masked)
    return masked if len(masked) <= limit else masked[: limit - 3] + "..."
