"""The submit function against moto, with WaveSpeed mocked at the HTTP layer."""

from __future__ import annotations

import io
import json
import threading
from urllib.parse import parse_qs, urlparse

import boto3
import httpx
import pytest
import respx
from handlers.helpers import (
    MP3_BYTES,
    OTHER_MP3_BYTES,
    OTHER_PNG_BYTES,
    PNG_BYTES,
    deliver_upload,
    envelope,
    mock_wavespeed_submit,
    prediction,
    submitted_json,
    upload,
)
from submit_handler import lambda_handler
from submit_handler import logger as submit_logger
from support.aws import Stack
from support.events import FakeLambdaContext, sample

from avatar_pipeline.models import TaskStatus
from avatar_pipeline.wiring import pipeline


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


def test_sample_events_url_encoded_keys_and_uppercase_extension_make_one_pair(
    stack: Stack, provider_http: respx.MockRouter
):
    # Given the two sample events: a Put of "inbox/alice+smith/Face+Photo.PNG" and a CompleteMultipartUpload of
    # "inbox/alice+smith/voice.mp3" (keys URL-encoded as S3 sends them)
    submit = mock_wavespeed_submit(provider_http)
    image_event, audio_event = sample("s3_put_image.json"), sample("s3_put_audio.json")
    s3 = boto3.client("s3")
    for event, key, body in (
        (image_event, "inbox/alice smith/Face Photo.PNG", PNG_BYTES),
        (audio_event, "inbox/alice smith/voice.mp3", MP3_BYTES),
    ):
        # The objects exist as the events describe them (validation reads their content, pinned to the ETag).
        etag = s3.put_object(Bucket=stack.bucket, Key=key, Body=body)["ETag"].strip('"')
        event["Records"][0]["s3"]["bucket"]["name"] = stack.bucket
        event["Records"][0]["s3"]["object"].update({"eTag": etag, "size": len(body)})
    # When both arrive
    first = lambda_handler(image_event, FakeLambdaContext())["results"][0]
    second = lambda_handler(audio_event, FakeLambdaContext())["results"][0]
    # Then the keys were decoded, the .PNG counted as an image, the multipart upload as audio, and one task submitted
    assert first == {"key": "inbox/alice smith/Face Photo.PNG", "action": "waiting", "task_id": None}
    assert second["key"] == "inbox/alice smith/voice.mp3" and second["action"] == "submitted"
    task = pipeline().tasks.get(second["task_id"])
    assert task is not None and task.job == "alice smith" and task.image is not None
    assert task.image.key == "inbox/alice smith/Face Photo.PNG"
    assert "Face%20Photo.PNG" in submitted_json(submit)["image"]
    assert submit.call_count == 1


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


def test_two_halves_arriving_at_the_same_moment_make_exactly_one_task(stack: Stack, provider_http: respx.MockRouter):
    # Given both halves of ten jobs are stored, and their two events are delivered at the same instant
    submit = mock_wavespeed_submit(provider_http)
    for attempt in range(10):
        events = [
            upload(stack, f"inbox/race{attempt}/face.png", PNG_BYTES),
            upload(stack, f"inbox/race{attempt}/voice.mp3", MP3_BYTES),
        ]
        barrier = threading.Barrier(2)
        results: list[dict] = []

        def deliver(event: dict, barrier: threading.Barrier = barrier, results: list[dict] = results) -> None:
            barrier.wait()
            results.append(lambda_handler(event, FakeLambdaContext())["results"][0])

        threads = [threading.Thread(target=deliver, args=(event,)) for event in events]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Then exactly one of the two cut and submitted the task; the other waited or saw a duplicate
        actions = sorted(result["action"] for result in results)
        assert actions in (["submitted", "waiting"], ["duplicate", "submitted"]), actions
        _, tasks = pipeline().tasks.list_job(f"race{attempt}")
        assert len(tasks) == 1
    assert submit.call_count == 10


def test_byte_identical_reupload_submits_nothing_and_changed_content_makes_a_new_task(
    stack: Stack, provider_http: respx.MockRouter
):
    # Given a submitted pair
    submit = mock_wavespeed_submit(provider_http)
    deliver_upload(stack, "inbox/gina/face.png", PNG_BYTES)
    deliver_upload(stack, "inbox/gina/voice.mp3", MP3_BYTES)
    # When the same bytes are uploaded again, both files
    deliver_upload(stack, "inbox/gina/face.png", PNG_BYTES)
    same = deliver_upload(stack, "inbox/gina/voice.mp3", MP3_BYTES)
    # Then it maps onto the task those bytes already made: nothing is paid twice
    assert same["results"][0]["action"] == "duplicate"
    assert submit.call_count == 1
    # When a different face and voice are uploaded to the same job
    deliver_upload(stack, "inbox/gina/face.png", OTHER_PNG_BYTES)
    changed = deliver_upload(stack, "inbox/gina/voice.mp3", OTHER_MP3_BYTES)
    # Then they make a second task
    assert changed["results"][0]["action"] == "submitted"
    _, tasks = pipeline().tasks.list_job("gina")
    assert len(tasks) == 2 and submit.call_count == 2


