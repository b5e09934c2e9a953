"""The task state change events on an EventBridge bus (PutEvents), in order, each at least once.

PutEvents takes at most 10 entries a call and answers for each. When an entry failed with `InternalFailure` or
`ThrottlingException`, it and every entry after it are sent again (so the bus gets a task's moves in their order; an
entry sent twice is a duplicate with the same `event_id`), a few times with backoff. Any other error, or one that
keeps failing, raises, so the caller stops and its stream batch is retried from that record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from avatar_pipeline.domain.events import DETAIL_TYPE, EVENT_SOURCE, TaskStateChange

MAX_ENTRIES_PER_CALL = 10
RETRYABLE_CODES = frozenset({"InternalFailure", "ThrottlingException"})
MAX_ATTEMPTS = 4


class EventPublishError(RuntimeError):
    """Some events could not be put on the bus: the caller must not go on to later ones."""


class EventBridgePublisher:
    def __init__(
        self,
        events: Any,
        bus_name: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        first_backoff_seconds: float = 0.2,
    ) -> None:
        self._events = events
        self._bus_name = bus_name
        self._sleep = sleep
        self._first_backoff = first_backoff_seconds

    def publish(self, changes: Sequence[TaskStateChange]) -> None:
        """Put every change on the bus, in order (a call of 10 at most at a time), or raise `EventPublishError`."""
        for start in range(0, len(changes), MAX_ENTRIES_PER_CALL):
            self._put([self._entry(change) for change in changes[start : start + MAX_ENTRIES_PER_CALL]])

    def _entry(self, change: TaskStateChange) -> dict[str, Any]:
        return {
            "Source": EVENT_SOURCE,
            "DetailType": DETAIL_TYPE,
            "Resources": [change.task_id],
            "Detail": change.model_dump_json(),
            "Time": change.changed_at,
            "EventBusName": self._bus_name,
        }

    def _put(self, entries: list[dict[str, Any]]) -> None:
        pending = entries
        for attempt in range(1, MAX_ATTEMPTS + 1):
            answer = self._events.put_events(Entries=pending)
            if not answer.get("FailedEntryCount"):
                return
            results = answer["Entries"]
            failed = [result for result in results if "ErrorCode" in result]
            if any(result["ErrorCode"] not in RETRYABLE_CODES for result in failed) or attempt == MAX_ATTEMPTS:
                errors = "; ".join(sorted({f"{r['ErrorCode']}: {r.get('ErrorMessage', '')}" for r in failed}))
                raise EventPublishError(f"{len(failed)} of {len(pending)} events not put on the bus: {errors}")
            first_failed = next(number for number, result in enumerate(results) if "ErrorCode" in result)
            pending = pending[first_failed:]
            self._sleep(self._first_backoff * 2 ** (attempt - 1))
