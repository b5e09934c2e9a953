"""Driving the local stack from tests: upload the sample pair, follow the job, collect its notifications."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatar_cli.client import PipelineClient
from avatar_local.simulators.faults import FaultPlan
from avatar_local.twin.stack import LocalStack
from avatar_pipeline.domain.models import JobOptions, Task


@dataclass
class Samples:
    face: Path
    voice: Path
    voice_seconds: float


@dataclass
class E2E:
    stack: LocalStack
    client: PipelineClient
    samples: Samples
    _notifications: list[dict[str, Any]] = field(default_factory=list)
    _events: list[dict[str, Any]] = field(default_factory=list)

    def faults(self, plan: FaultPlan) -> None:
        self.stack.simulator.set_faults(plan)

    def run(self, job: str, *, options: JobOptions | None = None, timeout: float = 60) -> Task:
        """Upload the sample pair as `job` and wait until its task has ended; returns the task."""
        self.client.submit(self.samples.face, self.samples.voice, job, options)
        return self.client.wait(job, timeout, interval=0.25)

    def events(self, job: str, settle: float = 3.0) -> list[dict[str, Any]]:
        """Every task state change event for `job` that reached the stack's rule queue (as an app's), as received,
        after waiting `settle` seconds for late ones."""
        assert self.stack.info is not None and self.stack.info.events_queue_url is not None
        sqs = self.stack.aws.client("sqs")
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            batch = sqs.receive_message(
                QueueUrl=self.stack.info.events_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for message in batch.get("Messages", []):
                self._events.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self.stack.info.events_queue_url, ReceiptHandle=message["ReceiptHandle"])
        return [event for event in self._events if event["detail"]["job"] == job]

    def notifications(self, job: str, settle: float = 3.0) -> list[dict[str, Any]]:
        """Every notification for `job`, after waiting `settle` seconds for late duplicates."""
        assert self.stack.info is not None
        sqs = self.stack.aws.client("sqs")
        queue_url = self.stack.info.notifications_queue_url
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            batch = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)
            for message in batch.get("Messages", []):
                envelope = json.loads(message["Body"])
                self._notifications.append(
                    {
                        "subject": envelope.get("Subject"),
                        "attributes": {k: v["Value"] for k, v in envelope.get("MessageAttributes", {}).items()},
                        "body": json.loads(envelope["Message"]),
                    }
                )
                sqs.delete_message(
                    QueueUrl=self.stack.info.notifications_queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
        return [n for n in self._notifications if n["body"]["job"] == job]
