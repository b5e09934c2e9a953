"""Presigned links through the functions, against moto: signed with the link signer's key when LINK_SIGNER_SECRET_ID
names its secret, input links signed for the provider's fetch window, the notification saying until when its link
works, and one warning per invocation when links may die before the provider fetches them (issue 14, item 5)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import httpx
import pytest
import respx
from dispatch_handler import lambda_handler as dispatch_handler
from finalize_handler import lambda_handler as finalize
from handlers.helpers import (
    MP3_BYTES,
    OTHER_MP3_BYTES,
    OTHER_PNG_BYTES,
    PNG_BYTES,
    TaskStream,
    all_actions,
    deliver_upload,
    dispatch_context,
    mock_wavespeed_submit,
    submitted_json,
)
from support.aws import REGION, TABLE, Stack
from support.events import FakeLambdaContext, stream_event
from support.mp4 import fake_mp4

from avatar_pipeline import wiring
from avatar_pipeline.domain.models import ProviderJob, ProviderJobStatus, TaskStatus
from avatar_pipeline.services import admission
from avatar_pipeline.services.tracking import record_provider_news
from avatar_pipeline.wiring import pipeline

SIGNER_KEY_ID = "AKIALINKSIGNER000001"
SIGNER_SECRET = "link-signer-secret-access-key-0000000001"
OUTPUT_URL = "https://d111111abcdef8.cloudfront.net/output/erin.mp4"
LINKS_MAY_DIE = "input links may stop working before the provider fetches them"


def query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlparse(url).query).items()}


def signed_with(url: str) -> str:
    return query(url)["X-Amz-Credential"].split("/", 1)[0]


def configure(monkeypatch: pytest.MonkeyPatch, **environment: str) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    wiring.pipeline.cache_clear()


def with_link_signer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The link signer's secret as the template creates it, and the functions told its ARN."""
    created = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="avatar-link-signer-test",
        SecretString=json.dumps({"access_key_id": SIGNER_KEY_ID, "secret_access_key": SIGNER_SECRET}),
    )
    configure(monkeypatch, LINK_SIGNER_SECRET_ID=created["ARN"])


def queue_pair(stack: Stack, job: str, *, other: bool = False) -> str:
    deliver_upload(stack, f"inbox/{job}/face.png", OTHER_PNG_BYTES if other else PNG_BYTES)
    result = deliver_upload(stack, f"inbox/{job}/voice.mp3", OTHER_MP3_BYTES if other else MP3_BYTES)["results"][0]
    assert result["action"] == "queued", result
    return str(result["task_id"])


def deliver_stream_change(task_id: str) -> dict[str, Any]:
    table = boto3.resource("dynamodb", region_name=REGION).Table(TABLE)
    item = table.get_item(Key={"pk": f"TASK#{task_id}"}, ConsistentRead=True)["Item"]
    return finalize(stream_event(item, None), FakeLambdaContext(remaining_ms=900_000))


