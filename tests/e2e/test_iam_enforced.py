"""The local stack enforces each function's role: take one permission away and the pipeline fails as on AWS."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avatar_cli.client import PipelineClient, StackTarget
from avatar_local.simulators.faults import FaultPlan
from avatar_local.simulators.media import make_sample_portrait, make_sample_speech
from avatar_local.twin.stack import LocalStack, LocalStackConfig
from avatar_local.twin.template import load_template

ROOT = Path(__file__).resolve().parents[2]


def without_task_table_access(template: dict[str, Any]) -> dict[str, Any]:
    """template.yaml with the submit function's DynamoDB policy removed (and nothing else)."""
    policies = template["Resources"]["SubmitFunction"]["Properties"]["Policies"]
    kept = [policy for policy in policies if "DynamoDBCrudPolicy" not in policy]
    assert len(kept) == len(policies) - 1
    template["Resources"]["SubmitFunction"]["Properties"]["Policies"] = kept
    return template


@pytest.fixture(autouse=True)
def _quick_provider() -> None:
    """This module runs a stack of its own: the shared one (conftest) is not started for it. (moto's backends live as
    long as the process, so a second start of the shared stack would meet the tables of the first.)"""


@pytest.fixture(scope="module")
def crippled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state = tmp_path_factory.mktemp("iam-stack")
    template_path = state / "template.json"  # JSON is YAML: read as template.yaml is
    template_path.write_text(json.dumps(without_task_table_access(load_template(ROOT / "template.yaml"))))
    config = LocalStackConfig(
        stack_name="avatar-iam",
        state_dir=state,
        template_path=template_path,
        poll_interval_seconds=1.0,
        faults=FaultPlan(processing_seconds=0.5),
    )
    with LocalStack(config) as stack:
        yield stack


def test_a_function_without_a_permission_fails_and_its_event_lands_in_the_failure_queue(
    crippled: LocalStack, tmp_path: Path
) -> None:
    """Given the submit function's role may not use the task table, when a pair is uploaded, then each invocation is
    refused by DynamoDB (AccessDeniedException), Lambda's retries run out, and the S3 event lands in the failure queue
    with the reason; no task exists and the provider was never called."""
    info = crippled.info
    assert info is not None
    assert info.async_failure_queue_url is not None
    face, voice = tmp_path / "face.png", tmp_path / "voice.mp3"
    face.write_bytes(make_sample_portrait())
    voice.write_bytes(make_sample_speech(2.0))
    target = StackTarget(
        bucket=info.bucket, table=info.table, region=info.region, aws_endpoint_url=info.aws_endpoint_url
    )
    client = PipelineClient(target)

    client.submit(face, voice, "no-permission")
    failures = _messages(crippled, info.async_failure_queue_url, want=1, timeout=60)

    reason = failures[0]["responsePayload"]["errorMessage"]
    assert "AccessDeniedException" in reason
    assert "assumed-role/avatar-iam-SubmitFunctionRole" in reason
    assert failures[0]["requestContext"]["condition"] == "RetriesExhausted"
    job = client.status("no-permission")
    assert job.tasks == [] and job.slot is None
    assert crippled.simulator.submissions() == []


def _messages(stack: LocalStack, queue_url: str, want: int, timeout: float) -> list[dict[str, Any]]:
    sqs = stack.aws.client("sqs")
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(found) < want and time.monotonic() < deadline:
        for message in sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1).get("Messages", []):
            found.append(json.loads(message["Body"]))
    assert len(found) >= want, f"nothing reached the failure queue within {timeout:.0f} s"
    return found
