"""The finalize function (stream-triggered) and the poller (scheduled) against moto; pairs reach the provider through
the dispatcher, fed the task table's stream."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import boto3
import httpx
import pytest
import respx
from finalize_handler import lambda_handler as finalize
from handlers.helpers import (
    MP3_BYTES,
    PNG_BYTES,
    TaskStream,
    deliver_upload,
    envelope,
    mock_wavespeed_submit,
    prediction,
)
from poller_handler import lambda_handler as poller
from support.aws import REGION, ROOT, TABLE, WAVESPEED_BASE_URL, Stack
from support.events import FakeLambdaContext, sample, stream_event
from support.mp4 import fake_mp4

from avatar_local.twin.template import function_by_id, load_template
from avatar_pipeline.config import SenderSettings
from avatar_pipeline.domain.models import Task, TaskStatus
from avatar_pipeline.providers.registry import PROVIDERS
from avatar_pipeline.services.tracking import LATE_VIDEO_CHECK_EVERY
from avatar_pipeline.wiring import pipeline

PREDICTION_ID = "e" * 32
OUTPUT_URL = "https://d111111abcdef8.cloudfront.net/output/dave.mp4"
MP4_BYTES = fake_mp4(4096)
RESULT_URL = f"{WAVESPEED_BASE_URL}/api/v3/predictions/{PREDICTION_ID}/result"
# The poller starts with its whole timeout ahead of it (it dispatches only with a submission's budget left).
POLLER_TIMEOUT_MS = function_by_id(load_template(ROOT / "template.yaml"), "PollerFunction").timeout * 1000


def stored_item(task_id: str) -> dict[str, Any]:
    table = boto3.resource("dynamodb", region_name=REGION).Table(TABLE)
    return table.get_item(Key={"pk": f"TASK#{task_id}"}, ConsistentRead=True)["Item"]


def deliver_stream_change(task_id: str, old: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the table's stream would hand finalize for the task's latest write."""
    return finalize(stream_event(stored_item(task_id), old), FakeLambdaContext(remaining_ms=900_000))


@pytest.fixture
def submitted_task(stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream) -> Task:
    mock_wavespeed_submit(provider_http, prediction_id=PREDICTION_ID)
    deliver_upload(stack, "inbox/dave/face.png", PNG_BYTES)
    task_id = deliver_upload(stack, "inbox/dave/voice.mp3", MP3_BYTES)["results"][0]["task_id"]
    task_stream.settle()
    task = pipeline().tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.SUBMITTED
    return task


def poll_at(moment: Any) -> dict[str, Any]:
    pipeline(SenderSettings).clock = lambda: moment  # the poller's own pipeline, as its container has it
    return poller(sample("schedule.json"), FakeLambdaContext(remaining_ms=POLLER_TIMEOUT_MS))


def render_slots() -> set[str]:
    quota = pipeline().tasks.get_quota("wavespeed")
    return set(quota.holders) if quota else set()


def test_poller_completes_a_task_whose_webhook_was_lost_and_finalize_delivers_one_notification(
    stack: Stack, submitted_task: Task, provider_http: respx.MockRouter
):
    # Given the webhook never came, the provider's result says completed, and the CDN serves the MP4
    result = provider_http.get(RESULT_URL).mock(
        return_value=envelope(prediction(PREDICTION_ID, "completed", outputs=[OUTPUT_URL]))
    )
    provider_http.get(OUTPUT_URL).mock(return_value=httpx.Response(200, content=MP4_BYTES))
    # When the poller runs after the task became due
    report = poll_at(submitted_task.next_check_at + timedelta(seconds=1))  # type: ignore[operator]
    ready_item = stored_item(submitted_task.task_id)
    # And finalize gets the OUTPUT_READY change, then the COMPLETED change, and the stream repeats the last one
    deliver_stream_change(submitted_task.task_id)
    deliver_stream_change(submitted_task.task_id, old=ready_item)
    deliver_stream_change(submitted_task.task_id, old=ready_item)
    # Then the poller asked once, the video is in outputs/, and exactly one notification went out
    assert result.call_count == 1 and report["actions"] == {"news-succeeded": 1}
    # and, the dispatcher not having been told (its stream record lost), the next pass gives the render slot back
    assert poll_at(submitted_task.next_check_at + timedelta(seconds=2))["actions"] == {"slot-reclaimed": 1}  # type: ignore[operator]
    assert render_slots() == set()
    task = pipeline().tasks.get(submitted_task.task_id)
    assert task is not None and task.status is TaskStatus.COMPLETED and task.notified_at is not None
    key = f"outputs/dave/{task.task_id}.mp4"
    assert boto3.client("s3").get_object(Bucket=stack.bucket, Key=key)["Body"].read() == MP4_BYTES
    notifications = stack.notifications()
    assert len(notifications) == 1
    message = notifications[0]
    assert message["attributes"] == {"status": "COMPLETED", "job": "dave"}
    assert message["body"]["output"] == f"s3://{stack.bucket}/{key}"
    assert message["body"]["inputs"] == {
        "image": f"s3://{stack.bucket}/inbox/dave/face.png",
        "audio": f"s3://{stack.bucket}/inbox/dave/voice.mp3",
    }
    assert message["body"]["download_url"].startswith("https://") and message["body"]["reason"] is None
    assert "dave" in message["subject"]


