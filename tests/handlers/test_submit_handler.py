"""The submit function against moto, with WaveSpeed mocked at the HTTP layer."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import respx

from avatar_pipeline.models import TaskStatus
from avatar_pipeline.wiring import pipeline
from handlers.helpers import MP3_BYTES, PNG_BYTES, deliver_upload, mock_wavespeed_submit, submitted_json, upload
from submit_handler import lambda_handler
from support.aws import Stack
from support.events import FakeLambdaContext, sample


def test_folder_pair_is_submitted_once_with_presigned_inputs_and_webhook(stack: Stack, provider_http: respx.MockRouter):
    # Given WaveSpeed accepts submissions
    submit = mock_wavespeed_submit(provider_http, prediction_id="f" * 32)
    # When the face and then the voice land in one job folder
    first = deliver_upload(stack, "inbox/alice/face.png", PNG_BYTES)
    second = deliver_upload(stack, "inbox/alice/voice.mp3", MP3_BYTES)
    # Then the first waits, the second submits exactly one task
    assert first["results"][0]["action"] == "waiting"
    assert second["results"][0]["action"] == "submitted"
    assert submit.call_count == 1
    body = submitted_json(submit)
    assert "inbox/alice/face.png" in body["image"] and "X-Amz-Signature" in body["image"]
    assert "inbox/alice/voice.mp3" in body["audio"]
    webhook = urlparse(parse_qs(urlparse(str(submit.calls[0].request.url)).query)["webhook"][0])
    task_id = second["results"][0]["task_id"]
    assert webhook.path.endswith("/webhooks/wavespeed") and parse_qs(webhook.query)["task_id"] == [task_id]
    task = pipeline().tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.SUBMITTED and task.provider_task_id == "f" * 32
    assert [h.to_status for h in task.history] == [
        TaskStatus.WAITING_FOR_PAIR,
        TaskStatus.SUBMITTING,
        TaskStatus.SUBMITTED,
    ]


def test_url_encoded_key_with_space_and_uppercase_extension_is_paired(stack: Stack, provider_http: respx.MockRouter):
    # Given the sample event's key is URL-encoded ("inbox/alice+smith/Face+Photo.PNG") and the object exists
    submit = mock_wavespeed_submit(provider_http)
    event = sample("s3_put_image.json")
    event["Records"][0]["s3"]["bucket"]["name"] = stack.bucket
    import boto3

    boto3.client("s3").put_object(Bucket=stack.bucket, Key="inbox/alice smith/Face Photo.PNG", Body=PNG_BYTES)
    # When its event arrives, then the audio of the same (decoded) folder
    result = lambda_handler(event, FakeLambdaContext())
    paired = deliver_upload(stack, "inbox/alice smith/voice.mp3", MP3_BYTES)
    # Then the key was decoded, the .PNG counted as an image, and the pair submitted once
    assert result["results"][0] == {"key": "inbox/alice smith/Face Photo.PNG", "action": "waiting", "task_id": None}
    assert paired["results"][0]["action"] == "submitted"
    assert "Face%20Photo.PNG" in submitted_json(submit)["image"]


def test_duplicate_s3_event_submits_nothing_new(stack: Stack, provider_http: respx.MockRouter):
    # Given a pair that was already submitted
    submit = mock_wavespeed_submit(provider_http)
    deliver_upload(stack, "inbox/bob.jpg", PNG_BYTES)
    audio_event = upload(stack, "inbox/bob.mp3", MP3_BYTES)
    lambda_handler(audio_event, FakeLambdaContext())
    # When S3 delivers the same event again
    again = lambda_handler(audio_event, FakeLambdaContext())
    # Then it is recognised as the same pair and nothing is submitted
    assert again["results"][0]["action"] == "duplicate"
    assert submit.call_count == 1
