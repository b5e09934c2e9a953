"""The local stack's SQS event source mapping: `SqsPoller` feeds a queue's messages to a function as Lambda does.

Each test runs a tiny recording handler in a pool of one worker (test_local_runtime's `make_pool`) against a queue
of its own in the embedded moto, with a one-second visibility timeout (and a one-second function timeout, which the
mapping requires to be no longer) so that what comes back after the visibility timeout comes back quickly.
The handler appends every event it gets to a JSON-lines file, and fails, or reports failures, as a message's body
tells it to.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import SqsModel
from test_local_runtime import make_pool  # noqa: F401 - the fixture, shared

from avatar_local.twin.aws import EmbeddedAws, create_resources, create_roles
from avatar_local.twin.runtime import FunctionPool
from avatar_local.twin.stack import LocalStack, LocalStackConfig
from avatar_local.twin.template import Resolver, function_by_id
from avatar_local.twin.triggers import SqsPoller, Worker

REGION = "us-east-1"
VISIBILITY_SECONDS = 1

RECORDER = """
import json
import os
import time


def handler(event, context):
    records = event["Records"]
    if not records:  # the test's warm-up call
        return None
    with open(os.environ["DELIVERIES"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"at": time.time(), "event": event}) + "\\n")
    for record in records:
        if record["body"] == "fail-on-first-receive" and record["attributes"]["ApproximateReceiveCount"] == "1":
            raise RuntimeError("not this time")
    if any(record["body"] == "bad-report" for record in records):
        return {"batchItemFailures": [{"itemIdentifier": "not-a-message-of-this-batch"}]}
    return {
        "batchItemFailures": [
            {"itemIdentifier": record["messageId"]} for record in records if record["body"].startswith("report-failure")
        ]
    }
"""


@pytest.fixture(scope="module")
def aws() -> Iterator[EmbeddedAws]:
    with EmbeddedAws(REGION) as embedded:
        yield embedded


@pytest.fixture
def sqs(aws: EmbeddedAws) -> Any:
    return aws.client("sqs")


@pytest.fixture
def queue(sqs: Any) -> tuple[str, str]:
    """A new queue (URL, ARN) with a one-second visibility timeout."""
    url = sqs.create_queue(
        QueueName=f"sqs-source-{uuid.uuid4().hex[:12]}", Attributes={"VisibilityTimeout": str(VISIBILITY_SECONDS)}
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


@pytest.fixture
def deliveries(tmp_path: Path) -> Path:
    return tmp_path / "deliveries.jsonl"


@pytest.fixture
def recorder(make_pool: Callable[..., FunctionPool], deliveries: Path) -> FunctionPool:  # noqa: F811 - the fixture
    """The recording handler, imported and ready (a warm-up call), with a one-second timeout."""
    pool = make_pool(
        RECORDER,
        module="sqs_recorder",
        name="recorder",
        timeout_seconds=VISIBILITY_SECONDS,
        environment={"DELIVERIES": str(deliveries)},
    )
    pool.invoke({"Records": []})
    return pool


@pytest.fixture
def make_poller(aws: EmbeddedAws, queue: tuple[str, str], recorder: FunctionPool) -> Iterator[Callable[..., SqsPoller]]:
    """Pollers of the test's queue for the recording handler; `running=True` polls in a Worker as the stack does."""
    started: list[tuple[SqsPoller, Worker | None]] = []

    def make(*, running: bool = True, **settings: Any) -> SqsPoller:
        url, arn = queue
        poller = SqsPoller(aws, arn, url, recorder, **settings)
        worker = Worker("sqs-test", poller.step, 0.2) if running else None
        if worker is not None:
            worker.start()
        started.append((poller, worker))
        return poller

    yield make
    for poller, worker in started:
        if worker is not None:
            worker.stop()
        poller.stop()


def delivered(deliveries: Path) -> list[dict[str, Any]]:
    """Every invocation the handler recorded: {"at": epoch seconds, "event": the event}."""
    if not deliveries.exists():
        return []
    return [json.loads(line) for line in deliveries.read_text(encoding="utf-8").splitlines()]


