"""Putting a task's events on the bus: 10 a call, in order, the failed (and later) entries sent again on a
retryable error, and an error raised when they cannot be put."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from avatar_pipeline.adapters.eventbridge import EventBridgePublisher, EventPublishError
from avatar_pipeline.domain.events import DETAIL_TYPE, EVENT_SOURCE, TaskStateChange
from avatar_pipeline.domain.models import TaskStatus

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def change(number: int) -> TaskStateChange:
    return TaskStateChange(
        event_id=f"t-1:{number}",
        sequence=number,
        job="amy",
        task_id="t-1",
        status=TaskStatus.QUEUED,
        previous_status=TaskStatus.WAITING_FOR_PAIR,
        reason="paired",
        provider="wavespeed",
        model="kling-v1-std",
        model_title="Kling v1 AI Avatar (standard)",
        estimated_cost_usd="0.25",
        inputs={},
        output=None,
        created_at=T0,
        changed_at=T0,
    )


class ScriptedEvents:
    """put_events, answering each call with the error codes scripted for its entries (None: put)."""

    def __init__(self, *answers: list[str | None]) -> None:
        self.answers = list(answers)
        self.calls: list[list[dict[str, Any]]] = []

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(Entries)
        codes = self.answers.pop(0) if self.answers else [None] * len(Entries)
        results = [
            {"EventId": f"e{i}"} if code is None else {"ErrorCode": code, "ErrorMessage": "x"}
            for i, code in enumerate(codes)
        ]
        return {"FailedEntryCount": sum(code is not None for code in codes), "Entries": results}


def sent_sequences(call: list[dict[str, Any]]) -> list[int]:
    return [json.loads(entry["Detail"])["sequence"] for entry in call]


def test_events_go_10_a_call_in_order_with_the_projects_source_and_detail_type() -> None:
    events = ScriptedEvents()
    EventBridgePublisher(events, "apps").publish([change(n) for n in range(1, 24)])
    assert [sent_sequences(call) for call in events.calls] == [list(range(1, 11)), list(range(11, 21)), [21, 22, 23]]
    entry = events.calls[0][0]
    assert (entry["Source"], entry["DetailType"], entry["EventBusName"], entry["Resources"]) == (
        EVENT_SOURCE,
        DETAIL_TYPE,
        "apps",
        ["t-1"],
    )


def test_a_throttled_entry_is_sent_again_with_every_entry_after_it_so_the_order_holds() -> None:
    # Given the bus throttles the second of three entries once
    events = ScriptedEvents([None, "ThrottlingException", None])
    waits: list[float] = []
    EventBridgePublisher(events, "apps", sleep=waits.append).publish([change(1), change(2), change(3)])
    # Then the second and third are sent again (the third a duplicate, with the same event id), after a backoff
    assert [sent_sequences(call) for call in events.calls] == [[1, 2, 3], [2, 3]]
    assert waits == [0.2]


def test_an_error_that_retrying_cannot_mend_raises_at_once() -> None:
    events = ScriptedEvents([None, "AccessDeniedException"])
    with pytest.raises(EventPublishError, match="1 of 2 events not put on the bus: AccessDeniedException"):
        EventBridgePublisher(events, "apps", sleep=lambda _: None).publish([change(1), change(2)])
    assert len(events.calls) == 1


def test_a_retryable_error_that_keeps_coming_raises_after_the_last_attempt() -> None:
    events = ScriptedEvents(*[["InternalFailure"]] * 4)
    with pytest.raises(EventPublishError, match="InternalFailure"):
        EventBridgePublisher(events, "apps", sleep=lambda _: None).publish([change(1)])
    assert len(events.calls) == 4
