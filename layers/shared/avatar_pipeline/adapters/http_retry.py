"""Bounded retries for provider calls: exponential backoff with full jitter, honouring Retry-After.

Only `ProviderTransientError` is retried: it means the provider answered in a way that proves the request
was not taken (429, 5xx, a connection that never opened), so sending it again is safe. Everything else,
including `ProviderOutcomeUnknownError` (the request may have been taken), propagates at once. When the
attempts are used up, the last `ProviderTransientError` propagates unchanged.
"""

from __future__ import annotations

import logging
import math
import random as _random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

import httpx

from avatar_pipeline.domain.errors import ProviderConfigError, ProviderOutcomeUnknownError, ProviderTransientError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TransientHttpError(ProviderTransientError):
    """A transient HTTP answer (429 or 5xx), carrying the server's Retry-After hint in seconds, if any.
    `rate_limit` marks a rate limit the body says (e.g. a provider's own code) whatever the HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int,
        retry_after: float | None = None,
        rate_limit: bool = False,
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
        self.status_code = status_code
        self._rate_limit = rate_limit

    @property
    def is_rate_limit(self) -> bool:
        return self._rate_limit or self.status_code == 429 or super().is_rate_limit


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to try (first call included) and how long to wait in between.

    The wait before retry n (n = 1, 2, ...) is `random() * min(max_delay, base_delay * 2 ** (n - 1))`
    ("full jitter"), or the server's Retry-After capped at `max_delay` when the error carries one.
    `sleep` and `random` are injectable so tests need neither real time nor real randomness.
    """

    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    random: Callable[[], float] = field(default=_random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")

    def delay_before_retry(self, retry_number: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry `retry_number` (1 for the first retry)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (retry_number - 1))
        return self.random() * ceiling


def parse_retry_after(value: str | None) -> float | None:
    """A Retry-After header given in seconds; None when absent or not a non-negative number.

    The HTTP-date form is not supported: the caller falls back to its own backoff.
    """
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def call_with_retry(
    operation: Callable[[], T],
    policy: RetryPolicy,
    *,
    description: str = "provider call",
    retry_rate_limits: bool = True,
) -> T:
    """Run `operation`, retrying it on `ProviderTransientError` until `policy.max_attempts` are used (a rate limit
    answer propagates at once without `retry_rate_limits`: its caller paces itself)."""
    attempt = 1
    while True:
        try:
            return operation()
        except ProviderTransientError as exc:
            if attempt >= policy.max_attempts or (exc.is_rate_limit and not retry_rate_limits):
                logger.warning(
                    "%s failed transiently on attempt %d/%d, giving up: %s",
                    description,
                    attempt,
                    policy.max_attempts,
                    exc,
                )
                raise
            delay = policy.delay_before_retry(attempt, exc.retry_after)
            logger.info(
                "%s failed transiently on attempt %d/%d, retrying in %.2f s: %s",
                description,
                attempt,
                policy.max_attempts,
                delay,
                exc,
            )
            policy.sleep(delay)
            attempt += 1


# Failures that happen before the request is on the wire: it cannot have been taken.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)


def raise_transport_error(
    exc: httpx.HTTPError, provider: str, operation: str, *, request_may_be_taken: bool
) -> NoReturn:
    """What a failed HTTP exchange means: not sent (retry is safe), a bad URL, or — once the request may have
    reached the provider — an unknown outcome for a create (never resent) or a transient failure for a read."""
    kind = type(exc).__name__
    if isinstance(exc, NOT_SENT):
        raise ProviderTransientError(f"{provider} {operation}: could not connect ({kind})") from exc
    if isinstance(exc, httpx.UnsupportedProtocol):
        raise ProviderConfigError(f"{provider} {operation}: unsupported URL scheme ({kind})") from exc
    if request_may_be_taken:
        raise ProviderOutcomeUnknownError(
            f"{provider} {operation}: connection failed after the request was sent ({kind}); the task may exist"
        ) from exc
    raise ProviderTransientError(f"{provider} {operation}: connection failed ({kind})") from exc
