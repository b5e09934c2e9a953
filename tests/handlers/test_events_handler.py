"""The events function: the task table's stream in, each task's moves out as "Avatar Task State Change" events on
the bus (moto's EventBridge, a rule delivering to a queue as a consumer's would), in order, valid against the
schema the repo publishes; a redelivered batch repeats the event ids; a put that fails stops the batch there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import events_handler
import jsonschema
import pytest
from handlers.helpers import MP3_BYTES, PNG_BYTES, TaskStream, deliver_upload
from support.aws import REGION, Stack
from support.events import FakeLambdaContext

from avatar_pipeline.adapters.eventbridge import EventPublishError
from avatar_pipeline.domain.events import DETAIL_TYPE, EVENT_SOURCE

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "avatar-task-state-change.schema.json").read_text()
)


@pytest.fixture
def consumer(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> str:
    """A queue receiving the bus's task events through a rule, as an app's would; its URL."""
    monkeypatch.setenv("EVENT_BUS_NAME", "default")
    monkeypatch.setattr(events_handler, "_publisher", None)
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.create_queue(QueueName="app-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = boto3.client("events", region_name=REGION)
    events.put_rule(
        Name="avatar-tasks", EventPattern=json.dumps({"source": [EVENT_SOURCE], "detail-type": [DETAIL_TYPE]})
    )
    events.put_targets(Rule="avatar-tasks", Targets=[{"Id": "app", "Arn": arn}])
    return url


def received(url: str) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs", region_name=REGION)
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(message["Body"]) for message in messages]


def handle(records: list[dict[str, Any]]) -> dict[str, Any]:
    return events_handler.lambda_handler({"Records": records}, FakeLambdaContext("events"))  # type: ignore[no-any-return]


def test_a_pairs_moves_arrive_as_events_in_order_valid_against_the_schema(
    stack: Stack, task_stream: TaskStream, consumer: str
) -> None:
    # Given a pair uploaded and queued (its task written twice: waiting for its pair, then in line)
    deliver_upload(stack, "inbox/amy/face.png", PNG_BYTES)
    deliver_upload(stack, "inbox/amy/voice.mp3", MP3_BYTES)
    # When the events function reads the table's stream
    assert handle(task_stream.read()) == {"batchItemFailures": []}
    # Then the consumer got the task's moves in order, each valid against the published schema
    events = received(consumer)
    for event in events:
        jsonschema.validate(event, SCHEMA)
    details = sorted((e["detail"] for e in events), key=lambda d: d["sequence"])
    assert [(d["previous_status"], d["status"]) for d in details][-1] == ("WAITING_FOR_PAIR", "QUEUED")
    assert [d["sequence"] for d in details] == list(range(1, len(details) + 1))
    assert {d["job"] for d in details} == {"amy"} and details[-1]["model"] == "kling-v1-std"


def test_a_redelivered_batch_repeats_the_same_event_ids(stack: Stack, task_stream: TaskStream, consumer: str) -> None:
    deliver_upload(stack, "inbox/bob/face.png", PNG_BYTES)
    deliver_upload(stack, "inbox/bob/voice.mp3", MP3_BYTES)
    records = task_stream.read()
    handle(records)
    first = {e["detail"]["event_id"] for e in received(consumer)}
    # When Lambda delivers the same batch again
    handle(records)
    # Then the consumer can tell the repeats: the same event ids
    assert {e["detail"]["event_id"] for e in received(consumer)} == first


def pair_records(stack: Stack, task_stream: TaskStream, job: str) -> tuple[list[dict[str, Any]], int]:
    """The stream records a pair uploaded to `job` makes, and where the first record of a task is among them."""
    deliver_upload(stack, f"inbox/{job}/face.png", PNG_BYTES)
    deliver_upload(stack, f"inbox/{job}/voice.mp3", MP3_BYTES)
    records = task_stream.read()
    kinds = [record["dynamodb"].get("NewImage", {}).get("kind", {}).get("S") for record in records]
    return records, kinds.index("task")


@pytest.fixture
def refusing_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bus refuses every put (as it would the function's role without events:PutEvents)."""

    def refuse(Entries: list[dict[str, Any]]) -> dict[str, Any]:
        return {"FailedEntryCount": len(Entries), "Entries": [{"ErrorCode": "AccessDeniedException"}] * len(Entries)}

    monkeypatch.setattr(events_handler._the_publisher()._events, "put_events", refuse)


def test_a_put_that_fails_stops_the_batch_at_its_record(
    stack: Stack, task_stream: TaskStream, consumer: str, refusing_bus: None
) -> None:
    # Given a pair's stream records, and the bus refuses every put (refusing_bus)
    records, first_with_a_task = pair_records(stack, task_stream, "cy")
    # When the batch is handled, then the first record with events is the batch's failure (Lambda retries from it)
    assert handle(records) == {
        "batchItemFailures": [{"itemIdentifier": records[first_with_a_task]["dynamodb"]["SequenceNumber"]}]
    }
    assert received(consumer) == []


def test_a_put_that_fails_on_the_batchs_first_record_fails_the_invocation(
    stack: Stack, task_stream: TaskStream, consumer: str, refusing_bus: None
) -> None:
    # Given a batch that starts with a record of a task, and a bus that refuses every put (refusing_bus)
    records, first_with_a_task = pair_records(stack, task_stream, "dee")
    # When the batch is handled, then nothing of it was done: the invocation fails (Lambda retries the whole batch,
    # and the function's errors alarm counts it)
    with pytest.raises(EventPublishError):
        handle(records[first_with_a_task:])
    assert received(consumer) == []
