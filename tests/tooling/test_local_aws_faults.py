"""The local stack's AWS-side faults: `AwsFaultPlan` and `install`, which makes every botocore session answer some
calls with the errors AWS itself sends (DynamoDB throttling, an SNS outage) or kills the process mid-call.

`install` patches botocore globally, so every test that installs a plan does it in a child Python process: the
patch never reaches this test process. The child's clients point at a 127.0.0.1 port that is bound but not
listening, so a call that is *not* intercepted ends in a connection error (proof that it went out), and nothing
ever leaves the machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from avatar_local.twin.aws_faults import CRASH_EXIT_STATUS, AwsFaultPlan

# The child: installs the plan, makes the listed calls in order and prints one JSON line per call's outcome
# (flushed at once, so the lines of calls made before a crash survive it).
CHILD = r"""
import json, sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError

from avatar_local.twin.aws_faults import AwsFaultPlan, install

spec = json.loads(sys.argv[1])
install(AwsFaultPlan.model_validate(spec["plan"]), spec["function"], spec["worker"])
# total_max_attempts counts the first attempt too (botocore's max_attempts would not).
config = Config(
    retries={"total_max_attempts": spec["max_attempts"], "mode": "standard"}, connect_timeout=2, read_timeout=2
)
clients = {}
for service, method, params in spec["calls"]:
    if service not in clients:
        clients[service] = boto3.client(
            service,
            endpoint_url=spec["endpoint"],
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=config,
        )
    try:
        getattr(clients[service], method)(**params)
        outcome = {"call": method, "kind": "answered"}
    except ClientError as exc:
        error = exc.response["Error"]
        outcome = {
            "call": method,
            "kind": "client_error",
            "code": error.get("Code"),
            "status": exc.response["ResponseMetadata"].get("HTTPStatusCode"),
            "attempts": exc.response["ResponseMetadata"].get("RetryAttempts", 0) + 1,
        }
    except BotoConnectionError as exc:
        outcome = {"call": method, "kind": "connection_error", "error": type(exc).__name__}
    print(json.dumps(outcome), flush=True)
print(json.dumps({"finished": True}), flush=True)
"""

Call = tuple[str, str, dict[str, Any]]
"""(service, client method, parameters)"""

GET_ITEM: Call = ("dynamodb", "get_item", {"TableName": "jobs", "Key": {"pk": {"S": "job-1"}}})
PUT_ITEM: Call = ("dynamodb", "put_item", {"TableName": "jobs", "Item": {"pk": {"S": "job-1"}}})
PUBLISH: Call = ("sns", "publish", {"TopicArn": "arn:aws:sns:us-east-1:000000000000:events", "Message": "done"})
LIST_TOPICS: Call = ("sns", "list_topics", {})
PUT_OBJECT: Call = ("s3", "put_object", {"Bucket": "media", "Key": "out.mp4", "Body": "x"})
GET_OBJECT: Call = ("s3", "get_object", {"Bucket": "media", "Key": "in.png"})


@pytest.fixture
def endpoint() -> Iterator[str]:
    """An http://127.0.0.1 endpoint whose port is bound but not listening: every connection is refused."""
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{reserved.getsockname()[1]}"


