"""The submit function against moto: it pairs, checks and queues; the dispatcher (fed the task table's stream as its
mapping would) sends the first in line to WaveSpeed, mocked at the HTTP layer."""

from __future__ import annotations

import io
import json
import threading
from datetime import timedelta
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
    TaskStream,
    all_actions,
    deliver_upload,
    envelope,
    mock_wavespeed_submit,
    prediction,
    submitted_json,
    upload,
)
from submit_handler import lambda_handler
from submit_handler import logger as submit_logger
from support.aws import REGION, Stack
from support.events import FakeLambdaContext, sample

from avatar_pipeline import wiring
from avatar_pipeline.domain.models import TaskStatus, utcnow
from avatar_pipeline.wiring import pipeline

FIRST_IN_LINE = "1st in line for WaveSpeed (3 renders at once, 5 submissions a minute)"


def test_folder_pair_is_queued_then_submitted_once_with_presigned_inputs_and_webhook(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream
):
    # Given WaveSpeed accepts submissions
    submit = mock_wavespeed_submit(provider_http, prediction_id="f" * 32)
    # When the face and then the voice land in one job folder
    first = deliver_upload(stack, "inbox/alice/face.png", PNG_BYTES)
    second = deliver_upload(stack, "inbox/alice/voice.mp3", MP3_BYTES)
    # Then the first waits, the second puts one task in WaveSpeed's line, and the submit function sent nothing
    assert first["results"][0]["action"] == "waiting"
    assert second["results"][0]["action"] == "queued"
    task_id = second["results"][0]["task_id"]
    queued = pipeline().tasks.get(task_id)
    assert queued is not None and queued.status is TaskStatus.QUEUED and queued.queued_at is not None
    assert (queued.reason or "").endswith(f"; Kling v1 AI Avatar (standard), {FIRST_IN_LINE}")
    assert pipeline().tasks.queue_head("wavespeed", 10) == [task_id]
    assert submit.call_count == 0
    # When the table's stream reaches the dispatcher
    answers = task_stream.settle()
    # Then it sent the task exactly once, with presigned inputs and the webhook naming the task
    assert all_actions(answers) == {"submit-submitted": 1}
    assert submit.call_count == 1
    body = submitted_json(submit)
    assert "inbox/alice/face.png" in body["image"] and "X-Amz-Signature" in body["image"]
    assert "inbox/alice/voice.mp3" in body["audio"]
    webhook = urlparse(parse_qs(urlparse(str(submit.calls[0].request.url)).query)["webhook"][0])
    assert webhook.path.endswith("/webhooks/wavespeed") and parse_qs(webhook.query)["task_id"] == [task_id]
    task = pipeline().tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.SUBMITTED and task.provider_task_id == "f" * 32
    assert [h.to_status for h in task.history] == [
        TaskStatus.WAITING_FOR_PAIR,
        TaskStatus.QUEUED,
        TaskStatus.SUBMITTING,
        TaskStatus.SUBMITTED,
    ]
    # And it left the line, holding one of WaveSpeed's render slots
    assert pipeline().tasks.queue_head("wavespeed", 10) == []
    quota = pipeline().tasks.get_quota("wavespeed")
    assert quota is not None and set(quota.holders) == {task_id}


