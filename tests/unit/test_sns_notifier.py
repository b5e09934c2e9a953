"""SnsNotifier against moto's SNS, read back through an SQS queue subscribed to the topic."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws

from avatar_pipeline.adapters.sns import SnsNotifier
from avatar_pipeline.domain.models import Notification, TaskStatus

REGION = "us-east-1"


@dataclass
class Topic:
    sns: Any
    sqs: Any
    arn: str
    queue_url: str

    def received(self) -> list[dict[str, Any]]:
        """The SNS envelopes (RawMessageDelivery false) that reached the subscribed queue."""
        messages = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(message["Body"]) for message in messages]


@pytest.fixture
def topic(monkeypatch: pytest.MonkeyPatch) -> Iterator[Topic]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        sns = boto3.client("sns", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        topic_arn = sns.create_topic(Name="avatar-notifications")["TopicArn"]
        queue_url = sqs.create_queue(QueueName="notifications-inbox")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "false"},
        )
        yield Topic(sns=sns, sqs=sqs, arn=topic_arn, queue_url=queue_url)


def completed_notification(**changes: Any) -> Notification:
    fields: dict[str, Any] = {
        "job": "job-42",
        "task_id": "task-7",
        "status": TaskStatus.COMPLETED,
        "reason": None,
        "inputs": {
            "image": "s3://media-bucket/inbox/job-42/face.png",
            "audio": "s3://media-bucket/inbox/job-42/voice.mp3",
        },
        "output": "s3://media-bucket/outputs/job-42/task-7.mp4",
        "download_url": "https://media-bucket.s3.amazonaws.com/outputs/job-42/task-7.mp4?X-Amz-Expires=86400",
        "provider": "wavespeed",
        "provider_task_id": "ws-123",
        "created_at": datetime(2025, 5, 1, 12, 0, tzinfo=UTC),
        "completed_at": datetime(2025, 5, 1, 12, 4, 30, tzinfo=UTC),
    }
    fields.update(changes)
    return Notification(**fields)


def test_publish_delivers_subject_json_body_and_attributes(topic: Topic) -> None:
    # Given a completed task's notification
    notification = completed_notification()

    # When it is published
    message_id = SnsNotifier(topic.sns, topic.arn).publish(notification)

    # Then one message reaches the subscriber, with the notification's subject and id
    [envelope] = topic.received()
    assert envelope["MessageId"] == message_id
    assert envelope["Subject"] == "Your talking-avatar video is ready: job-42"
    # And its body is the notification as JSON
    body = json.loads(envelope["Message"])
    assert body["job"] == "job-42"
    assert body["task_id"] == "task-7"
    assert body["status"] == "COMPLETED"
    assert body["reason"] is None
    assert body["inputs"] == {
        "image": "s3://media-bucket/inbox/job-42/face.png",
        "audio": "s3://media-bucket/inbox/job-42/voice.mp3",
    }
    assert body["output"] == "s3://media-bucket/outputs/job-42/task-7.mp4"
    assert body["download_url"].startswith("https://media-bucket.s3.amazonaws.com/outputs/job-42/task-7.mp4")
    assert body["provider"] == "wavespeed"
    assert datetime.fromisoformat(body["created_at"]) == datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    assert datetime.fromisoformat(body["completed_at"]) == datetime(2025, 5, 1, 12, 4, 30, tzinfo=UTC)
    assert Notification.model_validate_json(envelope["Message"]) == notification
    # And it carries status and job as filterable attributes
    assert envelope["MessageAttributes"] == {
        "status": {"Type": "String", "Value": "COMPLETED"},
        "job": {"Type": "String", "Value": "job-42"},
    }


def test_publish_keeps_absent_fields_as_nulls_in_the_body(topic: Topic) -> None:
    # Given a failed task's notification: no output, no link
    notification = completed_notification(
        status=TaskStatus.FAILED, reason="the provider's output is gone (HTTP 404)", output=None, download_url=None
    )

    # When it is published
    SnsNotifier(topic.sns, topic.arn).publish(notification)

    # Then the body still lists every field, the missing ones as null, and the failure's reason
    [envelope] = topic.received()
    body = json.loads(envelope["Message"])
    assert set(body) == set(Notification.model_fields)
    assert body["output"] is None
    assert body["download_url"] is None
    assert body["reason"] == "the provider's output is gone (HTTP 404)"
    assert envelope["Subject"] == "Your talking-avatar video failed: job-42"
    assert envelope["MessageAttributes"]["status"] == {"Type": "String", "Value": "FAILED"}


def test_publish_turns_a_non_ascii_job_into_a_subject_sns_accepts(topic: Topic) -> None:
    # Given a job named with accents, another script and a line break
    job = "Café résumé\n頭像 — ok"
    notification = completed_notification(job=job)

    # When it is published
    SnsNotifier(topic.sns, topic.arn).publish(notification)

    # Then the subject is one printable ASCII line, while the body and attribute keep the exact name
    [envelope] = topic.received()
    subject = envelope["Subject"]
    assert subject.isascii()
    assert subject.isprintable()
    assert subject.startswith("Your talking-avatar video is ready: Cafe resume")
    assert json.loads(envelope["Message"])["job"] == job
    assert envelope["MessageAttributes"]["job"] == {"Type": "String", "Value": job}
