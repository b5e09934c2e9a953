"""The webhook function against moto: authenticate, record with a conditional write, answer fast."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
import respx
from handlers.helpers import (
    MP3_BYTES,
    PNG_BYTES,
    deliver_upload,
    envelope,
    mock_wavespeed_submit,
    prediction,
)
from support.aws import WAVESPEED_BASE_URL, WEBHOOK_SECRET, Stack
from support.events import FakeLambdaContext, api_post, sample, signed_headers
from webhook_handler import lambda_handler

from avatar_pipeline.models import Task, TaskStatus
from avatar_pipeline.services.tracking import poll
from avatar_pipeline.wiring import pipeline

PREDICTION_ID = "c" * 32
OUTPUT_URL = "https://d111111abcdef8.cloudfront.net/output/video.mp4"


@pytest.fixture
def submitted_task(stack: Stack, provider_http: respx.MockRouter) -> Task:
    mock_wavespeed_submit(provider_http, prediction_id=PREDICTION_ID)
    deliver_upload(stack, "inbox/carol/face.png", PNG_BYTES)
    task_id = deliver_upload(stack, "inbox/carol/voice.mp3", MP3_BYTES)["results"][0]["task_id"]
    task = pipeline().tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.SUBMITTED
    return task


def callback(
    task_id: str | None,
    body: dict | bytes,
    *,
    secret: str = WEBHOOK_SECRET,
    webhook_id: str = "msg_1",
    timestamp: int | None = None,
) -> dict:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = signed_headers(raw, secret, webhook_id, timestamp or int(time.time()))
    response = lambda_handler(api_post("wavespeed", task_id, raw, headers), FakeLambdaContext())
    return {"status": response["statusCode"], "body": json.loads(response["body"])}


def completed() -> dict:
    return prediction(PREDICTION_ID, "completed", outputs=[OUTPUT_URL])


def test_signed_completion_moves_the_task_to_output_ready(submitted_task: Task):
    # When WaveSpeed calls back, signed, with the finished prediction
    answer = callback(submitted_task.task_id, completed())
    # Then it is recorded and the task is ready for finalize
    assert answer == {"status": 200, "body": {"message": "recorded"}}
    task = pipeline().tasks.get(submitted_task.task_id)
    assert task is not None and task.status is TaskStatus.OUTPUT_READY
    assert task.provider_output_url == OUTPUT_URL


def test_forged_signature_is_refused_without_any_change(submitted_task: Task):
    # When someone signs with a secret that is not ours
    answer = callback(submitted_task.task_id, completed(), secret="whsec_not_the_secret")
    # Then 401, and the task is untouched
    assert answer["status"] == 401
    task = pipeline().tasks.get(submitted_task.task_id)
    assert task is not None and task.version == submitted_task.version and task.status is TaskStatus.SUBMITTED


def test_stale_timestamp_is_refused(submitted_task: Task):
    answer = callback(submitted_task.task_id, completed(), timestamp=int(time.time()) - 301)
    assert answer["status"] == 401
    assert pipeline().tasks.get(submitted_task.task_id).status is TaskStatus.SUBMITTED  # type: ignore[union-attr]


def test_signed_but_malformed_body_is_a_bad_request(submitted_task: Task):
    answer = callback(submitted_task.task_id, b'{"id": "x", "status": ')
    assert answer["status"] == 400
    assert pipeline().tasks.get(submitted_task.task_id).status is TaskStatus.SUBMITTED  # type: ignore[union-attr]


def test_duplicate_webhook_is_acknowledged_and_changes_nothing(submitted_task: Task):
    # Given the completion was recorded once
    callback(submitted_task.task_id, completed(), webhook_id="msg_dup")
    recorded = pipeline().tasks.get(submitted_task.task_id)
    # When the provider delivers the same webhook again
    answer = callback(submitted_task.task_id, completed(), webhook_id="msg_dup")
    # Then 200, a duplicate, with no change: same version, one OUTPUT_READY in history
    assert answer == {"status": 200, "body": {"message": "duplicate"}}
    again = pipeline().tasks.get(submitted_task.task_id)
    assert recorded is not None and again is not None and again.version == recorded.version
    assert [h.to_status for h in again.history].count(TaskStatus.OUTPUT_READY) == 1


def test_late_webhook_after_completion_cannot_move_the_task_back(submitted_task: Task):
    # Given the task completed
    context = pipeline()
    task = context.tasks.get(submitted_task.task_id)
    assert task is not None
    done = task.model_copy(update={"status": TaskStatus.COMPLETED, "version": task.version + 1})
    context.tasks.replace(done, expected=task)
    # When a late "failed" callback arrives for it
    answer = callback(submitted_task.task_id, prediction(PREDICTION_ID, "failed", error="late", code=5000))
    # Then it is acknowledged, and the task stays COMPLETED
    assert answer == {"status": 200, "body": {"message": "unchanged"}}
    assert context.tasks.get(submitted_task.task_id).status is TaskStatus.COMPLETED  # type: ignore[union-attr]


def test_callback_for_an_unknown_task_is_not_found(stack: Stack, provider_http: respx.MockRouter):
    assert callback("no-such-task", completed())["status"] == 404


def test_callback_about_another_prediction_is_a_conflict(submitted_task: Task):
    answer = callback(submitted_task.task_id, prediction("d" * 32, "completed", outputs=[OUTPUT_URL]))
    assert answer["status"] == 409
    assert pipeline().tasks.get(submitted_task.task_id).status is TaskStatus.SUBMITTED  # type: ignore[union-attr]


def test_sample_event_is_understood_by_the_handler(stack: Stack, provider_http: respx.MockRouter):
    # The checked-in sample event is signed with the test secret, but its timestamp is long past: refused as stale.
    response = lambda_handler(sample("webhook_wavespeed_completed.json"), FakeLambdaContext())
    assert response["statusCode"] == 401


def test_webhook_and_poller_racing_produce_one_transition(submitted_task: Task, provider_http: respx.MockRouter):
    # Given the provider's result endpoint also says completed, and the task is due for a poll
    provider_http.get(f"{WAVESPEED_BASE_URL}/api/v3/predictions/{PREDICTION_ID}/result").mock(
        return_value=envelope(completed())
    )
    context = pipeline()
    context.clock = lambda: submitted_task.next_check_at  # type: ignore[assignment, return-value]
    barrier = threading.Barrier(2)
    answers: list[object] = []

    def webhook() -> None:
        barrier.wait()
        answers.append(callback(submitted_task.task_id, completed()))

    def poller() -> None:
        barrier.wait()
        answers.append(poll(context, time_left=lambda: timedelta(minutes=1)))

    # When both record the completion at the same moment
    threads = [threading.Thread(target=webhook), threading.Thread(target=poller)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then exactly one of them moved the task
    task = context.tasks.get(submitted_task.task_id)
    assert task is not None and task.status is TaskStatus.OUTPUT_READY
    assert [h.to_status for h in task.history].count(TaskStatus.OUTPUT_READY) == 1
