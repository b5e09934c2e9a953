"""A task's moves as "Avatar Task State Change" events: one per move, in order, with ids that repeat on a redelivery,
and the JSON Schema the repo publishes for them (schemas/), checked against real events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from avatar_pipeline.domain.events import DETAIL_TYPE, EVENT_SOURCE, TaskStateChange, event_schema, state_changes
from avatar_pipeline.domain.models import JobOptions, S3Object, Task, TaskStatus
from avatar_pipeline.domain.state_machine import begin, transition
from avatar_pipeline.domain.task_changes import end, explain, join_line

S = TaskStatus
T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "avatar-task-state-change.schema.json"
IMAGE = S3Object(bucket="media", key="inbox/amy/face.png", etag="a")
AUDIO = S3Object(bucket="media", key="inbox/amy/voice.mp3", etag="b")


def waiting(**fields: Any) -> Task:
    return begin(
        "t-1",
        "amy",
        since=T0,
        arrived="inbox/amy/face.png",
        now=T0,
        provider="wavespeed",
        model="infinitetalk",
        options={"resolution": "720p"},
        image=IMAGE,
        audio=AUDIO,
        metadata={"order": "A-17", "tenant": "acme"},
        **fields,
    )


def queued() -> Task:
    return join_line(
        waiting(),
        why="paired",
        now=T0 + timedelta(seconds=1),
        audio_ms=4000,
        failover_targets=(),
        estimated_cost_usd=Decimal("0.30"),
    )


def envelope(change: TaskStateChange) -> dict[str, Any]:
    """The event as EventBridge hands it to a rule's target (an SQS queue's message body)."""
    return {
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": DETAIL_TYPE,
        "source": EVENT_SOURCE,
        "account": "123456789012",
        "time": change.changed_at.isoformat().replace("+00:00", "Z"),
        "region": "us-east-1",
        "resources": [change.task_id],
        "detail": json.loads(change.model_dump_json()),
    }


def test_a_new_task_made_of_two_moves_is_two_events_in_order() -> None:
    # Given a task written once with two moves (its pair was rejected as it was cut)
    rejected = end(waiting(), S.REJECTED, why="voice.mp3 lasts 1.1 s", now=T0 + timedelta(seconds=2))
    # When its stream record (no old image) is read
    changes = state_changes(None, rejected)
    # Then it is two events, oldest first, each with its own move's status, previous status, reason and time
    assert [(c.event_id, c.previous_status, c.status, c.reason) for c in changes] == [
        ("t-1:1", None, S.WAITING_FOR_PAIR, "inbox/amy/face.png arrived"),
        ("t-1:2", S.WAITING_FOR_PAIR, S.REJECTED, "voice.mp3 lasts 1.1 s"),
    ]
    assert [c.changed_at for c in changes] == [T0, T0 + timedelta(seconds=2)]


def test_a_write_with_one_move_is_one_event_and_a_write_without_a_move_is_none() -> None:
    before = waiting()
    after = queued()
    # A move: one event, numbered after the moves the old image had
    (change,) = state_changes(before, after)
    assert (change.event_id, change.previous_status, change.status) == ("t-1:2", S.WAITING_FOR_PAIR, S.QUEUED)
    # A new reason without a move (its place in line changed): no event
    assert state_changes(after, explain(after, why="2nd in line", now=T0 + timedelta(seconds=5))) == []


def test_a_redelivered_change_carries_the_same_event_ids() -> None:
    # Given the same stream record delivered twice (a retried batch)
    before, after = waiting(), queued()
    # Then both deliveries make the same events, ids included: consumers drop the second
    assert state_changes(before, after) == state_changes(before, after)
    assert [c.event_id for c in state_changes(None, after)] == ["t-1:1", "t-1:2"]


def test_an_event_names_the_model_its_cost_inputs_and_the_apps_metadata_and_the_output_once_completed() -> None:
    task = queued()
    (change,) = state_changes(waiting(), task)
    assert (change.provider, change.model, change.model_title) == ("wavespeed", "infinitetalk", "InfiniteTalk at 720p")
    assert change.estimated_cost_usd == "0.30"
    assert change.inputs == {"image": "s3://media/inbox/amy/face.png", "audio": "s3://media/inbox/amy/voice.mp3"}
    assert change.metadata == {"order": "A-17", "tenant": "acme"}
    assert change.output is None
    # When it goes on to completion, only its COMPLETED event says where the video is
    done = task
    for status in (S.SUBMITTING, S.SUBMITTED, S.PROCESSING, S.OUTPUT_READY, S.FINALIZING, S.COMPLETED):
        video = S3Object(bucket="media", key="outputs/amy/t-1.mp4") if status is S.COMPLETED else None
        done = transition(done, status, why=f"{status}", now=T0 + timedelta(minutes=1), output=video)
    outputs = {c.status: c.output for c in state_changes(task, done)}
    assert outputs[S.COMPLETED] == "s3://media/outputs/amy/t-1.mp4"
    assert [status for status, output in outputs.items() if output] == [S.COMPLETED]


def test_the_schema_file_is_the_one_the_code_makes() -> None:
    # Regenerate with `make schemas` when the event changes (and say so to the apps that consume it).
    assert json.loads(SCHEMA_FILE.read_text()) == event_schema()


def test_real_events_validate_against_the_published_schema_and_a_broken_one_does_not() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    events = [envelope(change) for change in state_changes(None, end(queued(), S.FAILED, why="not sent", now=T0))]
    for event in events:
        jsonschema.validate(event, schema)
    broken = {**events[0], "detail": {k: v for k, v in events[0]["detail"].items() if k != "status"}}
    with pytest.raises(jsonschema.ValidationError, match="'status' is a required property"):
        jsonschema.validate(broken, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**events[0], "source": "aws.mediaconvert"}, schema)


@pytest.mark.parametrize(
    "metadata",
    [{f"k{i}": "v" for i in range(21)}, {"note": "x" * 257}, {"": "empty key"}, {"n": 5}],
    ids=["21-keys", "long-value", "empty-key", "not-text"],
)
def test_job_metadata_is_a_short_map_of_texts(metadata: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JobOptions.model_validate({"metadata": metadata})
    assert JobOptions.model_validate({"metadata": {"order": "A-17"}}).metadata == {"order": "A-17"}
