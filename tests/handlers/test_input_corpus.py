"""Every corpus case through the submit function (and then the dispatcher) against moto: its expected outcome, zero
paid calls if rejected."""

from __future__ import annotations

import boto3
import pytest
import respx
from handlers.helpers import TaskStream, mock_wavespeed_submit
from submit_handler import lambda_handler
from support.aws import REGION, Stack
from support.corpus import ACCEPTED, CorpusCase, case_id, corpus, partner_for
from support.events import FakeLambdaContext, s3_created

from avatar_pipeline.domain.models import TaskStatus
from avatar_pipeline.wiring import pipeline


def deliver(stack: Stack, key: str, case: CorpusCase) -> dict:
    """Store the case's bytes under `key` and deliver the S3 event (with the size the case says S3 reports)."""
    etag = boto3.client("s3", region_name=REGION).put_object(Bucket=stack.bucket, Key=key, Body=case.data)["ETag"]
    event = s3_created(
        stack.bucket, key, etag, case.declared_size if case.declared_size is not None else len(case.data)
    )
    return lambda_handler(event, FakeLambdaContext())["results"][0]


@pytest.mark.parametrize("case", corpus(), ids=case_id)
def test_corpus_case_gets_its_expected_outcome(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream, case: CorpusCase
):
    # Given a job made of the case's file and a valid partner
    submit = mock_wavespeed_submit(provider_http)
    job = f"corpus {case.name} ü"
    partner = partner_for(case)
    # When both arrive through the submit function, and the table's changes reach the dispatcher
    deliver(stack, f"inbox/{job}/{partner.key.rsplit('/', 1)[-1]}", partner)
    result = deliver(stack, f"inbox/{job}/{case.key.rsplit('/', 1)[-1]}", case)
    queued = pipeline().tasks.get(result["task_id"])
    task_stream.settle()
    # Then the outcome is the expected one: an accepted pair queued, then sent once; a rejected one never in line
    # and no provider call
    task = pipeline().tasks.get(result["task_id"])
    assert task is not None and queued is not None, result
    if case.expected == ACCEPTED:
        assert (result["action"], queued.status) == ("queued", TaskStatus.QUEUED), queued.reason
        assert task.status is TaskStatus.SUBMITTED, task.reason
        assert submit.call_count == 1
    else:
        assert task.status is TaskStatus.REJECTED
        assert case.expected in (task.reason or ""), task.reason
        assert submit.call_count == 0