def test_reuploading_the_files_of_a_failed_task_tries_again(stack: Stack, provider_http: respx.MockRouter):
    # Given a pair WaveSpeed refused (its media could not be fetched)
    route = provider_http.post(url__regex=r".*/api/v3/kwaivgi/.*").mock(
        side_effect=[
            httpx.Response(200, json={"code": 1402, "message": "media fetch failed", "data": None}),
            envelope(prediction("b" * 32, "created")),
        ]
    )
    deliver_upload(stack, "inbox/hugo/face.png", PNG_BYTES)
    failed = deliver_upload(stack, "inbox/hugo/voice.mp3", MP3_BYTES)["results"][0]
    assert pipeline().tasks.get(failed["task_id"]).status is TaskStatus.FAILED  # type: ignore[union-attr]
    # When the user uploads the same two files again
    deliver_upload(stack, "inbox/hugo/face.png", PNG_BYTES)
    retried = deliver_upload(stack, "inbox/hugo/voice.mp3", MP3_BYTES)["results"][0]
    # Then a new task is submitted for them, and the failed one keeps its history
    assert retried["action"] == "submitted" and retried["task_id"] != failed["task_id"]
    assert route.call_count == 2
    assert pipeline().tasks.get(failed["task_id"]).status is TaskStatus.FAILED  # type: ignore[union-attr]


def test_job_json_options_reach_the_provider(stack: Stack, provider_http: respx.MockRouter):
    # Given job.json asks for the pro model and a prompt, uploaded before the media
    submit = mock_wavespeed_submit(provider_http)
    upload(stack, "inbox/hank/job.json", json.dumps({"prompt": "a calm newsreader", "mode": "pro"}).encode())
    # When the pair arrives
    deliver_upload(stack, "inbox/hank/face.png", PNG_BYTES)
    deliver_upload(stack, "inbox/hank/voice.mp3", MP3_BYTES)
    # Then the pro model got the prompt
    assert "kling-v1-ai-avatar-pro" in str(submit.calls[0].request.url)
    assert submitted_json(submit)["prompt"] == "a calm newsreader"


def test_invalid_job_json_rejects_the_pair_without_a_provider_call(stack: Stack, provider_http: respx.MockRouter):
    # Given a job.json with an unknown option
    submit = mock_wavespeed_submit(provider_http)
    upload(stack, "inbox/ivy/job.json", b'{"mood": "happy"}')
    # When the pair arrives
    deliver_upload(stack, "inbox/ivy/face.png", PNG_BYTES)
    result = deliver_upload(stack, "inbox/ivy/voice.mp3", MP3_BYTES)
    # Then the task is REJECTED with the reason, and nothing was sent to WaveSpeed
    assert result["results"][0]["action"] == "rejected"
    task = pipeline().tasks.get(result["results"][0]["task_id"])
    assert task is not None and task.status is TaskStatus.REJECTED and "job.json" in (task.reason or "")
    assert submit.call_count == 0


def test_provider_input_error_fails_the_task_with_the_code(stack: Stack, provider_http: respx.MockRouter):
    # Given WaveSpeed refuses the inputs (envelope code 1402: media fetch failed)
    route = provider_http.post(url__regex=r".*/api/v3/kwaivgi/.*").mock(
        return_value=httpx.Response(200, json={"code": 1402, "message": "media fetch failed", "data": None})
    )
    deliver_upload(stack, "inbox/jack.png", PNG_BYTES)
    result = deliver_upload(stack, "inbox/jack.wav", MP3_BYTES)
    # Then the task FAILED once, with the code in its reason, and was not retried
    task = pipeline().tasks.get(result["results"][0]["task_id"])
    assert task is not None and task.status is TaskStatus.FAILED and "1402" in (task.reason or "")
    assert route.call_count == 1


def test_provider_outage_schedules_a_retry_instead_of_failing(stack: Stack, provider_http: respx.MockRouter):
    # Given WaveSpeed answers 503 to every submission
    route = provider_http.post(url__regex=r".*/api/v3/kwaivgi/.*").mock(
        return_value=httpx.Response(503, json={"message": "overloaded"})
    )
    deliver_upload(stack, "inbox/kim.png", PNG_BYTES)
    result = deliver_upload(stack, "inbox/kim.mp3", MP3_BYTES)
    # Then the submit backed off within its budget, and the task waits for the poller's retry
    task = pipeline().tasks.get(result["results"][0]["task_id"])
    assert result["results"][0]["action"] == "retry-scheduled"
    assert task is not None and task.status is TaskStatus.SUBMITTING and task.submit_retry_at is not None
    assert route.call_count == 3


def test_every_log_line_about_a_pair_names_its_job_and_then_its_task(
    stack: Stack, provider_http: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
):
    # Given a provider that accepts, and the function's log stream captured
    mock_wavespeed_submit(provider_http)
    log = io.StringIO()
    monkeypatch.setattr(submit_logger.registered_handler, "stream", log)
    # When the two halves of a pair arrive
    deliver_upload(stack, "inbox/gina/face.png", PNG_BYTES)
    task_id = deliver_upload(stack, "inbox/gina/voice.mp3", MP3_BYTES)["results"][0]["task_id"]
    # Then every log line names the job, and every line written once the task existed names the task too
    lines = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith('{"level"')]
    assert lines and all(line.get("job") == "gina" for line in lines)
    submitted = next(i for i, line in enumerate(lines) if line["message"] == "inputs checked")
    assert all(line.get("task_id") == task_id for line in lines[submitted:])