def test_output_that_is_not_an_mp4_fails_the_task_with_a_reason(
    stack: Stack, submitted_task: Task, provider_http: respx.MockRouter
):
    # Given a task whose provider output turns out to be an HTML error page
    from avatar_pipeline.domain.models import ProviderJob, ProviderJobStatus
    from avatar_pipeline.services.tracking import record_provider_news

    news = ProviderJob(provider_task_id=PREDICTION_ID, status=ProviderJobStatus.SUCCEEDED, output_url=OUTPUT_URL)
    record_provider_news(pipeline(), submitted_task.task_id, news)
    provider_http.get(OUTPUT_URL).mock(return_value=httpx.Response(200, content=b"<html>oops</html>" * 10))
    # When finalize runs, and the FAILED change reaches it
    response = deliver_stream_change(submitted_task.task_id)
    deliver_stream_change(submitted_task.task_id)
    # Then the batch succeeded (a handled outcome), the task FAILED, and one failure notification says why
    assert response == {"batchItemFailures": []}
    task = pipeline().tasks.get(submitted_task.task_id)
    assert task is not None and task.status is TaskStatus.FAILED and "MP4" in (task.reason or "")
    notifications = stack.notifications()
    assert [n["body"]["status"] for n in notifications] == ["FAILED"]
    assert "MP4" in notifications[0]["body"]["reason"]


def test_output_on_a_host_outside_the_allow_list_fails_the_task_without_being_requested(
    stack: Stack, submitted_task: Task, provider_http: respx.MockRouter
):
    # Given a task whose provider output URL is on a host the default allow-list does not name
    from avatar_pipeline.domain.models import ProviderJob, ProviderJobStatus
    from avatar_pipeline.services.tracking import record_provider_news

    elsewhere = "https://attacker.example/output/video.mp4?token=s3cr3t"
    download = provider_http.get(elsewhere).mock(return_value=httpx.Response(200, content=MP4_BYTES))
    news = ProviderJob(provider_task_id=PREDICTION_ID, status=ProviderJobStatus.SUCCEEDED, output_url=elsewhere)
    record_provider_news(pipeline(), submitted_task.task_id, news)
    # When finalize runs, and the FAILED change reaches it
    response = deliver_stream_change(submitted_task.task_id)
    deliver_stream_change(submitted_task.task_id)
    # Then nothing was requested, the task FAILED at once (no retry) and its notification says why, without the token
    assert response == {"batchItemFailures": []} and download.call_count == 0
    task = pipeline().tasks.get(submitted_task.task_id)
    assert task is not None and task.status is TaskStatus.FAILED and task.finalize_attempts == 1
    assert "not in the allowed output hosts" in (task.reason or "") and "s3cr3t" not in (task.reason or "")
    notifications = stack.notifications()
    assert [n["body"]["status"] for n in notifications] == ["FAILED"]