def test_given_a_link_signer_when_the_dispatcher_sends_a_pair_then_its_input_links_carry_the_signers_key(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the link signer's secret, named by LINK_SIGNER_SECRET_ID, and WaveSpeed accepting submissions
    with_link_signer(monkeypatch)
    submit = mock_wavespeed_submit(provider_http)
    function_key = boto3.session.Session().get_credentials().access_key  # type: ignore[union-attr]
    # When a pair is queued and the dispatcher sends it
    queue_pair(stack, "erin")
    assert all_actions(task_stream.settle()) == {"submit-submitted": 1}
    # Then both input links were signed with the signer's key (no session token), not the function's, for the
    # provider's queue and render times and a margin
    body = submitted_json(submit)
    for url in (body["image"], body["audio"]):
        assert signed_with(url) == SIGNER_KEY_ID != function_key
        assert "X-Amz-Security-Token" not in query(url)
        assert query(url)["X-Amz-Expires"] == str(21600 + 3600 + 900)


def test_given_a_link_signer_when_a_task_completes_then_its_notification_link_carries_the_signers_key_and_its_end(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the link signer, and a submitted task whose video is ready at the provider's CDN
    with_link_signer(monkeypatch)
    mock_wavespeed_submit(provider_http, prediction_id="e" * 32)
    task_id = queue_pair(stack, "erin")
    task_stream.settle()
    provider_http.get(OUTPUT_URL).mock(return_value=httpx.Response(200, content=fake_mp4(4096)))
    news = ProviderJob(provider_task_id="e" * 32, status=ProviderJobStatus.SUCCEEDED, output_url=OUTPUT_URL)
    record_provider_news(pipeline(), task_id, news)
    before = datetime.now(UTC).replace(microsecond=0)
    # When finalize copies it (the OUTPUT_READY change), then announces it (the COMPLETED change)
    deliver_stream_change(task_id)
    deliver_stream_change(task_id)
    after = datetime.now(UTC)
    # Then one notification carries a link signed with the signer's key, and when that link stops working: a day on
    task = pipeline().tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.COMPLETED
    (message,) = stack.notifications()
    body = message["body"]
    assert signed_with(body["download_url"]) == SIGNER_KEY_ID
    assert "X-Amz-Security-Token" not in query(body["download_url"])
    expires_at = datetime.fromisoformat(body["download_url_expires_at"])
    assert before + timedelta(days=1) <= expires_at <= after + timedelta(days=1)
    assert body["output"] == f"s3://{stack.bucket}/outputs/erin/{task_id}.mp4"


def test_given_a_link_signer_secret_that_cannot_be_read_when_pairs_arrive_then_they_queue_and_nothing_is_sent(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given LINK_SIGNER_SECRET_ID names a secret that does not exist
    configure(monkeypatch, LINK_SIGNER_SECRET_ID="avatar-link-signer-missing")
    submit = mock_wavespeed_submit(provider_http)
    # When a pair arrives, Then the submit function (which presigns nothing, so never reads the secret) queues it
    task_id = queue_pair(stack, "erin")
    # When the dispatcher tries to send it, Then it cannot sign the links: nothing is sent and the task waits in line
    assert all_actions(task_stream.settle()) == {"submit-requeued": 1}
    assert submit.call_count == 0
    task = pipeline().tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.QUEUED


def test_given_function_credentials_that_expire_in_two_hours_when_one_invocation_sends_three_pairs_then_it_warns_once(
    stack: Stack,
    provider_http: respx.MockRouter,
    task_stream: TaskStream,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given no link signer, function credentials that botocore knows expire in 2 hours (before the provider's 7-hour
    # fetch window ends), room for four renders, and three pairs in line
    monkeypatch.setattr(admission, "_LINKS_DIE_EARLY_WARNING", admission._OncePerInvocation())
    expiry = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    configure(monkeypatch, AWS_CREDENTIAL_EXPIRATION=expiry.isoformat(), WAVESPEED_RENDERS_AT_ONCE="4")
    submit = mock_wavespeed_submit(provider_http)
    for job, other in (("ann", False), ("ben", True), ("cat", False)):
        queue_pair(stack, job, other=other)
    caplog.clear()
    # When one dispatcher invocation gets the three tasks joining the line
    (answer,) = task_stream.deliver(task_stream.for_dispatch())
    # Then all three were sent, and one warning says when the links die and until when the provider may fetch
    assert answer["actions"] == {"submit-submitted": 3}
    assert submit.call_count == 3
    warnings = [record for record in caplog.records if record.getMessage() == LINKS_MAY_DIE]
    assert len(warnings) == 1
    (warning,) = warnings
    assert warning.levelname == "WARNING"
    fields = warning.__dict__
    assert datetime.fromisoformat(fields["links_work_until"]) == expiry
    assert datetime.fromisoformat(fields["provider_may_fetch_until"]) > expiry + timedelta(hours=4)
    assert "LINK_SIGNER_SECRET_ID" in fields["hint"]
    # When another invocation (another request id) sends the next pair, Then it warns again, once
    queue_pair(stack, "dan")
    caplog.clear()
    later = dispatch_context()
    later.aws_request_id = "00000000-0000-0000-0000-000000000002"
    answer = dispatch_handler({"Records": task_stream.for_dispatch()}, later)
    assert answer["actions"] == {"submit-submitted": 1}
    assert len([record for record in caplog.records if record.getMessage() == LINKS_MAY_DIE]) == 1