def bodies(invocation: dict[str, Any]) -> list[str]:
    return [record["body"] for record in invocation["event"]["Records"]]


def wait_for(condition: Callable[[], bool], seconds: float = 4.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not so within {seconds} s"
        time.sleep(0.05)


def queue_counts(sqs: Any, url: str) -> tuple[int, int, int]:
    """(ready, in flight, delayed) messages of the queue."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    ready, in_flight, delayed = (int(attributes[name]) for name in names)
    return ready, in_flight, delayed


def settle(poller: SqsPoller) -> None:
    """Until the poller has no batch in flight and nothing ready to receive."""
    wait_for(lambda: not poller.busy)


# ------------------------------------------------------------------------------------------------ delivery


def test_a_message_is_delivered_once_as_the_sqs_event_lambda_sends_and_deleted_after_success(
    make_poller: Callable[..., SqsPoller], sqs: Any, queue: tuple[str, str], deliveries: Path
) -> None:
    # Given a running poller, and a message with a string and a binary attribute
    url, arn = queue
    poller = make_poller()
    body = json.dumps({"task": "t-1"})
    message_id = sqs.send_message(
        QueueUrl=url,
        MessageBody=body,
        MessageAttributes={
            "kind": {"DataType": "String", "StringValue": "wakeup"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        },
    )["MessageId"]

    # When the function has had it, and the visibility timeout has passed since
    wait_for(lambda: len(delivered(deliveries)) == 1)
    settle(poller)
    time.sleep(VISIBILITY_SECONDS + 0.5)

    # Then it was delivered once, as one record of the event Lambda sends (Powertools' model of it accepts it) ...
    [invocation] = delivered(deliveries)
    event = invocation["event"]
    SqsModel.model_validate(event)
    [record] = event["Records"]
    assert set(record) == {
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfMessageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    }
    assert record["messageId"] == message_id
    assert record["body"] == body
    assert record["md5OfBody"] == hashlib.md5(body.encode()).hexdigest()  # noqa: S324 - SQS's checksum
    assert (record["eventSource"], record["eventSourceARN"], record["awsRegion"]) == ("aws:sqs", arn, REGION)
    attributes = record["attributes"]
    assert {"ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp"} <= set(
        attributes
    )
    assert attributes["ApproximateReceiveCount"] == "1"
    assert all(isinstance(value, str) for value in attributes.values())
    assert record["messageAttributes"] == {
        "kind": {"stringValue": "wakeup", "stringListValues": [], "binaryListValues": [], "dataType": "String"},
        "blob": {
            "binaryValue": base64.b64encode(b"\x00\x01").decode(),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Binary",
        },
    }
    # ... and deleted: nothing is left in the queue, and the poller counts it done
    assert queue_counts(sqs, url) == (0, 0, 0)
    assert poller.delivered == 1


def test_a_failed_invocation_leaves_the_message_to_come_back_after_the_visibility_timeout(
    make_poller: Callable[..., SqsPoller], sqs: Any, queue: tuple[str, str], deliveries: Path
) -> None:
    # Given a running poller, and a message the function fails on at its first receive
    url, _ = queue
    poller = make_poller()
    sqs.send_message(QueueUrl=url, MessageBody="fail-on-first-receive")

    # When the function has failed on it
    wait_for(lambda: len(delivered(deliveries)) == 1)

    # Then the message is not deleted: it is in flight (invisible) until the visibility timeout ends ...
    wait_for(lambda: queue_counts(sqs, url) == (0, 1, 0), seconds=0.5)
    assert poller.delivered == 0
    # ... then it comes back, received a second time, not before the visibility timeout; that time it is deleted
    wait_for(lambda: len(delivered(deliveries)) == 2)
    first, second = delivered(deliveries)
    assert second["at"] - first["at"] >= VISIBILITY_SECONDS
    assert second["event"]["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    assert first["event"]["Records"][0]["messageId"] == second["event"]["Records"][0]["messageId"]
    settle(poller)
    assert queue_counts(sqs, url) == (0, 0, 0)
    assert poller.delivered == 1


@pytest.mark.parametrize("report_item_failures", [True, False])
def test_report_batch_item_failures_keeps_only_the_messages_listed(
    make_poller: Callable[..., SqsPoller],
    sqs: Any,
    queue: tuple[str, str],
    deliveries: Path,
    report_item_failures: bool,
) -> None:
    # Given three messages, one of which the function lists in its batchItemFailures
    url, _ = queue
    sent = ["ok-1", "report-failure", "ok-2"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": b} for n, b in enumerate(sent)])
    poller = make_poller(running=False, report_item_failures=report_item_failures)

    # When the poller takes them, as one batch, and the function has returned
    poller.step()
    settle(poller)

    # Then they were one invocation
    [invocation] = delivered(deliveries)
    assert sorted(bodies(invocation)) == sorted(sent)
    if report_item_failures:
        # and only the listed message is left: in flight, then back after the visibility timeout
        assert poller.delivered == 2
        assert queue_counts(sqs, url) == (0, 1, 0)
        time.sleep(VISIBILITY_SECONDS + 0.1)
        back = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        assert [m["Body"] for m in back] == ["report-failure"]
    else:
        # and, with ReportBatchItemFailures off, the response means nothing: all are deleted
        assert poller.delivered == 3
        assert queue_counts(sqs, url) == (0, 0, 0)


def test_a_partial_batch_response_naming_no_message_of_the_batch_fails_the_whole_batch(
    make_poller: Callable[..., SqsPoller], sqs: Any, queue: tuple[str, str], deliveries: Path
) -> None:
    # Given two messages, for which the function returns an itemIdentifier that is no message of the batch
    url, _ = queue
    sqs.send_message_batch(
        QueueUrl=url, Entries=[{"Id": "0", "MessageBody": "ok-1"}, {"Id": "1", "MessageBody": "bad-report"}]
    )
    poller = make_poller(running=False, report_item_failures=True)

    # When the poller delivers them
    poller.step()
    settle(poller)

    # Then, as on Lambda, the whole batch failed: neither is deleted
    assert len(delivered(deliveries)) == 1
    assert poller.delivered == 0
    assert queue_counts(sqs, url) == (0, 2, 0)


def test_a_delayed_message_is_not_delivered_before_its_delay(
    make_poller: Callable[..., SqsPoller], sqs: Any, queue: tuple[str, str], deliveries: Path
) -> None:
    # Given a running poller
    url, _ = queue
    poller = make_poller()

    # When a message is sent with a one-second delay, and another without
    sent_at = time.time()
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=1)
    sqs.send_message(QueueUrl=url, MessageBody="now")

    # Then the undelayed one is delivered at once, on its own, while the delayed one waits
    wait_for(lambda: len(delivered(deliveries)) == 1, seconds=0.9)
    [now] = delivered(deliveries)
    assert bodies(now) == ["now"]
    assert queue_counts(sqs, url)[2] == 1
    # and the delayed one is delivered after its delay, not before
    wait_for(lambda: len(delivered(deliveries)) == 2)
    later = delivered(deliveries)[1]
    assert bodies(later) == ["later"]
    assert later["at"] - sent_at >= 1.0
    attributes = later["event"]["Records"][0]["attributes"]
    assert int(attributes["ApproximateFirstReceiveTimestamp"]) - int(attributes["SentTimestamp"]) >= 1000
    settle(poller)
    assert queue_counts(sqs, url) == (0, 0, 0)


# ------------------------------------------------------------------------------------------------ mapping checks


def test_a_queue_whose_visibility_timeout_is_shorter_than_the_function_timeout_is_refused(
    aws: EmbeddedAws,
    queue: tuple[str, str],
    make_pool: Callable[..., FunctionPool],  # noqa: F811 - the fixture
) -> None:
    # Given a function whose timeout (5 s) is longer than the queue's visibility timeout (1 s)
    url, arn = queue
    pool = make_pool(RECORDER, module="sqs_recorder", timeout_seconds=5)

    # When it is given the queue as an event source, then it is refused, as CreateEventSourceMapping refuses it
    with pytest.raises(ValueError, match="visibility timeout"):
        SqsPoller(aws, arn, url, pool)


# ------------------------------------------------------------------------------------------------ the stack's wiring

# A valid SAM template (the local stack runs the SAM transform on it for the function's role).
WIRED_TEMPLATE = """
Transform: AWS::Serverless-2016-10-31
Resources:
  WakeupQueue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 2
      MessageRetentionPeriod: 3600
  Wakeup:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: .
      Handler: sqs_recorder.handler
      Runtime: python3.13
      Timeout: 1
      # What the real template grants the dispatcher on its wake-up queue. (The SAM-attached managed policy's
      # sqs:DeleteMessage alone would do on AWS, which authorises DeleteMessageBatch as DeleteMessage, but the
      # embedded AWS checks sqs:DeleteMessageBatch as an action of its own.)
      Policies:
        - SQSPollerPolicy:
            QueueName: !GetAtt WakeupQueue.QueueName
      Events:
        Wakeup:
          Type: SQS
          Properties:
            Queue: !GetAtt WakeupQueue.Arn
            BatchSize: 10
            MaximumBatchingWindowInSeconds: 0
            FunctionResponseTypes:
              - ReportBatchItemFailures
"""


def test_the_stack_wires_an_sqs_event_to_its_queue_and_waits_for_its_deliveries(
    tmp_path: Path,
    make_pool: Callable[..., FunctionPool],  # noqa: F811 - the fixture
    deliveries: Path,
) -> None:
    # Given a template whose function reads a queue of the template, wired by the local stack
    (tmp_path / "template.yaml").write_text(WIRED_TEMPLATE, encoding="utf-8")
    stack_name = f"sqs-wiring-{uuid.uuid4().hex[:8]}"
    stack = LocalStack(LocalStackConfig(root=tmp_path, stack_name=stack_name, state_dir=tmp_path / ".local"))
    try:
        stack.aws.start()
        resolver = Resolver(stack.template, stack_name=stack_name, region=REGION, account_id="123456789012")
        created = create_resources(stack.aws, stack.template, resolver, stack_name, secret_values={})
        # Lambda reads the queue with the function's execution role, as the SAM transform makes it
        create_roles(stack.aws, stack.transformed, resolver, stack_name)
        stack.roles["Wakeup"] = stack.aws.assume_role(resolver.attributes[("WakeupRole", "Arn")], stack_name)
        stack.pools["Wakeup"] = make_pool(
            RECORDER,
            module="sqs_recorder",
            name="Wakeup",
            timeout_seconds=1,  # the template's Timeout
            environment={"DELIVERIES": str(deliveries)},
        )
        stack._wire_events(function_by_id(stack.template, "Wakeup"), resolver, [])
        for worker in stack._workers:
            worker.start()
        sqs = stack.aws.client("sqs")
        url = created.refs["WakeupQueue"]
        # the queue has the template's settings
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert (attributes["VisibilityTimeout"], attributes["MessageRetentionPeriod"]) == ("2", "3600")

        # When a message is sent to the queue, and the stack is waited for
        sqs.send_message(QueueUrl=url, MessageBody="wake up")
        stack.wait_until_quiet(timeout=4)

        # Then the wait lasted until the function had the message and it was deleted
        assert stack.wired_events == [("Wakeup", "Wakeup")]
        [invocation] = delivered(deliveries)
        assert bodies(invocation) == ["wake up"]
        assert invocation["event"]["Records"][0]["eventSourceARN"] == created.attributes[("WakeupQueue", "Arn")]
        assert queue_counts(sqs, url) == (0, 0, 0)
    finally:
        stack.pools.clear()  # make_pool stops its pools
        stack.stop()