def test_orphan_image_times_out_with_one_notification(stack: Stack, provider_http: respx.MockRouter):
    # Given an image whose audio never comes
    deliver_upload(stack, "inbox/erin.jpg", PNG_BYTES)
    slot, _ = pipeline().tasks.list_job("erin")
    assert slot is not None and slot.next_check_at is not None
    # When the poller runs after the pairing deadline, twice
    report = poll_at(slot.next_check_at + timedelta(seconds=1))
    poll_at(slot.next_check_at + timedelta(seconds=120))
    _, tasks = pipeline().tasks.list_job("erin")
    # Then one TIMED_OUT task explains what was missing, and finalize announces it once
    assert report["actions"] == {"orphan-timed-out": 1}
    assert len(tasks) == 1 and tasks[0].status is TaskStatus.TIMED_OUT
    assert tasks[0].reason == "no audio arrived for inbox/erin.jpg within 30 min"
    deliver_stream_change(tasks[0].task_id)
    deliver_stream_change(tasks[0].task_id)
    assert [n["body"]["reason"] for n in stack.notifications()] == [tasks[0].reason]


def test_poller_times_out_a_render_the_provider_never_finishes_and_keeps_watching_for_it(
    stack: Stack, submitted_task: Task, provider_http: respx.MockRouter
):
    # Given WaveSpeed started the video (the poller learnt it), and still reports it as processing much later
    result = provider_http.get(RESULT_URL).mock(return_value=envelope(prediction(PREDICTION_ID, "processing")))
    started_at = submitted_task.next_check_at + timedelta(seconds=1)  # type: ignore[operator]
    assert poll_at(started_at)["actions"] == {"news-processing": 1}
    render_limit = timedelta(seconds=pipeline().settings.max_render_seconds)
    # When the poller looks just before the render's own clock (from when it started) runs out, and again when the
    # task is next due, after it ran out
    before_limit = started_at + render_limit - timedelta(seconds=1)
    before = poll_at(before_limit)
    after_limit = before_limit + timedelta(seconds=pipeline().settings.poll_after_seconds)
    after = poll_at(after_limit)
    # Then after one last look at the provider it ends TIMED_OUT, its slot given back, and it stays watched: a video
    # WaveSpeed delivers later (until it would delete it) is still kept
    assert before["actions"] == {"no-news": 1}
    assert after["actions"] == {"timed-out": 1}
    assert result.call_count == 3
    task = pipeline().tasks.get(submitted_task.task_id)
    assert task is not None and task.status is TaskStatus.TIMED_OUT
    assert task.reason == "WaveSpeed did not finish the video within 60 min of starting it"
    assert task.watch_until == after_limit + PROVIDERS["wavespeed"].output_retention
    # (with neither the dispatcher nor finalize fed the stream, the poller's next pass frees the slot and announces it)
    assert poll_at(after_limit + timedelta(seconds=1))["actions"] == {"slot-reclaimed": 1, "notify-published": 1}
    assert render_slots() == set()


def test_poller_times_out_a_task_the_provider_accepted_but_never_started(
    stack: Stack, submitted_task: Task, provider_http: respx.MockRouter
):
    # Given WaveSpeed keeps the accepted task in its own queue ("created") for longer than the provider-queue limit
    provider_http.get(RESULT_URL).mock(return_value=envelope(prediction(PREDICTION_ID, "created")))
    queue_limit = timedelta(seconds=pipeline().settings.max_provider_queue_seconds)
    # When the poller runs after that limit, counted from WaveSpeed's acceptance
    report = poll_at(submitted_task.status_since + queue_limit + timedelta(seconds=1))
    # Then the task ends TIMED_OUT with that reason
    assert report["actions"] == {"timed-out": 1}
    task = pipeline().tasks.get(submitted_task.task_id)
    assert task is not None and task.status is TaskStatus.TIMED_OUT
    assert task.reason == "WaveSpeed had not started the video 360 min after accepting it"