def test_sample_events_url_encoded_keys_and_uppercase_extension_make_one_pair(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream
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
    # When both arrive, and the dispatcher gets the table's changes
    first = lambda_handler(image_event, FakeLambdaContext())["results"][0]
    second = lambda_handler(audio_event, FakeLambdaContext())["results"][0]
    task_stream.settle()
    # Then the keys were decoded, the .PNG counted as an image, the multipart upload as audio, and one task submitted
    assert first == {"key": "inbox/alice smith/Face Photo.PNG", "action": "waiting", "task_id": None}
    assert second["key"] == "inbox/alice smith/voice.mp3" and second["action"] == "queued"
    task = pipeline().tasks.get(second["task_id"])
    assert task is not None and task.job == "alice smith" and task.image is not None
    assert task.image.key == "inbox/alice smith/Face Photo.PNG"
    assert task.status is TaskStatus.SUBMITTED
    assert "Face%20Photo.PNG" in submitted_json(submit)["image"]
    assert submit.call_count == 1


def test_duplicate_s3_event_queues_and_submits_nothing_new(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream
):
    # Given a pair that was already queued and submitted
    submit = mock_wavespeed_submit(provider_http)
    deliver_upload(stack, "inbox/bob.jpg", PNG_BYTES)
    audio_event = upload(stack, "inbox/bob.mp3", MP3_BYTES)
    lambda_handler(audio_event, FakeLambdaContext())
    task_stream.settle()
    # When S3 delivers the same event again
    again = lambda_handler(audio_event, FakeLambdaContext())
    # Then it is recognised as the same pair: nothing joins the line, nothing is submitted
    assert again["results"][0]["action"] == "duplicate"
    assert task_stream.settle() == []
    assert submit.call_count == 1


def test_two_halves_arriving_at_the_same_moment_make_exactly_one_task(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream
):
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
        # Then exactly one of the two cut and queued the task; the other waited or saw a duplicate
        actions = sorted(result["action"] for result in results)
        assert actions in (["queued", "waiting"], ["duplicate", "queued"]), actions
        _, tasks = pipeline().tasks.list_job(f"race{attempt}")
        assert len(tasks) == 1 and tasks[0].status is TaskStatus.QUEUED
    # And the line holds the ten, in the order they were cut, none sent yet
    assert pipeline().tasks.queue_length("wavespeed") == 10 and submit.call_count == 0
    # When the dispatcher gets the changes, WaveSpeed (3 renders at once) gets the first three, once each
    task_stream.settle()
    assert submit.call_count == 3
    sent = {pipeline().tasks.get(task_id).job for task_id in pipeline().tasks.get_quota("wavespeed").holders}  # type: ignore[union-attr]
    assert sent == {"race0", "race1", "race2"}
    assert pipeline().tasks.queue_length("wavespeed") == 7


def test_byte_identical_reupload_submits_nothing_and_changed_content_makes_a_new_task(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream
):
    # Given a submitted pair
    submit = mock_wavespeed_submit(provider_http)
    deliver_upload(stack, "inbox/gina/face.png", PNG_BYTES)
    deliver_upload(stack, "inbox/gina/voice.mp3", MP3_BYTES)
    task_stream.settle()
    # When the same bytes are uploaded again, both files
    deliver_upload(stack, "inbox/gina/face.png", PNG_BYTES)
    same = deliver_upload(stack, "inbox/gina/voice.mp3", MP3_BYTES)
    task_stream.settle()
    # Then it maps onto the task those bytes already made: nothing is paid twice
    assert same["results"][0]["action"] == "duplicate"
    assert submit.call_count == 1
    # When a different face and voice are uploaded to the same job
    deliver_upload(stack, "inbox/gina/face.png", OTHER_PNG_BYTES)
    changed = deliver_upload(stack, "inbox/gina/voice.mp3", OTHER_MP3_BYTES)
    task_stream.settle()
    # Then they make a second task, which is sent too
    assert changed["results"][0]["action"] == "queued"
    _, tasks = pipeline().tasks.list_job("gina")
    assert len(tasks) == 2 and submit.call_count == 2


def test_reuploading_the_files_of_a_failed_task_tries_again(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream
):
    # Given a pair WaveSpeed refused (its media could not be fetched)
    route = provider_http.post(url__regex=r".*/api/v3/kwaivgi/.*").mock(
        side_effect=[
            httpx.Response(200, json={"code": 1402, "message": "media fetch failed", "data": None}),
            envelope(prediction("b" * 32, "created")),
        ]
    )
    deliver_upload(stack, "inbox/hugo/face.png", PNG_BYTES)
    failed = deliver_upload(stack, "inbox/hugo/voice.mp3", MP3_BYTES)["results"][0]
    assert all_actions(task_stream.settle()) == {"submit-failed": 1}
    assert pipeline().tasks.get(failed["task_id"]).status is TaskStatus.FAILED  # type: ignore[union-attr]
    # When the user uploads the same two files again
    deliver_upload(stack, "inbox/hugo/face.png", PNG_BYTES)
    retried = deliver_upload(stack, "inbox/hugo/voice.mp3", MP3_BYTES)["results"][0]
    task_stream.settle()
    # Then a new task is queued and submitted for them, and the failed one keeps its history
    assert retried["action"] == "queued" and retried["task_id"] != failed["task_id"]
    assert route.call_count == 2
    assert pipeline().tasks.get(retried["task_id"]).status is TaskStatus.SUBMITTED  # type: ignore[union-attr]
    assert pipeline().tasks.get(failed["task_id"]).status is TaskStatus.FAILED  # type: ignore[union-attr]
    # And the failed task gave its render slot back
    assert set(pipeline().tasks.get_quota("wavespeed").holders) == {retried["task_id"]}  # type: ignore[union-attr]


def test_job_json_options_reach_the_provider(stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream):
    # Given job.json asks for the pro model and a prompt, uploaded before the media
    submit = mock_wavespeed_submit(provider_http)
    upload(stack, "inbox/hank/job.json", json.dumps({"prompt": "a calm newsreader", "mode": "pro"}).encode())
    # When the pair arrives and is sent
    deliver_upload(stack, "inbox/hank/face.png", PNG_BYTES)
    deliver_upload(stack, "inbox/hank/voice.mp3", MP3_BYTES)
    task_stream.settle()
    # Then the pro model got the prompt
    assert "kling-v1-ai-avatar-pro" in str(submit.calls[0].request.url)
    assert submitted_json(submit)["prompt"] == "a calm newsreader"


def test_invalid_job_json_rejects_the_pair_without_a_provider_call(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream
):
    # Given a job.json with an unknown option
    submit = mock_wavespeed_submit(provider_http)
    upload(stack, "inbox/ivy/job.json", b'{"mood": "happy"}')
    # When the pair arrives
    deliver_upload(stack, "inbox/ivy/face.png", PNG_BYTES)
    result = deliver_upload(stack, "inbox/ivy/voice.mp3", MP3_BYTES)
    # Then the task is REJECTED with the reason, never joins the line, and nothing was sent to WaveSpeed
    assert result["results"][0]["action"] == "rejected"
    task = pipeline().tasks.get(result["results"][0]["task_id"])
    assert task is not None and task.status is TaskStatus.REJECTED and "job.json" in (task.reason or "")
    assert task_stream.settle() == []
    assert submit.call_count == 0


def test_provider_input_error_fails_the_task_with_the_code(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream
):
    # Given WaveSpeed refuses the inputs (envelope code 1402: media fetch failed)
    route = provider_http.post(url__regex=r".*/api/v3/kwaivgi/.*").mock(
        return_value=httpx.Response(200, json={"code": 1402, "message": "media fetch failed", "data": None})
    )
    deliver_upload(stack, "inbox/jack.png", PNG_BYTES)
    result = deliver_upload(stack, "inbox/jack.wav", MP3_BYTES)
    task_stream.settle()
    # Then the task FAILED once, with the code in its reason, and was not retried
    task = pipeline().tasks.get(result["results"][0]["task_id"])
    assert task is not None and task.status is TaskStatus.FAILED and "1402" in (task.reason or "")
    assert route.call_count == 1


def test_provider_outage_puts_the_task_back_in_its_place_in_line(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream
):
    # Given WaveSpeed answers 503 to every submission
    route = provider_http.post(url__regex=r".*/api/v3/kwaivgi/.*").mock(
        return_value=httpx.Response(503, json={"message": "overloaded"})
    )
    deliver_upload(stack, "inbox/kim.png", PNG_BYTES)
    result = deliver_upload(stack, "inbox/kim.mp3", MP3_BYTES)
    queued = pipeline().tasks.get(result["results"][0]["task_id"])
    assert queued is not None
    # When the dispatcher sends it
    before = utcnow()
    answers = task_stream.settle()
    # Then the 503 was retried within the call (it proves nothing was created), and the task went back to its very
    # place in line rather than failing
    assert route.call_count == 3
    assert all_actions(answers) == {"submit-requeued": 1}
    task = pipeline().tasks.get(queued.task_id)
    assert task is not None and task.status is TaskStatus.QUEUED and task.queued_at == queued.queued_at
    assert "turned it away" in (task.reason or "") and "503" in (task.reason or "")
    assert pipeline().tasks.queue_head("wavespeed", 10) == [task.task_id]
    # And WaveSpeed's line pauses for one rate window, with one wake-up of the dispatcher scheduled for its end
    quota = pipeline().tasks.get_quota("wavespeed")
    assert quota is not None and quota.holders == {} and quota.paused_until is not None
    assert before + timedelta(seconds=60) <= quota.paused_until <= utcnow() + timedelta(seconds=60)
    assert quota.wake_at == quota.paused_until
    assert answers[-1]["waiting"] == "WaveSpeed asked us to slow down (rate limited)"
    assert stack.scheduled_wakeups() == 1


def test_provider_rate_limit_is_sent_once_and_pauses_the_line_as_long_as_it_asks(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream
):
    # Given WaveSpeed answers 429 with Retry-After: 30
    route = provider_http.post(url__regex=r".*/api/v3/kwaivgi/.*").mock(
        return_value=httpx.Response(429, headers={"Retry-After": "30"}, json={"message": "too many requests"})
    )
    deliver_upload(stack, "inbox/lee.png", PNG_BYTES)
    task_id = deliver_upload(stack, "inbox/lee.mp3", MP3_BYTES)["results"][0]["task_id"]
    # When the dispatcher sends the task
    before = utcnow()
    answers = task_stream.settle()
    # Then the 429 was not retried within the call: the line waits instead, for as long as WaveSpeed asked
    assert route.call_count == 1
    assert all_actions(answers) == {"submit-requeued": 1}
    task = pipeline().tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.QUEUED and task.submit_attempts == 1
    quota = pipeline().tasks.get_quota("wavespeed")
    assert quota is not None and quota.paused_until is not None and quota.holders == {}
    assert before + timedelta(seconds=30) <= quota.paused_until <= utcnow() + timedelta(seconds=30)
    assert stack.scheduled_wakeups() == 1


def test_submit_function_queues_without_reading_any_provider_secret(
    stack: Stack, provider_http: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
):
    # Given WaveSpeed's secret cannot be read (the submit function has no permission to read it any more)
    secrets = boto3.client("secretsmanager", region_name=REGION)
    secrets.delete_secret(SecretId=stack.secret_id, ForceDeleteWithoutRecovery=True)
    wiring.pipeline.cache_clear()
    submit = mock_wavespeed_submit(provider_http)
    # When a pair arrives
    deliver_upload(stack, "inbox/mona/face.png", PNG_BYTES)
    result = deliver_upload(stack, "inbox/mona/voice.mp3", MP3_BYTES)["results"][0]
    # Then it is queued all the same, and nothing was sent
    assert result["action"] == "queued"
    assert pipeline().tasks.get(result["task_id"]).status is TaskStatus.QUEUED  # type: ignore[union-attr]
    assert submit.call_count == 0


def test_a_pair_joining_a_line_is_told_its_place(stack: Stack, provider_http: respx.MockRouter):
    # Given one pair already waits in WaveSpeed's line
    deliver_upload(stack, "inbox/nina/face.png", PNG_BYTES)
    deliver_upload(stack, "inbox/nina/voice.mp3", MP3_BYTES)
    # When a second pair is queued behind it
    deliver_upload(stack, "inbox/omar/face.png", OTHER_PNG_BYTES)
    second = deliver_upload(stack, "inbox/omar/voice.mp3", OTHER_MP3_BYTES)["results"][0]
    # Then its reason says where it stands, and the line keeps them in order
    task = pipeline().tasks.get(second["task_id"])
    assert task is not None
    assert (task.reason or "").endswith(", 2nd in line for WaveSpeed (3 renders at once, 5 submissions a minute)")
    assert pipeline().tasks.queue_head("wavespeed", 10)[-1] == task.task_id


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
