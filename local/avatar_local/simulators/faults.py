"""Fault plans for the provider simulators: which failures to inject, how often, and how slowly.

A `FaultPlan` is plain data (it can be posted as JSON to a running simulator) plus a seeded random source, so a
run with the same seed and the same sequence of requests makes the same decisions. Rates are probabilities in
[0, 1]: 0 never fires and consumes no randomness, 1 always fires, anything in between draws from the plan's
`random.Random(seed)`. All durations are in simulated seconds: a simulator divides them by its time factor.
"""

from __future__ import annotations

import random
import threading
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

# Error codes WaveSpeed documents for a failed prediction, with the message the simulator reports for each.
FAILURE_MESSAGES: Final[dict[int, str]] = {
    1200: "content moderation: the input was flagged",
    1400: "missing param",
    1401: "invalid param",
    1402: "media fetch failed",
    1403: "task failed",
    1405: "task failed",
    5000: "internal server error",
    5003: "service unavailable",
    5004: "task timed out",
}

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
"""A probability: 0 never, 1 always."""


class SeededDecider:
    """Thread-safe yes/no decisions drawn from `random.Random(seed)`: repeatable for the same call sequence."""

    def __init__(self, seed: int = 0) -> None:
        self._random = random.Random(seed)  # noqa: S311 - fault injection, not cryptography
        self._lock = threading.Lock()

    def should(self, rate: float) -> bool:
        """True with probability `rate`. Rates <= 0 or >= 1 decide without drawing a number."""
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        with self._lock:
            return self._random.random() < rate

    def uniform(self, high: float) -> float:
        """A number drawn evenly from [0, high); 0 without drawing when `high` is 0."""
        if high <= 0:
            return 0.0
        with self._lock:
            return self._random.uniform(0.0, high)


class FaultPlan(BaseModel):
    """What a simulator should get wrong. The defaults inject nothing except a short processing time."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    seed: int = 0
    latency_seconds: float = Field(default=0.0, ge=0.0)
    """Delay before answering any API request."""

    submit_error_rate: Rate = 0.0
    submit_error_status: int = 503
    """HTTP status of an injected submit error: 429 or 5xx (the request is not taken)."""

    result_error_rate: Rate = 0.0
    result_error_status: int = 503
    """HTTP status of an injected error on a result/prediction GET: 429 or 5xx."""

    fail_rate: Rate = 0.0
    fail_code: int = 1403
    """Code of an injected failure: one of the documented prediction error codes (see FAILURE_MESSAGES)."""

    lost_answer_rate: Rate = 0.0
    """Submits that are carried out but whose answer never comes back: the connection closes first, as on a timeout
    (the client cannot tell whether the job exists)."""

    lost_webhook_rate: Rate = 0.0
    duplicate_webhook_rate: Rate = 0.0
    webhook_delay_seconds: float = Field(default=0.0, ge=0.0)
    webhook_jitter_seconds: float = Field(default=0.0, ge=0.0)
    """Each delivery (a duplicate too) waits a further random time up to this long, so deliveries overtake each
    other."""

    truncated_download_rate: Rate = 0.0
    """Output downloads that announce the full Content-Length but close the connection halfway."""

    processing_seconds: float = Field(default=2.0, ge=0.0)
    """Minimum time a prediction spends processing."""

    _decider: SeededDecider = PrivateAttr()

    def model_post_init(self, __context: Any) -> None:
        self._decider = SeededDecider(self.seed)

    @field_validator("submit_error_status", "result_error_status")
    @classmethod
    def _transient_status(cls, value: int) -> int:
        if value != 429 and not 500 <= value <= 599:
            raise ValueError("must be 429 or a 5xx status")
        return value

    @field_validator("fail_code")
    @classmethod
    def _documented_code(cls, value: int) -> int:
        if value not in FAILURE_MESSAGES:
            raise ValueError(f"must be a documented failure code: {sorted(FAILURE_MESSAGES)}")
        return value

    @property
    def fail_message(self) -> str:
        return FAILURE_MESSAGES[self.fail_code]

    def should(self, rate: float) -> bool:
        """A repeatable decision with probability `rate`, drawn from this plan's seeded random source."""
        return self._decider.should(rate)

    def delivery_delay(self) -> float:
        """Simulated seconds a webhook delivery waits: the fixed delay plus a random share of the jitter."""
        return self.webhook_delay_seconds + self._decider.uniform(self.webhook_jitter_seconds)


class AnswerLost(Exception):
    """Raised by a simulator after doing what was asked, so that the request gets no answer at all."""