def test_a_video_delivered_after_its_time_out_is_copied_and_announced_again(
    stack: Stack, submitted_task: Task, provider_http: respx.MockRouter
):
    # Given a task that timed out at WaveSpeed, and whose time-out was announced
    result = provider_http.get(RESULT_URL).mock(return_value=envelope(prediction(PREDICTION_ID, "created")))
    queue_limit = timedelta(seconds=pipeline().settings.max_provider_queue_seconds)
    timed_out_at = submitted_task.status_since + queue_limit + timedelta(seconds=1)
    poll_at(timed_out_at)
    deliver_stream_change(submitted_task.task_id)
    assert [n["body"]["status"] for n in stack.notifications()] == ["TIMED_OUT"]
    # When the poller looks at the watched task while WaveSpeed is still making the video, and again once it is done
    result.mock(return_value=envelope(prediction(PREDICTION_ID, "processing")))
    watching = poll_at(timed_out_at + timedelta(seconds=1))
    result.mock(return_value=envelope(prediction(PREDICTION_ID, "completed", outputs=[OUTPUT_URL])))
    provider_http.get(OUTPUT_URL).mock(return_value=httpx.Response(200, content=MP4_BYTES))
    too_soon = poll_at(timed_out_at + LATE_VIDEO_CHECK_EVERY)
    report = poll_at(timed_out_at + LATE_VIDEO_CHECK_EVERY + timedelta(seconds=1))
    # And finalize gets the OUTPUT_READY change, then the COMPLETED one
    ready_item = stored_item(submitted_task.task_id)
    deliver_stream_change(submitted_task.task_id)
    deliver_stream_change(submitted_task.task_id, old=ready_item)
    # Then the paid video was kept: copied, the task COMPLETED, and a second notification overturns the first
    assert watching["actions"] == {"slot-reclaimed": 1, "watching": 1} and too_soon["actions"] == {}
    assert report["actions"] == {"late-video": 1}
    task = pipeline().tasks.get(submitted_task.task_id)
    assert task is not None and task.status is TaskStatus.COMPLETED and task.corrects is TaskStatus.TIMED_OUT
    key = f"outputs/dave/{task.task_id}.mp4"
    assert boto3.client("s3").get_object(Bucket=stack.bucket, Key=key)["Body"].read() == MP4_BYTES
    (notification,) = stack.notifications()
    assert notification["body"]["status"] == "COMPLETED" and notification["body"]["corrects"] == "TIMED_OUT"
    assert notification["subject"].startswith("Your talking-avatar video is ready after all")


def test_sample_stream_event_is_accepted_and_a_vanished_task_is_skipped(stack: Stack):
    # Given the sample OUTPUT_READY record names a task that is not (or no longer) in the table
    # When finalize receives it
    response = finalize(sample("finalize_output_ready.json"), FakeLambdaContext())
    # Then the record is done with (no retry loop on something that cannot be finished) and nothing was written
    assert response == {"batchItemFailures": []}
    assert pipeline().tasks.get("0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e01") is None


def test_a_failing_record_fails_the_invocation_unless_records_before_it_were_handled(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given finishing a task fails (say, DynamoDB answers with an error), and two stream records: one about a task
    # that is not in the table (handled: skipped), then one about a task whose finishing fails
    import finalize_handler

    def failing(task_id: str, *_: Any) -> str:
        if task_id == "0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e02":
            raise RuntimeError("DynamoDB is unavailable")
        return "ignored"

    monkeypatch.setattr(finalize_handler, "_finish", failing)
    handled, failing_record = sample("finalize_output_ready.json"), sample("finalize_output_ready.json")
    failing_record["Records"][0]["dynamodb"]["NewImage"]["task_id"] = {"S": "0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e02"}
    failing_record["Records"][0]["dynamodb"]["SequenceNumber"] = "222"
    # When the failing record comes first, then the invocation fails (as Powertools' batch utility made it): the
    # function's errors alarm counts it, and Lambda retries the batch
    with pytest.raises(RuntimeError, match="DynamoDB is unavailable"):
        finalize(failing_record, FakeLambdaContext())
    # And when it comes after a handled record, it alone is reported, so Lambda retries from it
    both = {"Records": handled["Records"] + failing_record["Records"]}
    assert finalize(both, FakeLambdaContext()) == {"batchItemFailures": [{"itemIdentifier": "222"}]}


def test_poller_reports_how_long_the_most_overdue_task_waited(
    submitted_task: Task, provider_http: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a task that fell due ten minutes ago, and a provider still working on it
    assert submitted_task.next_check_at is not None
    provider_http.get(RESULT_URL).mock(return_value=envelope(prediction(PREDICTION_ID, "processing")))
    # When the poller runs then
    poll_at(submitted_task.next_check_at + timedelta(minutes=10))
    # Then the stuck-task alarm's metric carries the wait
    lines = [line for line in capsys.readouterr().out.splitlines() if '"OldestDueSeconds"' in line]
    assert lines and '"OldestDueSeconds":[600.0]' in lines[-1]
