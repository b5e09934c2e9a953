"""Delayed wake-ups of the dispatcher, as SQS messages: a rate window or a provider's pause ends at a moment no
event marks, so the dispatcher asks to be woken then."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from avatar_pipeline.domain.models import ProviderName, utcnow

# SQS delays a message by at most 15 minutes; a later moment is the poller's to catch.
MAX_DELAY_SECONDS = 900


class SqsWaker:
    """Implements `ports.Waker`."""

    def __init__(self, sqs: Any, queue_url: str) -> None:
        self._sqs = sqs
        self._queue_url = queue_url

    def wake(self, provider: ProviderName, at: datetime) -> None:
        delay = math.ceil((at - utcnow()).total_seconds())
        if delay > MAX_DELAY_SECONDS or not self._queue_url:
            return
        self._sqs.send_message(
            QueueUrl=self._queue_url,
            MessageBody=json.dumps({"provider": provider, "at": at.isoformat()}),
            DelaySeconds=max(0, delay),
        )