def run_child(
    tmp_path: Path,
    endpoint: str,
    plan: AwsFaultPlan,
    calls: list[Call],
    *,
    function: str = "finalize",
    worker: int = 0,
    max_attempts: int = 2,
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Run CHILD with the venv's Python; return the process and its outcome lines."""
    spec = {
        "plan": plan.model_dump(mode="json"),
        "function": function,
        "worker": worker,
        "endpoint": endpoint,
        "max_attempts": max_attempts,
        "calls": calls,
    }
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("AWS_") and key != "PYTHONSTARTUP"
    }
    environment.update({"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull})
    process = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    outcomes = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    return process, outcomes


# ------------------------------------------------------------------------------------------------ the plan


def test_default_plan_injects_nothing_and_s3_faults_alone_leave_functions_untouched() -> None:
    # Given the default plan, and one that only disturbs S3 event delivery
    default = AwsFaultPlan()
    s3_only = AwsFaultPlan(s3_duplicate_event_rate=1.0, s3_event_max_delay_seconds=3.0)

    # When we ask whether either touches the functions' own AWS calls
    # Then neither does, while any function-side rate above 0 does
    assert not default.touches_functions
    assert not s3_only.touches_functions
    assert AwsFaultPlan(dynamodb_throttle_rate=0.1).touches_functions
    assert AwsFaultPlan(sns_publish_error_rate=0.1).touches_functions
    assert AwsFaultPlan(crash_rate=0.1).touches_functions
    assert default.crash_operations == ("s3.UploadPart",)


@pytest.mark.parametrize(
    "fields",
    [
        {"dynamodb_throttle_rate": 1.5},
        {"sns_publish_error_rate": -0.1},
        {"crash_rate": 2},
        {"s3_duplicate_event_rate": 1.01},
        {"s3_event_max_delay_seconds": -1},
        {"throttle_everything": True},
    ],
)
def test_plan_rejects_rates_outside_0_to_1_negative_delays_and_unknown_fields(fields: dict[str, Any]) -> None:
    # Given an out-of-range rate, a negative delay or a misspelt field
    # When a plan is built from it
    # Then validation refuses it
    with pytest.raises(ValidationError):
        AwsFaultPlan.model_validate(fields)


def test_plan_is_frozen() -> None:
    # Given a plan
    plan = AwsFaultPlan(crash_rate=0.5)

    # When a field is reassigned
    # Then pydantic refuses: a worker's plan cannot change under it
    with pytest.raises(ValidationError):
        plan.crash_rate = 1.0  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------ install (in a child)


def test_install_with_no_function_faults_leaves_botocore_unpatched() -> None:
    # Given a child process that installs a plan without function-side faults
    script = (
        "import botocore.session\n"
        "from avatar_local.twin.aws_faults import AwsFaultPlan, install\n"
        "original = botocore.session.Session.__init__\n"
        "install(AwsFaultPlan(s3_duplicate_event_rate=1.0), 'submit', 0)\n"
        "print(botocore.session.Session.__init__ is original)\n"
    )

    # When it runs
    process = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )

    # Then botocore's Session is untouched
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "True"


def test_dynamodb_throttle_rate_one_answers_provisioned_throughput_exceeded(tmp_path: Path, endpoint: str) -> None:
    # Given a plan that throttles every DynamoDB call, and a client allowed 2 attempts
    plan = AwsFaultPlan(dynamodb_throttle_rate=1.0)

    # When the child reads and writes an item
    process, outcomes = run_child(tmp_path, endpoint, plan, [GET_ITEM, PUT_ITEM])

    # Then both calls fail with DynamoDB's throttling error (HTTP 400) after the SDK retried it
    assert process.returncode == 0, process.stderr
    throttled = {"kind": "client_error", "code": "ProvisionedThroughputExceededException", "status": 400, "attempts": 2}
    assert outcomes[:2] == [{"call": "get_item", **throttled}, {"call": "put_item", **throttled}]
    assert outcomes[-1] == {"finished": True}
    # And every attempt, the retries too, was answered by the plan (one chaos note each), none by the endpoint
    notes = [line for line in process.stdout.splitlines() if line.startswith("chaos:")]
    assert len(notes) == 4 and all("dynamodb" in note for note in notes)


def test_sns_publish_error_rate_one_answers_internal_failure_to_publish_only(tmp_path: Path, endpoint: str) -> None:
    # Given a plan that fails every SNS Publish
    plan = AwsFaultPlan(sns_publish_error_rate=1.0)

    # When the child publishes, lists topics and reads DynamoDB
    process, outcomes = run_child(tmp_path, endpoint, plan, [PUBLISH, LIST_TOPICS, GET_ITEM])

    # Then Publish fails with HTTP 500 InternalFailure (retried by the SDK), while the other calls go out
    assert process.returncode == 0, process.stderr
    publish, list_topics, get_item = outcomes[:3]
    assert publish == {
        "call": "publish",
        "kind": "client_error",
        "code": "InternalFailure",
        "status": 500,
        "attempts": 2,
    }
    assert list_topics["kind"] == "connection_error"
    assert get_item["kind"] == "connection_error"


PUT_EVENTS: Call = (
    "events",
    "put_events",
    {
        "Entries": [
            {"Source": "s", "DetailType": "d", "Detail": "{}"},
            {"Source": "s", "DetailType": "d", "Detail": "{}"},
        ]
    },
)


def test_events_throttle_rate_one_answers_every_entry_throttled_without_reaching_the_bus(
    tmp_path: Path, endpoint: str
) -> None:
    # Given a plan that throttles every PutEvents (the endpoint refuses connections: nothing may reach it)
    plan = AwsFaultPlan(events_throttle_rate=1.0)
    # When the child puts two events
    process, outcomes = run_child(tmp_path, endpoint, plan, [PUT_EVENTS])
    # Then the call is answered (a partial-failure answer, as EventBridge gives one), by the plan alone
    assert process.returncode == 0, process.stderr
    assert outcomes[0] == {"call": "put_events", "kind": "answered"}
    notes = [line for line in process.stdout.splitlines() if line.startswith("chaos:")]
    assert notes == ["chaos: events-throttled events.PutEvents"]


def test_zero_rates_inject_nothing_and_every_call_reaches_the_endpoint(tmp_path: Path, endpoint: str) -> None:
    # Given a plan whose function-side rates are all 0 (crash operations listed, but never drawn)
    plan = AwsFaultPlan(
        dynamodb_throttle_rate=0.0,
        sns_publish_error_rate=0.0,
        crash_rate=0.0,
        crash_operations=("s3.PutObject",),
    )

    # When the child calls DynamoDB, SNS Publish and S3 PutObject
    process, outcomes = run_child(tmp_path, endpoint, plan, [GET_ITEM, PUBLISH, PUT_OBJECT], max_attempts=1)

    # Then each call went to the endpoint (its connection was refused) and the process ran to its end
    assert process.returncode == 0, process.stderr
    assert [outcome["kind"] for outcome in outcomes[:3]] == ["connection_error"] * 3
    assert outcomes[-1] == {"finished": True}


def test_crash_rate_one_kills_the_process_during_a_listed_operation(tmp_path: Path, endpoint: str) -> None:
    # Given a plan that crashes every S3 PutObject
    plan = AwsFaultPlan(crash_rate=1.0, crash_operations=("s3.PutObject",))

    # When the child does a GetObject (not listed), then a PutObject, then a DynamoDB call
    process, outcomes = run_child(
        tmp_path, endpoint, plan, [GET_OBJECT, PUT_OBJECT, GET_ITEM], function="finalize", max_attempts=1
    )

    # Then the process exits with the crash status during PutObject
    assert process.returncode == CRASH_EXIT_STATUS, process.stderr
    # And the unlisted GetObject went out normally, while nothing after the crash ran
    assert outcomes == [{"call": "get_object", "kind": "connection_error", "error": outcomes[0].get("error")}]
    # And the function's log says which call it died in
    notes = [line for line in process.stdout.splitlines() if line.startswith("chaos:")]
    assert len(notes) == 1 and "finalize" in notes[0] and "s3.PutObject" in notes[0]


def test_same_seed_function_and_worker_make_the_same_decisions(tmp_path: Path, endpoint: str) -> None:
    # Given a plan that throttles half of the DynamoDB calls, and calls that are not retried
    plan = AwsFaultPlan(seed=1234, dynamodb_throttle_rate=0.5)
    calls = [GET_ITEM] * 24

    # When two children with the same seed, function and worker make the same calls, and a third is another worker
    first, first_outcomes = run_child(tmp_path, endpoint, plan, calls, function="poller", worker=2, max_attempts=1)
    again, again_outcomes = run_child(tmp_path, endpoint, plan, calls, function="poller", worker=2, max_attempts=1)
    other, other_outcomes = run_child(tmp_path, endpoint, plan, calls, function="poller", worker=3, max_attempts=1)

    # Then the first two throttle exactly the same calls, and both outcomes occur (the rate really draws)
    assert first.returncode == again.returncode == other.returncode == 0, first.stderr + again.stderr
    decisions = [outcome["kind"] for outcome in first_outcomes[:24]]
    assert decisions == [outcome["kind"] for outcome in again_outcomes[:24]]
    assert set(decisions) == {"client_error", "connection_error"}
    # And another worker of the same function draws from its own sequence
    assert decisions != [outcome["kind"] for outcome in other_outcomes[:24]]
