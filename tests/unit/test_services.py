"""The use cases (intake, admission, tracking, finishing) end to end through in-memory fakes of every port.

The dispatcher runs as deployed: on the task table's stream (`run_dispatcher`), or called directly (`send_next`) as
a wake-up or the poller calls it."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
from support.fakes import (
    BUCKET,
    CALLBACK_KEY,
    T0,
    Copy,
    World,
    callback_query,
    make_world,
    run_dispatcher,
    upload,
)

from avatar_pipeline.domain.callback_tokens import CallbackTokens
from avatar_pipeline.domain.errors import (
    CallbackMismatchError,
    DeliveryInProgressError,
    InputGoneError,
    OutputCopyInterruptedError,
    OutputUnusableError,
    ProviderConfigError,
    ProviderError,
    ProviderInputError,
    ProviderOutcomeUnknownError,
    ProviderTransientError,
    WebhookAuthError,
)
from avatar_pipeline.domain.models import ProviderJob, ProviderJobStatus, S3Object, Task, TaskStatus
from avatar_pipeline.domain.pairing import content_id
from avatar_pipeline.providers.registry import PROVIDERS
from avatar_pipeline.services.admission import SUBMIT_LEASE, DispatchReport, dispatch
from avatar_pipeline.services.context import UnknownTaskError
from avatar_pipeline.services.finishing import (
    COPY_LEASE,
    COPY_LEASE_MARGIN,
    COPY_RETRY_FIRST,
    COPY_RETRY_MAX,
    FINALIZE_GRACE,
    NOTIFY_LEASE,
    announce,
    copy_backoff,
    finalize_output,
    output_key,
)
from avatar_pipeline.services.intake import UploadOutcome, handle_upload
from avatar_pipeline.services.tracking import (
    LATE_VIDEO_CHECK_EVERY,
    POLL_SAFETY_MARGIN,
    PollReport,
    _expire_orphan,
    poll,
    receive_callback,
    record_provider_news,
)

S = TaskStatus
P = ProviderJobStatus

IMAGE = upload("inbox/alice/face.png", etag="img-1", size=200_000)
AUDIO = upload("inbox/alice/voice.mp3", etag="aud-1", size=300_000)
OUTPUT_URL = "https://cdn.wavespeed.test/outputs/ws-1/video.mp4"
VIDEO = b"\x00\x00\x00\x18ftypisom" + bytes(200)
FINALIZE_TIME = timedelta(minutes=5)
DISPATCH_TIME = timedelta(minutes=5)
RACE_ROUNDS = 50


# --- helpers ---------------------------------------------------------------------------------------------------


def news(status: ProviderJobStatus, provider_task_id: str = "ws-1", **fields: Any) -> ProviderJob:
    if status is P.SUCCEEDED:
        fields.setdefault("output_url", OUTPUT_URL)
    return ProviderJob(provider_task_id=provider_task_id, status=status, **fields)


def moves(task: Task) -> list[tuple[TaskStatus | None, TaskStatus]]:
    return [(entry.from_status, entry.to_status) for entry in task.history]


def stored(w: World, task_id: str | None) -> Task:
    assert task_id is not None
    task = w.tasks.get(task_id)
    assert task is not None, f"no task {task_id}"
    return task


def deliver_pair(w: World, image: S3Object = IMAGE, audio: S3Object = AUDIO) -> UploadOutcome:
    first = handle_upload(w.ctx, image)
    assert first.action == "waiting"
    return handle_upload(w.ctx, audio)


def send_next(w: World, provider: str = "wavespeed") -> DispatchReport:
    """The dispatcher moves `provider`'s line, as a wake-up (or the poller) makes it."""
    return dispatch(w.ctx, provider, lambda: DISPATCH_TIME)  # type: ignore[arg-type]


def queued(w: World, image: S3Object = IMAGE, audio: S3Object = AUDIO) -> Task:
    """A checked pair, waiting in its provider's line (the dispatcher has not seen it yet)."""
    outcome = deliver_pair(w, image, audio)
    assert outcome.action == "queued"
    return stored(w, outcome.task_id)


def submitted(w: World, image: S3Object = IMAGE, audio: S3Object = AUDIO) -> Task:
    """A pair the dispatcher sent (on the stream record of its joining the line), and the provider accepted."""
    task = queued(w, image, audio)
    assert run_dispatcher(w) == {"submit-submitted": 1}
    return stored(w, task.task_id)


def output_ready(w: World, *downloads: Any) -> Task:
    """A task whose video the provider finished; `downloads` script what copying OUTPUT_URL will give."""
    task = submitted(w)
    w.clock.advance(60)
    assert record_provider_news(w.ctx, task.task_id, news(P.SUCCEEDED)) == "recorded"
    run_dispatcher(w)  # its render slot is given back
    w.media.script_download(OUTPUT_URL, *(downloads or (VIDEO,)))
    return stored(w, task.task_id)


def completed(w: World) -> Task:
    task = output_ready(w)
    w.clock.advance(10)
    assert finalize_output(w.ctx, task.task_id, FINALIZE_TIME) == "completed"
    return stored(w, task.task_id)


def run_poll(w: World, left: timedelta = timedelta(minutes=5)) -> PollReport:
    return poll(w.ctx, lambda: left)


def race(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released at the same moment; their results (or their exceptions, re-raised)."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [future.result(timeout=10) for future in futures]


# ============================================================================================== intake


def test_first_half_waits_without_task_or_submission(w: World) -> None:
    # Given nothing uploaded yet
    # When the image arrives alone
    outcome = handle_upload(w.ctx, IMAGE)
    # Then the job waits for its audio: no task, nothing submitted
    assert outcome == UploadOutcome("waiting", job="alice")
    assert w.tasks.all_tasks() == []
    assert w.provider.submit_count == 0
    slot, tasks = w.tasks.list_job("alice")
    assert slot is not None
    assert slot.image == IMAGE
    assert slot.audio is None
    assert slot.waiting_since == T0
    assert tasks == []


def test_second_half_cuts_one_task_into_its_providers_line_without_calling_the_provider(w: World) -> None:
    # Given the image is waiting
    handle_upload(w.ctx, IMAGE)
    # When the audio arrives
    outcome = handle_upload(w.ctx, AUDIO)
    # Then one task is cut and waits, checked, first in WaveSpeed's line: nothing is sent or paid yet
    assert outcome.action == "queued"
    task = w.tasks.only_task()
    assert outcome.task_id == task.task_id == content_id("alice", IMAGE, AUDIO)
    assert task.status is S.QUEUED
    assert task.queued_at == T0
    assert task.reason == (
        "paired inbox/alice/face.png with inbox/alice/voice.mp3 (no inbox/alice/job.json: default options);"
        " Kling v1 AI Avatar (standard), 1st in line for WaveSpeed (3 renders at once, 5 submissions a minute)"
    )
    assert task.estimated_cost_usd == "0.25"
    assert moves(task) == [(None, S.WAITING_FOR_PAIR), (S.WAITING_FOR_PAIR, S.QUEUED)]
    assert w.provider.submit_count == 0
    assert w.tasks.line("wavespeed") == [task.task_id]
    # and the poller leaves it alone: the line is the dispatcher's
    assert not task.needs_attention
    # and the slot no longer waits
    slot, _ = w.tasks.list_job("alice")
    assert slot is not None
    assert (slot.waiting_since, slot.next_check_at) == (None, None)


def test_the_dispatcher_sends_the_first_in_line_once_and_records_the_providers_id(w: World) -> None:
    # Given a task in WaveSpeed's line
    task = queued(w)
    # When the dispatcher sees it join the line (the table's stream)
    actions = run_dispatcher(w)
    # Then it is submitted once and recorded as SUBMITTED with the provider's id, holding one render slot
    assert actions == {"submit-submitted": 1}
    task = stored(w, task.task_id)
    assert task.status is S.SUBMITTED
    assert task.provider_task_id == "ws-1"
    assert task.lease_until is None
    assert task.submit_attempts == 1
    assert task.next_check_at == T0 + timedelta(seconds=w.ctx.settings.poll_after_seconds)
    assert moves(task) == [
        (None, S.WAITING_FOR_PAIR),
        (S.WAITING_FOR_PAIR, S.QUEUED),
        (S.QUEUED, S.SUBMITTING),
        (S.SUBMITTING, S.SUBMITTED),
    ]
    assert w.tasks.holders("wavespeed") == {task.task_id}
    assert w.tasks.line("wavespeed") == []
    assert w.provider.submit_count == 1
    request = w.provider.submissions[0]
    assert request.task_id == task.task_id
    # signed for the provider's queue and render times (6 h + 1 h by default) and a margin of 15 min
    assert request.image_url == f"https://presigned.test/{BUCKET}/inbox/alice/face.png?expires=26100"
    assert request.audio_url == f"https://presigned.test/{BUCKET}/inbox/alice/voice.mp3?expires=26100"
    assert (request.model_id, request.options, request.prompt) == ("kwaivgi/kling-v1-ai-avatar-standard", {}, None)
    # and its callback URL names the task with the token derived for it, which the webhook checks before any read
    token = callback_query("wavespeed", task.task_id)["token"]
    assert (
        request.webhook_url == f"https://hooks.example.test/v1/webhooks/wavespeed?task_id={task.task_id}&token={token}"
    )


@pytest.mark.parametrize("order", ["image-first", "audio-first"])
def test_pair_completes_in_either_order(w: World, order: str) -> None:
    # Given / When the halves arrive in either order
    first, second = (IMAGE, AUDIO) if order == "image-first" else (AUDIO, IMAGE)
    assert handle_upload(w.ctx, first).action == "waiting"
    outcome = handle_upload(w.ctx, second)
    # Then the same single task joins the line, and is submitted once
    assert outcome.action == "queued"
    assert w.tasks.only_task().task_id == content_id("alice", IMAGE, AUDIO)
    assert run_dispatcher(w) == {"submit-submitted": 1}
    assert w.provider.submit_count == 1


@pytest.mark.parametrize("repeated", [IMAGE, AUDIO], ids=["image", "audio"])
def test_duplicate_of_either_upload_after_pairing_is_a_duplicate(w: World, repeated: S3Object) -> None:
    # Given a pair that was submitted
    submitted(w)
    # When S3 delivers one of its events again
    outcome = handle_upload(w.ctx, repeated)
    # Then nothing new is created or paid for
    assert outcome == UploadOutcome("duplicate", job="alice")
    assert w.provider.submit_count == 1
    assert w.tasks.only_task().status is S.SUBMITTED


def test_byte_identical_reupload_makes_no_new_task(w: World) -> None:
    # Given a submitted pair
    submitted(w)
    # When the user uploads the very same bytes again later (same key, same ETag)
    w.clock.advance(600)
    outcome = handle_upload(w.ctx, upload(AUDIO.key, etag="aud-1", size=AUDIO.size))
    # Then it maps onto the existing task
    assert outcome.action == "duplicate"
    assert len(w.tasks.all_tasks()) == 1
    assert w.provider.submit_count == 1


def test_a_new_audio_alone_waits_for_a_new_image_instead_of_reusing_the_used_one(w: World) -> None:
    # Given a submitted pair
    first = submitted(w)
    # When a different audio (new ETag) is uploaded to the same job
    w.clock.advance(600)
    new_audio = upload(AUDIO.key, etag="aud-2", size=AUDIO.size)
    outcome = handle_upload(w.ctx, new_audio)
    # Then it waits for an image of its own: a used half never pays for a second video by surprise
    assert outcome.action == "waiting"
    assert w.provider.submit_count == 1
    # When a new image arrives too
    new_image = upload(IMAGE.key, etag="img-2", size=IMAGE.size)
    outcome = handle_upload(w.ctx, new_image)
    # Then the new pair makes a second task, and is submitted
    assert outcome.action == "queued"
    assert outcome.task_id != first.task_id
    second = stored(w, outcome.task_id)
    assert (second.image, second.audio) == (new_image, new_audio)
    assert run_dispatcher(w) == {"submit-submitted": 1}
    assert w.provider.submit_count == 2


def test_folder_job_options_reach_the_task_and_the_provider(w: World) -> None:
    # Given a folder job with job.json
    w.media.put_object(BUCKET, "inbox/alice/job.json", json.dumps({"prompt": "hi", "mode": "pro"}))
    assert handle_upload(w.ctx, upload("inbox/alice/job.json", size=30)).action == "ignored"
    # When its pair arrives and is sent
    task = submitted(w)
    # Then the task carries the options and the provider got them
    assert (task.prompt, task.model) == ("hi", "kling-v1-pro")
    assert task.reason is not None and "default options" not in (task.history[1].reason or "")
    request = w.provider.submissions[0]
    assert (request.prompt, request.model_id) == ("hi", "kwaivgi/kling-v1-ai-avatar-pro")


def test_a_prompt_of_exactly_2500_characters_is_accepted(w: World) -> None:
    w.media.put_object(BUCKET, "inbox/alice/job.json", json.dumps({"prompt": "p" * 2500}))
    submitted(w)
    assert w.provider.submissions[0].prompt == "p" * 2500


def test_same_stem_jobs_do_not_read_options(w: World) -> None:
    # Given a job.json that would be invalid, where a folder job "bob" would look for it
    w.media.put_object(BUCKET, "inbox/bob/job.json", "not json")
    # When a same-stem pair "bob" arrives
    task = submitted(w, upload("inbox/bob.png"), upload("inbox/bob.mp3"))
    # Then options are not read: it is submitted with the defaults
    assert task.history[1].reason.startswith(
        "paired inbox/bob.png with inbox/bob.mp3; Kling v1 AI Avatar (standard), 1st in line"
    )
    assert w.provider.submissions[0].model_id == "kwaivgi/kling-v1-ai-avatar-standard"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(json.dumps({"prompt": "hi", "style": "anime"}), id="unknown-field"),
        pytest.param(json.dumps({"prompt": "p" * 2501}), id="prompt-2501-chars"),
        pytest.param("prompt: hi", id="not-json"),
        pytest.param(json.dumps({"mode": "ultra"}), id="unknown-mode"),
        pytest.param(json.dumps(["hi"]), id="not-an-object"),
        pytest.param(json.dumps({"prompt": "p" * 70_000}), id="larger-than-64KiB"),
        # 64,000 bytes, within the size cap: the JSON parser runs out of recursion.
        pytest.param("[" * 32_000 + "]" * 32_000, id="nested-32000-deep"),
    ],
)
def test_invalid_job_json_rejects_the_pair_without_submitting(w: World, body: str) -> None:
    # Given a folder job whose job.json is unusable
    w.media.put_object(BUCKET, "inbox/alice/job.json", body)
    # When its pair arrives
    outcome = deliver_pair(w)
    # Then the task is REJECTED, saying why, and nothing is paid for
    assert outcome.action == "rejected"
    task = stored(w, outcome.task_id)
    assert task.status is S.REJECTED
    assert task.reason is not None
    assert "job.json" in task.reason
    assert moves(task) == [(None, S.WAITING_FOR_PAIR), (S.WAITING_FOR_PAIR, S.REJECTED)]
    assert w.provider.submit_count == 0


def test_a_job_whose_video_key_would_exceed_s3s_limit_is_rejected_before_anything_is_paid(w: World) -> None:
    # Given a folder job whose name leaves room for its inputs' keys (S3 took them) but not for its video's key
    job = "j" * 1000
    image, audio = upload(f"inbox/{job}/a.png"), upload(f"inbox/{job}/a.mp3")
    assert len(image.key.encode()) <= 1024
    # When its pair arrives
    outcome = deliver_pair(w, image, audio)
    # Then it is REJECTED, saying why, and never sent to the provider
    task = stored(w, outcome.task_id)
    assert task.status is S.REJECTED
    assert task.reason == "the job name is too long: its video's key would be 1,045 bytes, over S3's limit of 1,024"
    assert run_dispatcher(w) == {}
    assert w.provider.submit_count == 0


def test_oversized_audio_is_rejected_without_submitting(w: World) -> None:
    # Given / When a pair whose audio is over WaveSpeed's 5 MB limit
    big_audio = upload(AUDIO.key, size=6 * 1024 * 1024)
    outcome = deliver_pair(w, IMAGE, big_audio)
    # Then it is REJECTED with the size and the limit, and never submitted
    assert outcome.action == "rejected"
    task = stored(w, outcome.task_id)
    assert task.status is S.REJECTED
    assert task.reason == "voice.mp3 is 6.00 MiB; the limit is 5.00 MiB for Kling v1 AI Avatar (standard) on WaveSpeed"
    assert w.provider.submit_count == 0


def test_empty_image_is_rejected_without_submitting(w: World) -> None:
    outcome = deliver_pair(w, upload(IMAGE.key, size=0), AUDIO)
    assert stored(w, outcome.task_id).reason == "face.png is empty (0 bytes)"
    assert w.provider.submit_count == 0


def test_unsupported_file_is_rejected_on_its_own(w: World) -> None:
    # Given / When a file that is neither image nor audio lands in a job folder
    notes = upload("inbox/alice/notes.txt", size=12)
    outcome = handle_upload(w.ctx, notes)
    # Then it is REJECTED right away, naming the file, and the job's pairing is not disturbed
    assert outcome.action == "rejected"
    task = stored(w, outcome.task_id)
    assert task.status is S.REJECTED
    assert task.reason is not None
    assert task.reason.startswith("inbox/alice/notes.txt is neither an image")
    assert w.provider.submit_count == 0
    slot, _ = w.tasks.list_job("alice")
    assert slot is None
    # and a repeated event for it is a duplicate
    assert handle_upload(w.ctx, notes).action == "duplicate"


@pytest.mark.parametrize("key", ["inbox/alice/", "outputs/alice/x.mp4", "inbox/alice/job.json"])
def test_keys_that_are_not_media_are_ignored(w: World, key: str) -> None:
    assert handle_upload(w.ctx, upload(key)).action == "ignored"
    assert w.tasks.all_tasks() == []
    assert w.tasks.slots == {}


def test_a_turned_away_submission_goes_back_to_its_place_and_is_sent_when_the_pause_ends(w: World) -> None:
    # Given WaveSpeed is briefly unavailable (its answer proves it did not take the task), then accepts
    w.provider.script_submit(
        ProviderTransientError("HTTP 503", code="503"),
        ProviderJob(provider_task_id="ws-retry", status=P.QUEUED),
    )
    task = queued(w)
    # When the dispatcher sends it
    report = send_next(w)
    # Then it is back in line, at the same place, and the line pauses for one rate window, with a wake-up then
    window = timedelta(seconds=w.ctx.settings.rate_window_seconds)
    assert report.actions == {"submit-requeued": 1}
    assert report.waiting == "WaveSpeed asked us to slow down (rate limited)"
    task = stored(w, task.task_id)
    assert task.status is S.QUEUED
    assert task.queued_at == T0
    assert (task.lease_until, task.next_check_at) == (None, None)
    assert task.reason == "WaveSpeed turned it away (HTTP 503); back to its place in line, sent after 12:01:00 UTC"
    assert moves(task)[-2:] == [(S.QUEUED, S.SUBMITTING), (S.SUBMITTING, S.QUEUED)]
    quota = w.tasks.get_quota("wavespeed")
    assert quota is not None and quota.paused_until == T0 + window and quota.holders == {}
    assert w.waker.calls == [("wavespeed", T0 + window)]
    # When the poller runs before the pause ends, nothing is resent (and a QUEUED task is not the poller's to check)
    w.clock.advance(59)
    assert run_poll(w).actions == {}
    assert w.provider.submit_count == 1
    # When the wake-up comes at the end of the pause
    w.clock.advance(1)
    report = send_next(w)
    # Then it is submitted again, exactly once, and is SUBMITTED
    assert report.actions == {"submit-submitted": 1}
    assert w.provider.submit_count == 2
    task = stored(w, task.task_id)
    assert task.status is S.SUBMITTED
    assert task.provider_task_id == "ws-retry"
    assert task.submit_attempts == 2
    # and later polls only ask about it, never resend
    for _ in range(3):
        w.clock.advance(w.ctx.settings.poll_after_seconds)
        run_poll(w)
    assert w.provider.submit_count == 2
    assert w.provider.fetches == ["ws-retry"] * 3


def test_unknown_submission_outcome_is_never_resent_and_a_later_callback_moves_it_on(w: World) -> None:
    # Given the submission's answer was lost (a read timeout)
    w.provider.script_submit(ProviderOutcomeUnknownError("read timeout"))
    # When the pair is sent
    task = queued(w)
    assert send_next(w).actions == {"submit-unknown": 1}
    # Then the task stays SUBMITTING, holding its render slot (the provider may be making it), with no lease, due
    # when its callback would have come at the latest: the provider's queue and render limits together
    task = stored(w, task.task_id)
    assert task.status is S.SUBMITTING
    assert task.lease_until is None
    assert w.tasks.holders("wavespeed") == {task.task_id}
    settings = w.ctx.settings
    give_up_after = settings.max_provider_queue_seconds + settings.max_render_seconds
    assert task.next_check_at == T0 + timedelta(seconds=give_up_after)
    # When the poller runs, including after the submit lease and just before the give-up time
    reports = []
    for at in (61, SUBMIT_LEASE.total_seconds() + 1, 3600, give_up_after - 1):
        w.clock.now = T0 + timedelta(seconds=at)
        reports.append(run_poll(w))
    # Then it never resubmits (the task is not even due before its give-up time); after a render's longest time its
    # slot is given back (the provider may never have got it), but the task is still waited for
    assert w.provider.submit_count == 1
    assert [report.actions for report in reports] == [{}, {}, {}, {"slot-reclaimed": 1}]
    assert stored(w, task.task_id).status is S.SUBMITTING
    # When the provider's callback finally arrives
    action = record_provider_news(w.ctx, task.task_id, news(P.SUCCEEDED, "ws-77"))
    # Then the task moves on to OUTPUT_READY with the provider's id
    assert action == "recorded"
    task = stored(w, task.task_id)
    assert task.status is S.OUTPUT_READY
    assert task.provider_task_id == "ws-77"
    assert task.provider_output_url == OUTPUT_URL
    assert w.provider.submit_count == 1


def test_a_lost_submission_is_found_by_our_task_id_where_the_provider_can_look_it_up(w: World) -> None:
    # Given a provider that can find jobs by our task id, and a submission whose answer was lost
    w.provider.script_submit(ProviderOutcomeUnknownError("read timeout"))
    w.provider.script_find(None, news(P.PROCESSING, "ws-found"))
    outcome = deliver_pair(w)
    assert send_next(w).actions == {"submit-unknown": 1}
    # Then the poller is due to look it up soon, not only at the give-up time
    task = stored(w, outcome.task_id)
    assert task.next_check_at == T0 + timedelta(seconds=w.ctx.settings.poll_after_seconds)
    # When the poller runs before the provider lists it, and again after
    w.clock.now = task.next_check_at
    first = run_poll(w)
    w.clock.advance(w.ctx.settings.poll_after_seconds)
    second = run_poll(w)
    # Then it keeps waiting, then records the job it found — without ever submitting again
    assert first.actions == {"awaiting-callback": 1}
    assert second.actions == {"found-recorded": 1}
    assert w.provider.finds == [outcome.task_id] * 2
    task = stored(w, outcome.task_id)
    assert (task.status, task.provider_task_id) == (S.PROCESSING, "ws-found")
    assert w.provider.submit_count == 1


def test_a_lost_submission_found_at_the_give_up_time_is_not_timed_out(w: World) -> None:
    # Given a lost submission the provider lists only when the task reaches its give-up time
    w.provider.script_submit(ProviderOutcomeUnknownError("read timeout"))
    outcome = deliver_pair(w)
    send_next(w)
    w.provider.script_find(news(P.SUCCEEDED, "ws-late"))
    # When the poller runs then
    settings = w.ctx.settings
    w.clock.now = T0 + timedelta(seconds=settings.max_provider_queue_seconds + settings.max_render_seconds + 1)
    report = run_poll(w)
    # Then the video is recorded, not the time-out
    assert report.actions["found-recorded"] == 1
    assert "timed-out" not in report.actions
    assert stored(w, outcome.task_id).status is S.OUTPUT_READY


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ProviderInputError("image has no detectable face", code="1003"), "1003"),
        (ProviderConfigError("invalid API key", code="401"), "401"),
        (ProviderError("answer had no id"), None),
    ],
    ids=["input", "config", "contract"],
)
def test_refused_submission_fails_the_task_naming_the_code(w: World, error: ProviderError, code: str | None) -> None:
    # Given WaveSpeed refuses the submission for good
    w.provider.script_submit(error)
    # When the pair is sent
    outcome = deliver_pair(w)
    assert run_dispatcher(w) == {"submit-failed": 1}
    # Then the task is FAILED with the provider's code and message, and never retried
    task = stored(w, outcome.task_id)
    assert task.status is S.FAILED
    assert task.reason is not None
    assert str(error) in task.reason
    if code:
        assert f"(code {code})" in task.reason
    assert task.lease_until is None
    assert moves(task)[-1] == (S.SUBMITTING, S.FAILED)
    # and its render slot is free again
    assert w.tasks.holders("wavespeed") == set()
    w.clock.advance(3600)
    run_poll(w)
    assert w.provider.submit_count == 1


@pytest.mark.usefixtures("busy_threads")
def test_both_halves_at_the_same_moment_make_exactly_one_task() -> None:
    for round_ in range(RACE_ROUNDS):
        # Given fresh fakes
        w = make_world()
        # When the image and the audio are handled by two invocations at the same moment
        outcomes = race(lambda w=w: handle_upload(w.ctx, IMAGE), lambda w=w: handle_upload(w.ctx, AUDIO))
        # Then exactly one of them cuts the task into the line, and it is submitted once
        assert sorted(o.action for o in outcomes) == ["queued", "waiting"], f"round {round_}"
        assert len(w.tasks.all_tasks()) == 1, f"round {round_}"
        assert run_dispatcher(w) == {"submit-submitted": 1}, f"round {round_}"
        assert w.provider.submit_count == 1, f"round {round_}"


@pytest.mark.usefixtures("busy_threads")
def test_the_completing_event_delivered_twice_at_once_submits_once() -> None:
    for round_ in range(RACE_ROUNDS):
        # Given the image waits
        w = make_world()
        handle_upload(w.ctx, IMAGE)
        # When S3 delivers the audio's event twice, to two invocations at the same moment
        outcomes = race(lambda w=w: handle_upload(w.ctx, AUDIO), lambda w=w: handle_upload(w.ctx, AUDIO))
        # Then one puts the task in line and the other finds it; it is submitted once
        assert sorted(o.action for o in outcomes) == ["duplicate", "queued"], f"round {round_}"
        assert w.tasks.line("wavespeed") == [w.tasks.only_task().task_id], f"round {round_}"
        run_dispatcher(w)
        assert w.provider.submit_count == 1, f"round {round_}"


def test_a_pair_is_not_lost_when_cutting_its_task_fails(w: World) -> None:
    # Given the image waits
    handle_upload(w.ctx, IMAGE)
    # When the invocation that gets the audio dies writing the task (throttled, timed out)
    w.tasks.fail_next("save_slot_and_create", RuntimeError("ProvisionedThroughputExceededException"))
    with pytest.raises(RuntimeError):
        handle_upload(w.ctx, AUDIO)
    # and S3's retries are used up, so only the poller is left to notice
    w.clock.advance(w.ctx.settings.max_pair_wait_seconds + 60)
    report = run_poll(w)
    # Then the poller cut the pair into the line, and the dispatcher (woken by that write) sent it
    assert report.actions == {"pair-queued": 1}
    assert run_dispatcher(w) == {"submit-submitted": 1}
    _, tasks = w.tasks.list_job("alice")
    assert [task.status for task in tasks] == [S.SUBMITTED]
    # and nothing stays due forever
    _, due_slots = w.tasks.due(w.clock.now + timedelta(days=1), 100)
    assert due_slots == []


# ============================================================================================== tracking


def test_success_news_makes_the_output_ready(w: World) -> None:
    # Given a submitted task
    task = submitted(w)
    # When WaveSpeed reports it succeeded
    w.clock.advance(90)
    action = record_provider_news(w.ctx, task.task_id, news(P.SUCCEEDED))
    # Then the task is OUTPUT_READY with the output's URL, and finalize has its grace period
    assert action == "recorded"
    task = stored(w, task.task_id)
    assert task.status is S.OUTPUT_READY
    assert task.provider_output_url == OUTPUT_URL
    assert task.last_news_at == w.clock.now
    assert task.next_check_at == w.clock.now + FINALIZE_GRACE
    assert moves(task)[-1] == (S.SUBMITTED, S.OUTPUT_READY)


def test_processing_news_then_success(w: World) -> None:
    task = submitted(w)
    assert record_provider_news(w.ctx, task.task_id, news(P.PROCESSING)) == "recorded"
    assert record_provider_news(w.ctx, task.task_id, news(P.QUEUED)) == "unchanged"  # older news: no way back
    assert record_provider_news(w.ctx, task.task_id, news(P.SUCCEEDED)) == "recorded"
    assert [to for _, to in moves(stored(w, task.task_id))][-2:] == [S.PROCESSING, S.OUTPUT_READY]


def test_the_same_news_again_changes_nothing(w: World) -> None:
    # Given the success was recorded
    task = output_ready(w)
    # When the same news comes again (a webhook retry)
    action = record_provider_news(w.ctx, task.task_id, news(P.SUCCEEDED))
    # Then nothing changes
    assert action == "unchanged"
    assert stored(w, task.task_id) == task


def test_news_after_completion_changes_nothing(w: World) -> None:
    # Given a COMPLETED task
    task = completed(w)
    # When late news of any kind arrives
    for status in P:
        assert record_provider_news(w.ctx, task.task_id, news(status)) == "unchanged"
    # Then it stays COMPLETED, untouched
    assert stored(w, task.task_id) == task
    assert task.status is S.COMPLETED


def test_news_about_another_provider_task_is_a_mismatch(w: World) -> None:
    # Given a task WaveSpeed knows as ws-1
    task = submitted(w)
    # When news about ws-other is addressed to it
    # Then it is refused, and the task is untouched
    with pytest.raises(CallbackMismatchError):
        record_provider_news(w.ctx, task.task_id, news(P.SUCCEEDED, "ws-other"))
    assert stored(w, task.task_id) == task


def test_failure_news_fails_the_task_naming_the_provider_code(w: World) -> None:
    # Given a submitted task
    task = submitted(w)
    # When WaveSpeed reports it failed
    failure = news(P.FAILED, error_code="2001", error_message="no face found in the image")
    assert record_provider_news(w.ctx, task.task_id, failure) == "recorded"
    # Then the task is FAILED with a reason naming the provider and its code
    task = stored(w, task.task_id)
    assert task.status is S.FAILED
    assert task.reason == "WaveSpeed could not make the video (code 2001): no face found in the image"
    assert task.next_check_at == w.clock.now  # due for its notification at once


def test_news_on_a_stale_snapshot_is_decided_again_on_fresh_facts(w: World) -> None:
    # Given two writers that both read the task while it was SUBMITTED
    snapshot = submitted(w)
    # When both record the success from that snapshot
    first = record_provider_news(w.ctx, snapshot, news(P.SUCCEEDED))
    second = record_provider_news(w.ctx, snapshot, news(P.SUCCEEDED))
    # Then the second loses the conditional write, re-reads, and decides there is nothing to do
    assert (first, second) == ("recorded", "unchanged")
    assert w.tasks.conflicts == 1
    assert [to for _, to in moves(stored(w, snapshot.task_id))].count(S.OUTPUT_READY) == 1


@pytest.mark.usefixtures("busy_threads")
def test_webhook_and_poller_racing_record_the_success_once() -> None:
    for round_ in range(RACE_ROUNDS):
        # Given a submitted task
        w = make_world()
        task = submitted(w)
        # When the webhook and the poller record the same success at the same moment
        actions = race(
            lambda w=w, t=task: record_provider_news(w.ctx, t.task_id, news(P.SUCCEEDED)),
            lambda w=w, t=task: record_provider_news(w.ctx, t, news(P.SUCCEEDED)),
        )
        # Then exactly one of them moves it
        assert sorted(actions) == ["recorded", "unchanged"], f"round {round_}"
        history = stored(w, task.task_id).history
        assert [h.to_status for h in history].count(S.OUTPUT_READY) == 1, f"round {round_}"


def test_repeated_success_news_while_finalizing_changes_nothing(w: World) -> None:
    # Given a finished video whose copy is running when WaveSpeed repeats its success callback
    during_copy: list[str] = []

    def copy_while_the_callback_repeats() -> bytes:
        during_copy.append(record_provider_news(w.ctx, task.task_id, news(P.SUCCEEDED)))
        return VIDEO

    task = output_ready(w, copy_while_the_callback_repeats)
    # When the copy ends
    action = finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
    # Then the repeated news changed nothing and the copy completed the task, once
    assert during_copy == ["unchanged"]
    assert action == "completed"
    assert stored(w, task.task_id).status is S.COMPLETED
    assert len(w.media.copies) == 1


def test_poll_asks_the_provider_about_a_due_task_and_records_the_answer(w: World) -> None:
    # Given a submitted task, due for a check after poll_after_seconds
    task = submitted(w)
    w.provider.script_fetch(news(P.PROCESSING))
    # When the poller runs when it is due
    w.clock.advance(w.ctx.settings.poll_after_seconds)
    report = run_poll(w)
    # Then it asked WaveSpeed and recorded the answer
    assert w.provider.fetches == ["ws-1"]
    assert report.actions == {"news-processing": 1}
    assert stored(w, task.task_id).status is S.PROCESSING


def test_poll_reschedules_when_there_is_no_news(w: World) -> None:
    task = submitted(w)
    w.clock.advance(w.ctx.settings.poll_after_seconds)
    report = run_poll(w)  # unscripted fetch answers QUEUED: nothing new
    assert report.actions == {"no-news": 1}
    assert stored(w, task.task_id).next_check_at == w.clock.now + timedelta(seconds=w.ctx.settings.poll_after_seconds)


def test_poll_reads_nothing_beyond_the_due_records(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a task at the provider, and a count of every task the poller reads by id
    task = submitted(w)
    reads: list[str] = []
    get = w.tasks.get
    monkeypatch.setattr(w.tasks, "get", lambda task_id: reads.append(task_id) or get(task_id))
    # When the poller runs each time the task is due: once the provider has news, once it has none
    w.provider.script_fetch(news(P.PROCESSING))
    actions = []
    for _ in range(2):
        w.clock.advance(w.ctx.settings.poll_after_seconds)
        actions += list(run_poll(w).actions)
    # Then each poll acted on the record its due query returned: a poll's reads follow the tasks due, and the few
    # tasks holding render slots that it reconciles with the quota record, nothing more
    assert actions == ["news-processing", "no-news"]
    assert reads == [task.task_id] * 2
    assert stored(w, task.task_id).version == task.version + 2


def test_poll_keeps_going_when_the_provider_is_unavailable(w: World) -> None:
    task = submitted(w)
    w.provider.script_fetch(ProviderTransientError("HTTP 502"))
    w.clock.advance(w.ctx.settings.poll_after_seconds)
    assert run_poll(w).actions == {"provider-unavailable": 1}
    assert stored(w, task.task_id).status is S.SUBMITTED
    assert stored(w, task.task_id).next_check_at == w.clock.now + timedelta(seconds=w.ctx.settings.poll_after_seconds)


def test_poll_does_not_fetch_tasks_that_are_not_due(w: World) -> None:
    # Given a task checked just now
    submitted(w)
    # When the poller runs before its next check
    w.clock.advance(w.ctx.settings.poll_after_seconds - 1)
    report = run_poll(w)
    # Then WaveSpeed is not asked
    assert w.provider.fetches == []
    assert sum(report.actions.values()) == 0


def test_a_task_the_provider_never_starts_times_out_by_the_provider_queue_limit(w: World) -> None:
    # Given a task WaveSpeed accepted but keeps in its own queue
    task = submitted(w)
    limit = w.ctx.settings.max_provider_queue_seconds
    # When the poller looks exactly at the limit (counted from the acceptance), the task is still waited for
    w.clock.now = T0 + timedelta(seconds=limit)
    assert run_poll(w).actions == {"no-news": 1}
    # When it looks next, the limit having passed
    w.clock.advance(w.ctx.settings.poll_after_seconds)
    report = run_poll(w)
    # Then after one last question to the provider (still queued), it is TIMED_OUT with a reason, and watched for a
    # late video as long as WaveSpeed keeps its outputs
    assert report.actions["timed-out"] == 1
    task = stored(w, task.task_id)
    assert task.status is S.TIMED_OUT
    assert task.reason == "WaveSpeed had not started the video 360 min after accepting it"
    assert task.watch_until == w.clock.now + PROVIDERS["wavespeed"].output_retention
    assert len(w.provider.fetches) == 2
    # and its render slot is given back
    run_dispatcher(w)
    assert w.tasks.holders("wavespeed") == set()


def test_a_render_times_out_by_the_render_limit_counted_from_when_it_started(w: World) -> None:
    # Given a task that waited 5 h in WaveSpeed's own queue (within its limit) before WaveSpeed started it
    task = submitted(w)
    started = T0 + timedelta(hours=5)
    w.clock.now = started
    w.provider.script_fetch(news(P.PROCESSING))
    assert run_poll(w).actions == {"news-processing": 1}
    assert stored(w, task.task_id).status_since == started
    # When the poller looks exactly when the render limit is used up, the task is still waited for
    limit = w.ctx.settings.max_render_seconds
    w.clock.now = started + timedelta(seconds=limit)
    assert run_poll(w).actions == {"no-news": 1}
    # When it looks next, after it
    w.clock.advance(w.ctx.settings.poll_after_seconds)
    report = run_poll(w)
    # Then it is TIMED_OUT by the render clock, not by its time since it was submitted
    assert report.actions["timed-out"] == 1
    task = stored(w, task.task_id)
    assert task.status is S.TIMED_OUT
    assert task.reason == "WaveSpeed did not finish the video within 60 min of starting it"
    assert moves(task)[-1] == (S.PROCESSING, S.TIMED_OUT)


def test_a_lost_submission_times_out_when_its_callback_can_no_longer_come(w: World) -> None:
    # Given a submission whose answer was lost, at a provider that cannot look jobs up by our id
    w.provider.script_submit(ProviderOutcomeUnknownError("read timeout"))
    task = queued(w)
    send_next(w)
    # When the poller runs once the provider's queue and render limits together have passed since it was sent
    settings = w.ctx.settings
    w.clock.now = T0 + timedelta(seconds=settings.max_provider_queue_seconds + settings.max_render_seconds)
    report = run_poll(w)
    # Then it is TIMED_OUT saying so, never resent, and still watched for its callback
    assert report.actions["timed-out"] == 1
    task = stored(w, task.task_id)
    assert task.status is S.TIMED_OUT
    assert task.reason == (
        "WaveSpeed never confirmed the submission within 420 min (its answer was lost and no callback came)"
    )
    assert task.watch_until is not None
    assert w.provider.submit_count == 1


def test_a_task_waiting_in_line_is_never_timed_out_however_long_it_waits() -> None:
    # Given one render slot, held for weeks by a task WaveSpeed keeps in its own queue (its limit allows it)
    w = make_world(settings={"WAVESPEED_RENDERS_AT_ONCE": "1", "MAX_PROVIDER_QUEUE_SECONDS": str(40 * 86400)})
    first = submitted(w)
    second = queued(w, upload("inbox/bob.png"), upload("inbox/bob.mp3"))
    run_dispatcher(w)
    # When the poller runs every day for a month
    actions: list[str] = []
    for _ in range(30):
        w.clock.advance(86400)
        actions += list(run_poll(w).actions)
    # Then the task in line is never checked, never timed out: it waits its turn, QUEUED, at the head of the line
    assert "timed-out" not in actions
    waiting = stored(w, second.task_id)
    assert waiting.status is S.QUEUED
    assert moves(waiting)[-1] == (S.WAITING_FOR_PAIR, S.QUEUED)
    assert w.tasks.line("wavespeed") == [second.task_id]
    tasks, _ = w.tasks.due(w.clock.now + timedelta(days=365), 100)
    assert [task.task_id for task in tasks] == [first.task_id]
    # When the slot is given back at last (the first video is ready), it is sent at once
    record_provider_news(w.ctx, first.task_id, news(P.SUCCEEDED))
    assert run_dispatcher(w) == {"submit-submitted": 1}
    assert stored(w, second.task_id).status is S.SUBMITTED


def test_an_orphan_half_times_out_once(w: World) -> None:
    # Given an image that waits for its audio
    image = upload("inbox/alice.jpg", etag="img-9")
    handle_upload(w.ctx, image)
    # When the poller runs just before max_pair_wait, nothing happens
    w.clock.advance(w.ctx.settings.max_pair_wait_seconds - 1)
    assert sum(run_poll(w).actions.values()) == 0
    # When it runs once the wait is over
    w.clock.advance(1)
    report = run_poll(w)
    # Then a TIMED_OUT task says which half was missing
    assert report.actions == {"orphan-timed-out": 1}
    task = w.tasks.only_task()
    assert task.status is S.TIMED_OUT
    assert task.reason == "no audio arrived for inbox/alice.jpg within 30 min"
    assert (task.image, task.audio, task.created_at) == (image, None, T0)
    assert moves(task) == [(None, S.WAITING_FOR_PAIR), (S.WAITING_FOR_PAIR, S.TIMED_OUT)]
    # and polling again does not make a second one
    w.clock.advance(60)
    again = run_poll(w)
    assert again.actions["orphan-timed-out"] == 0
    assert len(w.tasks.all_tasks()) == 1
    assert w.provider.submit_count == 0


def test_an_orphan_expiry_that_loses_the_race_to_its_partner_reports_nothing(w: World) -> None:
    # Given an image past its pairing deadline, as the poller read it from the index
    handle_upload(w.ctx, IMAGE)
    w.clock.advance(w.ctx.settings.max_pair_wait_seconds + 1)
    _, (seen_slot,) = w.tasks.due(w.clock.now, 10)
    # When its audio arrives just before the poller acts on what it read
    assert handle_upload(w.ctx, AUDIO).action == "queued"
    action = _expire_orphan(w.ctx, seen_slot)
    # Then no TIMED_OUT task contradicts the video being made
    assert action == "skipped"
    assert [task.status for task in w.tasks.all_tasks()] == [S.QUEUED]


def test_an_out_of_date_event_for_a_key_is_ignored(w: World) -> None:
    # Given a face uploaded twice: the second write (later sequencer) is the one that counts
    older = S3Object(bucket=BUCKET, key=IMAGE.key, etag="img-old", size=1000, sequencer="0066A1B2C3D4E5F601")
    newer = S3Object(bucket=BUCKET, key=IMAGE.key, etag="img-new", size=1000, sequencer="0066A1B2C3D4E5F602")
    assert handle_upload(w.ctx, newer).action == "waiting"
    # When the first write's event arrives late
    assert handle_upload(w.ctx, older).action == "duplicate"
    # Then the pair is made with the newer face
    outcome = handle_upload(w.ctx, AUDIO)
    assert stored(w, outcome.task_id).image == newer


def test_an_orphan_audio_names_the_missing_image(w: World) -> None:
    handle_upload(w.ctx, AUDIO)
    w.clock.advance(w.ctx.settings.max_pair_wait_seconds)
    run_poll(w)
    assert w.tasks.only_task().reason == "no image arrived for inbox/alice/voice.mp3 within 30 min"


def test_a_finalize_attempt_that_died_is_handed_back_after_its_lease_and_a_backoff(w: World) -> None:
    # Given a finalize attempt that died mid-copy (its Lambda was killed)
    task = output_ready(w, RuntimeError("Task timed out"), VIDEO)
    with pytest.raises(RuntimeError):
        finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
    assert stored(w, task.task_id).status is S.FINALIZING
    # When the poller runs while the copy lease (plus its margin) still holds, it leaves it alone
    w.clock.advance((COPY_LEASE + COPY_LEASE_MARGIN).total_seconds() - 1)
    run_poll(w)
    assert stored(w, task.task_id).copy_retry_at is None
    # When it runs after: a minute and a quarter after the attempt died, not at the end of the function's timeout
    w.clock.advance(1)
    report = run_poll(w)
    # Then it schedules the next attempt after a backoff, so a video that kills every copy cannot keep us busy
    assert report.actions == {"finalize-backoff": 1}
    task = stored(w, task.task_id)
    retry_at = w.clock.now + COPY_RETRY_FIRST
    assert task.status is S.FINALIZING
    assert (task.copy_retry_at, task.next_check_at) == (retry_at, retry_at)
    assert task.reason == "copy attempt 1 stopped without a word; trying again at 12:02:30 UTC"
    # and a finalize attempt meanwhile (a stream retry) waits for it
    assert finalize_output(w.ctx, task.task_id, FINALIZE_TIME) == "skipped"
    # When the backoff is over, the poller hands the task back to finalize
    w.clock.now = retry_at
    assert run_poll(w).actions == {"finalize-redriven": 1}
    task = stored(w, task.task_id)
    assert task.status is S.OUTPUT_READY
    assert moves(task)[-1] == (S.FINALIZING, S.OUTPUT_READY)
    # and the next attempt completes it
    assert finalize_output(w.ctx, task.task_id, FINALIZE_TIME) == "completed"
    assert stored(w, task.task_id).finalize_attempts == 2


def test_a_copy_that_keeps_dying_is_retried_with_growing_backoff_until_the_provider_deletes_the_video(
    w: World,
) -> None:
    # Given every finalize attempt dies
    task = output_ready(w, RuntimeError("Task timed out"))
    expires = task.output_expires_at
    assert expires == T0 + timedelta(seconds=60) + PROVIDERS["wavespeed"].output_retention
    actions: list[dict[str, int]] = []
    waits: list[timedelta] = []
    for _ in range(4):
        with pytest.raises(RuntimeError):
            finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
        w.clock.advance((COPY_LEASE + COPY_LEASE_MARGIN).total_seconds())
        actions.append(dict(run_poll(w).actions))
        retry_at = stored(w, task.task_id).copy_retry_at
        assert retry_at is not None
        waits.append(retry_at - w.clock.now)
        w.clock.now = retry_at
        actions.append(dict(run_poll(w).actions))
    # Then the poller backs off longer each time, then hands it back: no attempt limit
    assert actions == [{"finalize-backoff": 1}, {"finalize-redriven": 1}] * 4
    assert waits == [timedelta(seconds=seconds) for seconds in (15, 30, 60, 120)]
    # When the fifth attempt dies just before the provider deletes the video
    with pytest.raises(RuntimeError):
        finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
    assert expires is not None
    w.clock.now = expires - timedelta(seconds=1)
    # Then it is still not given up
    assert run_poll(w).actions == {"finalize-backoff": 1}
    # When its retry comes, after the video's expiry
    retry_at = stored(w, task.task_id).copy_retry_at
    assert retry_at is not None and retry_at > expires
    w.clock.now = retry_at
    report = run_poll(w)
    # Then it is FAILED, saying why
    assert report.actions == {"finalize-failed": 1}
    task = stored(w, task.task_id)
    assert task.status is S.FAILED
    assert task.reason == (
        "the provider deleted its video before it could be copied (5 attempts; last: copy attempt 5 stopped without"
        " a word; trying again at 12:04:59 UTC)"
    )
    assert len(w.media.copies) == 5
    # and the parts the last attempt left behind are discarded
    assert w.media.discarded[-1] == (BUCKET, output_key(task))


def test_a_long_copy_renews_its_lease_while_bytes_flow(w: World) -> None:
    # Given a copy that takes three leases' worth of time, with bytes flowing throughout
    seen: list[datetime] = []

    def slow_download() -> bytes:
        for _ in range(6):
            w.clock.advance(COPY_LEASE.total_seconds() / 2)
            w.media.keep_alive()
            lease = stored(w, task.task_id).lease_until
            assert lease is not None and lease > w.clock.now
            seen.append(lease)
            assert run_poll(w).actions["finalize-redriven"] == 0
        return VIDEO

    task = output_ready(w, slow_download)
    # When finalize runs
    action = finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
    # Then the lease was pushed forward as it went, the poller never took the task away, and the copy completed
    assert action == "completed"
    assert seen == sorted(seen) and len(set(seen)) == 6
    assert stored(w, task.task_id).status is S.COMPLETED


def test_a_copy_whose_task_was_taken_over_stops_without_touching_it(w: World) -> None:
    # Given a copy stalls past its lease, and past the backoff, so the poller hands the task to another attempt

    def stalled_download() -> bytes:
        w.clock.advance((COPY_LEASE + COPY_LEASE_MARGIN).total_seconds())
        assert run_poll(w).actions == {"finalize-backoff": 1}
        w.clock.advance(COPY_RETRY_FIRST.total_seconds())
        assert run_poll(w).actions == {"finalize-redriven": 1}
        w.media.keep_alive()  # the stalled copy gets bytes again
        return VIDEO

    task = output_ready(w, stalled_download)
    # When the stalled copy notices
    action = finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
    # Then it gives up quietly and leaves the task to the new attempt
    assert action == "skipped"
    task = stored(w, task.task_id)
    assert task.status is S.OUTPUT_READY
    assert task.finalize_attempts == 1


def test_a_stalled_copy_that_resumes_during_the_backoff_keeps_its_attempt_and_completes(w: World) -> None:
    # Given a copy stalls past its lease, and the poller schedules the next attempt

    def stalled_download() -> bytes:
        w.clock.advance((COPY_LEASE + COPY_LEASE_MARGIN).total_seconds())
        assert run_poll(w).actions == {"finalize-backoff": 1}
        w.media.keep_alive()  # bytes flow again before anyone took the task over
        return VIDEO

    task = output_ready(w, stalled_download)
    # When the copy ends
    action = finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
    # Then it completes the task, with a single attempt
    assert action == "completed"
    task = stored(w, task.task_id)
    assert (task.status, task.finalize_attempts) == (S.COMPLETED, 1)
    assert len(w.media.copies) == 1


def test_a_copy_stops_when_its_invocation_runs_out_of_time(w: World) -> None:
    # Given a copy still going when its function's time is up

    def endless_download() -> bytes:
        w.clock.advance(FINALIZE_TIME.total_seconds())
        w.media.keep_alive()
        return VIDEO

    task = output_ready(w, endless_download)
    # When the copy's keep-alive sees it
    action = finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
    # Then the task is released, saying why, with its next attempt scheduled after the first backoff
    assert action == "retry-scheduled"
    task = stored(w, task.task_id)
    assert task.status is S.FINALIZING
    assert task.lease_until is not None and task.lease_until <= w.clock.now
    assert task.copy_retry_at == w.clock.now + COPY_RETRY_FIRST
    assert task.reason == (
        "copy attempt 1 broke off (the copy did not finish within the function's time); trying again at 12:06:15 UTC"
    )


def test_each_copy_attempt_first_discards_parts_left_by_dead_attempts(w: World) -> None:
    # Given a task whose video is ready
    task = output_ready(w)
    # When finalize runs
    finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
    # Then unfinished uploads to the output key were discarded before the copy
    assert w.media.discarded == [(BUCKET, output_key(task))]


def test_poll_stops_early_when_time_is_short(w: World) -> None:
    # Given a due task
    task = submitted(w)
    w.clock.advance(w.ctx.settings.poll_after_seconds)
    # When the poller has less than its safety margin left
    report = run_poll(w, left=POLL_SAFETY_MARGIN - timedelta(milliseconds=1))
    # Then it stops without touching anything
    assert report.stopped_early
    assert w.provider.fetches == []
    assert stored(w, task.task_id) == task
    # and with exactly the margin left it still checks what is due
    report = run_poll(w, left=POLL_SAFETY_MARGIN)
    assert w.provider.fetches == ["ws-1"]
    assert not report.stopped_early


def test_poll_stops_early_before_expiring_orphans_too(w: World) -> None:
    handle_upload(w.ctx, IMAGE)
    w.clock.advance(w.ctx.settings.max_pair_wait_seconds)
    assert run_poll(w, left=timedelta(seconds=1)).stopped_early
    assert w.tasks.all_tasks() == []


def test_one_failing_task_does_not_stop_the_poll(w: World) -> None:
    # Given two due tasks, the first of which breaks
    first = submitted(w)
    second = submitted(w, upload("inbox/bob.png"), upload("inbox/bob.mp3"))
    w.provider.script_fetch(ValueError("unexpected"), news(P.PROCESSING, second.provider_task_id or ""))
    w.clock.advance(w.ctx.settings.poll_after_seconds)
    report = run_poll(w)
    assert report.actions == {"error": 1, "news-processing": 1}
    assert {stored(w, first.task_id).status, stored(w, second.task_id).status} == {S.SUBMITTED, S.PROCESSING}


def test_callback_is_authenticated_then_recorded(w: World) -> None:
    task = submitted(w)
    w.provider.script_callback(news(P.SUCCEEDED))
    assert (
        receive_callback(w.ctx, "wavespeed", task.task_id, {}, b"{}", callback_query("wavespeed", task.task_id))
        == "recorded"
    )
    assert stored(w, task.task_id).status is S.OUTPUT_READY


def test_an_unauthentic_callback_changes_nothing(w: World) -> None:
    task = submitted(w)
    w.provider.script_callback(WebhookAuthError("bad signature"))
    with pytest.raises(WebhookAuthError):
        receive_callback(w.ctx, "wavespeed", task.task_id, {}, b"{}", callback_query("wavespeed", task.task_id))
    assert stored(w, task.task_id) == task


def test_a_callback_for_an_unknown_task_is_refused(w: World) -> None:
    w.provider.script_callback(news(P.SUCCEEDED))
    with pytest.raises(UnknownTaskError):
        receive_callback(w.ctx, "wavespeed", "no-such-task", {}, b"{}", callback_query("wavespeed", "no-such-task"))


def test_a_repeated_delivery_is_a_duplicate_and_changes_nothing(w: World) -> None:
    # Given a delivery that was recorded
    task = submitted(w)
    w.provider.script_callback(news(P.SUCCEEDED))
    delivery = {"webhook-id": "msg-1"}
    assert (
        receive_callback(w.ctx, "wavespeed", task.task_id, delivery, b"{}", callback_query("wavespeed", task.task_id))
        == "recorded"
    )
    recorded = stored(w, task.task_id)
    writes = w.tasks.replace_calls
    # When the provider delivers it again (authenticated again, as every delivery is)
    outcome = receive_callback(
        w.ctx, "wavespeed", task.task_id, delivery, b"{}", callback_query("wavespeed", task.task_id)
    )
    # Then it is a duplicate: nothing written, the task as the first delivery left it
    assert outcome == "duplicate"
    assert len(w.provider.callbacks) == 2
    assert w.tasks.replace_calls == writes
    assert stored(w, task.task_id) == recorded
    assert w.deliveries.processed == {"wavespeed:msg-1": "recorded"}


def test_a_delivery_readdressed_to_another_task_is_a_duplicate_too(w: World) -> None:
    # Given a delivery recorded for one task, and another task at the provider
    first = submitted(w)
    other = submitted(w, upload("inbox/bob.png"), upload("inbox/bob.mp3"))
    w.provider.script_callback(news(P.SUCCEEDED, first.provider_task_id or ""))
    delivery = {"webhook-id": "msg-1"}
    assert (
        receive_callback(w.ctx, "wavespeed", first.task_id, delivery, b"{}", callback_query("wavespeed", first.task_id))
        == "recorded"
    )
    # When the same delivery is sent again to the other task's callback URL (by someone who has that URL too)
    outcome = receive_callback(
        w.ctx, "wavespeed", other.task_id, delivery, b"{}", callback_query("wavespeed", other.task_id)
    )
    # Then it is a duplicate, and the other task is untouched
    assert outcome == "duplicate"
    assert stored(w, other.task_id) == other


@pytest.mark.parametrize(
    "token",
    ["", "a-guess", "x" * 10_000, "é" * 43, callback_query("cometapi", "0" * 32)["token"]],
    ids=["none", "guess", "huge", "not-ascii", "another-providers"],
)
def test_a_callback_without_its_tasks_token_is_refused_before_anything_is_read(
    w: World, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    # Given a task at the provider, and a table that records every read
    task = submitted(w)
    w.provider.script_callback(news(P.SUCCEEDED))
    reads: list[str] = []
    monkeypatch.setattr(w.tasks, "get", reads.append)
    # When a callback comes for it without the token derived for it
    with pytest.raises(WebhookAuthError, match="token"):
        receive_callback(w.ctx, "wavespeed", task.task_id, {}, b"{}", {"token": token})
    # Then it is refused before the table is read, and before the provider's adapter looks at it
    assert reads == []
    assert w.provider.callbacks == []


def test_a_signed_delivery_replayed_to_another_tasks_url_is_refused(w: World) -> None:
    """The provider's signature covers the body, not the URL: the token binds a delivery to its task. The task at risk
    is one whose submission answer was lost: SUBMITTING, with no provider id to tell another prediction's news apart."""
    # Given a finished task's signed delivery, captured with its URL, and a task whose submission answer was lost
    first = submitted(w, upload("inbox/bob.png"), upload("inbox/bob.mp3"))
    captured = callback_query("wavespeed", first.task_id)
    w.provider.script_submit(ProviderOutcomeUnknownError("read timeout"))
    waiting = queued(w)
    assert send_next(w).actions == {"submit-unknown": 1}
    waiting = stored(w, waiting.task_id)
    assert (waiting.status, waiting.provider_task_id) == (S.SUBMITTING, None)
    w.provider.script_callback(news(P.SUCCEEDED, first.provider_task_id or ""))
    # When the delivery is replayed to the waiting task's id, with the captured token
    with pytest.raises(WebhookAuthError):
        receive_callback(w.ctx, "wavespeed", waiting.task_id, {"webhook-id": "msg-9"}, b"{}", captured)
    # Then the waiting task is untouched: it did not get the other task's video
    assert stored(w, waiting.task_id) == waiting


def test_callback_keys_rotate_without_refusing_tasks_already_submitted(w: World) -> None:
    # Given a task submitted while the old key signed
    task = submitted(w)
    old_token = callback_query("wavespeed", task.task_id)["token"]
    # When a new key is put first and the old one kept second
    w.ctx.callback_tokens = CallbackTokens(lambda: ["new-callback-key", CALLBACK_KEY])
    w.provider.script_callback(news(P.SUCCEEDED))
    # Then the task's callback (with the old key's token) is still taken, and new URLs carry the new key's token
    assert receive_callback(w.ctx, "wavespeed", task.task_id, {}, b"{}", {"token": old_token}) == "recorded"
    assert w.ctx.callback_tokens.token_for("wavespeed", task.task_id) != old_token


def test_without_a_callback_key_nothing_is_sent_and_the_task_fails_as_misconfigured() -> None:
    # Given a stack whose callback key cannot be found (its secret is empty)
    w = make_world(callback_tokens=CallbackTokens(list))
    handle_upload(w.ctx, IMAGE)
    handle_upload(w.ctx, AUDIO)
    # When the dispatcher would send the pair
    run_dispatcher(w)
    # Then nothing is sent (its callbacks could not be authenticated), and the task says why
    assert w.provider.submit_count == 0
    (task,) = w.tasks.all_tasks()
    assert task.status is S.FAILED
    assert task.reason is not None and "no callback key is configured" in task.reason


def test_only_a_delivery_processed_to_the_end_is_remembered(w: World) -> None:
    # Given the table fails while the first delivery is processed
    task = submitted(w)
    w.provider.script_callback(news(P.SUCCEEDED))
    delivery = {"webhook-id": "msg-1"}
    w.tasks.fail_next("get")
    with pytest.raises(RuntimeError):
        receive_callback(w.ctx, "wavespeed", task.task_id, delivery, b"{}", callback_query("wavespeed", task.task_id))
    assert w.deliveries.processed == {}
    # When the provider retries it
    outcome = receive_callback(
        w.ctx, "wavespeed", task.task_id, delivery, b"{}", callback_query("wavespeed", task.task_id)
    )
    # Then it is processed, not taken for a duplicate
    assert outcome == "recorded"
    assert stored(w, task.task_id).status is S.OUTPUT_READY


def test_an_unauthentic_delivery_is_not_remembered(w: World) -> None:
    # Given a forged delivery that reuses a real delivery's id
    task = submitted(w)
    w.provider.script_callback(WebhookAuthError("bad signature"), news(P.SUCCEEDED))
    delivery = {"webhook-id": "msg-1"}
    with pytest.raises(WebhookAuthError):
        receive_callback(w.ctx, "wavespeed", task.task_id, delivery, b"{}", callback_query("wavespeed", task.task_id))
    # When the real delivery comes
    outcome = receive_callback(
        w.ctx, "wavespeed", task.task_id, delivery, b"{}", callback_query("wavespeed", task.task_id)
    )
    # Then the forgery did not use its id up
    assert outcome == "recorded"


def test_a_twin_of_a_delivery_being_processed_is_refused_for_now(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a delivery whose twin arrives while it reads the task
    task = submitted(w)
    w.provider.script_callback(news(P.SUCCEEDED))
    delivery = {"webhook-id": "msg-1"}
    read = w.tasks.get
    twin: list[BaseException] = []

    def read_as_the_twin_arrives(task_id: str) -> Task | None:
        if not twin:
            with pytest.raises(DeliveryInProgressError) as refused:
                receive_callback(
                    w.ctx, "wavespeed", task.task_id, delivery, b"{}", callback_query("wavespeed", task.task_id)
                )
            twin.append(refused.value)
        return read(task_id)

    monkeypatch.setattr(w.tasks, "get", read_as_the_twin_arrives)
    # When the first is processed
    outcome = receive_callback(
        w.ctx, "wavespeed", task.task_id, delivery, b"{}", callback_query("wavespeed", task.task_id)
    )
    # Then the twin was refused as in progress, and the first recorded the news
    assert len(twin) == 1
    assert outcome == "recorded"


# ============================================================================================== finishing


def test_finalize_copies_the_video_to_outputs_and_completes(w: World) -> None:
    # Given a task whose video is ready
    task = output_ready(w)
    # When finalize runs
    action = finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
    # Then the video is copied to outputs/<job>/<task_id>.mp4 and the task COMPLETED
    assert action == "completed"
    key = f"outputs/alice/{task.task_id}.mp4"
    assert output_key(task) == key
    assert w.media.copies == [Copy(OUTPUT_URL, BUCKET, key, w.ctx.settings.max_output_bytes)]
    task = stored(w, task.task_id)
    assert task.status is S.COMPLETED
    assert task.output is not None
    assert (task.output.bucket, task.output.key, task.output.size) == (BUCKET, key, len(VIDEO))
    assert task.reason == f"video stored at s3://{BUCKET}/{key}"
    assert task.finalize_attempts == 1
    assert task.lease_until is None
    assert moves(task)[-2:] == [(S.OUTPUT_READY, S.FINALIZING), (S.FINALIZING, S.COMPLETED)]


def test_an_unusable_output_fails_the_task(w: World) -> None:
    # Given the provider's video is gone
    task = output_ready(w, OutputUnusableError("HTTP 404 from the CDN"))
    # When finalize runs
    action = finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
    # Then the task is FAILED, saying why, with no retry
    assert action == "failed"
    task = stored(w, task.task_id)
    assert task.status is S.FAILED
    assert task.reason == "the provider's video could not be used: HTTP 404 from the CDN"
    assert len(w.media.copies) == 1


def test_an_interrupted_copy_is_retried_after_its_backoff_and_completes(w: World) -> None:
    # Given the first copy breaks off and the second works
    task = output_ready(w, OutputCopyInterruptedError("connection reset"), VIDEO)
    # When finalize runs
    action = finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
    # Then it does not raise (a stream retry at once would not do better): the task is left FINALIZING with its lease
    # already over and its next attempt scheduled
    assert action == "retry-scheduled"
    task = stored(w, task.task_id)
    retry_at = w.clock.now + COPY_RETRY_FIRST
    assert task.status is S.FINALIZING
    assert task.lease_until is not None
    assert task.lease_until <= w.clock.now
    assert (task.copy_retry_at, task.next_check_at) == (retry_at, retry_at)
    assert task.reason == "copy attempt 1 broke off (connection reset); trying again at 12:01:15 UTC"
    # When finalize is asked again before then, it waits
    w.clock.advance(1)
    assert finalize_output(w.ctx, task.task_id, FINALIZE_TIME) == "skipped"
    # and the poller does not hand it back early
    assert run_poll(w).actions == {}
    # When the backoff is over, the poller hands it back, and finalize runs again
    w.clock.now = retry_at
    assert run_poll(w).actions == {"finalize-redriven": 1}
    assert finalize_output(w.ctx, task.task_id, FINALIZE_TIME) == "completed"
    # Then the second attempt completes it
    task = stored(w, task.task_id)
    assert task.status is S.COMPLETED
    assert task.finalize_attempts == 2
    assert len(w.media.copies) == 2


@pytest.fixture
def wavespeed_keeps_videos_a_day() -> Iterator[None]:
    day_long = dataclasses.replace(PROVIDERS["wavespeed"], output_retention=timedelta(days=1))
    with PROVIDERS.registered(day_long, replacing=True):
        yield


@pytest.mark.usefixtures("wavespeed_keeps_videos_a_day")
def test_interrupted_copies_are_retried_until_the_provider_deletes_the_video_then_the_task_fails(w: World) -> None:
    # Given a provider that keeps its videos for a day (a week for WaveSpeed: the same, seven times longer), and
    # every copy breaks off
    task = output_ready(w, OutputCopyInterruptedError("connection reset"))
    expires = task.output_expires_at
    assert expires == w.clock.now + timedelta(days=1)
    # When finalize runs each time the poller hands the task back after its backoff
    actions, polls, waits = [], [], []
    while True:
        actions.append(finalize_output(w.ctx, task.task_id, FINALIZE_TIME))
        retry_at = stored(w, task.task_id).copy_retry_at
        assert retry_at is not None
        waits.append(retry_at - w.clock.now)
        w.clock.now = retry_at
        polls.append(dict(run_poll(w).actions))
        if retry_at >= expires:
            break
    # Then every attempt before the expiry was made and scheduled the next, the backoff doubling up to an hour
    attempts = len(actions)
    assert set(actions) == {"retry-scheduled"}
    assert attempts == len(w.media.copies) > 20
    assert waits == sorted(waits)
    assert (waits[0], waits[-1]) == (COPY_RETRY_FIRST, COPY_RETRY_MAX)
    assert polls[:-1] == [{"finalize-redriven": 1}] * (attempts - 1)
    # and the poller's first look after the expiry fails the task instead of handing it back
    assert polls[-1] == {"finalize-failed": 1}
    task = stored(w, task.task_id)
    assert task.status is S.FAILED
    assert task.finalize_attempts == attempts
    assert task.reason is not None
    assert task.reason.startswith(f"the provider deleted its video before it could be copied ({attempts} attempts;")
    assert "connection reset" in task.reason


def test_a_finalize_that_comes_after_the_provider_deleted_the_video_fails_the_task_without_copying(w: World) -> None:
    # Given a ready video nobody copied before the provider's retention ran out
    task = output_ready(w)
    assert task.output_expires_at is not None
    w.clock.now = task.output_expires_at
    # When finalize runs
    action = finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
    # Then the task is FAILED, saying why, and no copy is tried
    assert action == "failed"
    task = stored(w, task.task_id)
    assert task.status is S.FAILED
    assert task.reason == (
        "the provider deleted its video before it could be copied (0 attempts; last: WaveSpeed finished the video)"
    )
    assert w.media.copies == []


def test_the_copy_backoff_doubles_from_15_s_up_to_an_hour() -> None:
    assert [copy_backoff(attempt).total_seconds() for attempt in (1, 2, 3, 4, 5)] == [15, 30, 60, 120, 240]
    assert copy_backoff(9) == COPY_RETRY_MAX == timedelta(hours=1)
    assert copy_backoff(500) == COPY_RETRY_MAX
    assert copy_backoff(0) == COPY_RETRY_FIRST


@pytest.mark.parametrize("state", ["queued", "submitted", "completed", "backing-off", "finalizing-with-live-lease"])
def test_finalize_skips_a_task_that_is_not_output_ready(w: World, state: str) -> None:
    # Given a task in another state
    if state == "queued":
        task = queued(w)
    elif state == "submitted":
        task = submitted(w)
    elif state == "completed":
        task = completed(w)
    elif state == "backing-off":
        task = output_ready(w, OutputCopyInterruptedError("connection reset"), VIDEO)
        assert finalize_output(w.ctx, task.task_id, FINALIZE_TIME) == "retry-scheduled"
        task = stored(w, task.task_id)
    else:
        task = output_ready(w, RuntimeError("killed"), VIDEO)
        with pytest.raises(RuntimeError):
            finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
        task = stored(w, task.task_id)
    copies = len(w.media.copies)
    # When finalize is asked to run on it
    action = finalize_output(w.ctx, task.task_id, FINALIZE_TIME)
    # Then it does nothing
    assert action == "skipped"
    assert len(w.media.copies) == copies
    assert stored(w, task.task_id) == task


def test_announce_publishes_one_notification_for_a_completed_task(w: World) -> None:
    # Given a COMPLETED task (paired at T0, video ready at T0+60s, copied at T0+70s)
    task = completed(w)
    w.clock.advance(5)
    # When it is announced
    assert announce(w.ctx, task.task_id) == "published"
    # Then exactly one notification carries everything the user needs
    (note,) = w.notifier.published
    assert note.job == "alice"
    assert note.task_id == task.task_id
    assert note.status is S.COMPLETED
    assert note.reason is None
    assert note.inputs == {
        "image": f"s3://{BUCKET}/inbox/alice/face.png",
        "audio": f"s3://{BUCKET}/inbox/alice/voice.mp3",
    }
    key = f"outputs/alice/{task.task_id}.mp4"
    assert note.output == f"s3://{BUCKET}/{key}"
    assert note.download_url == f"https://presigned.test/{BUCKET}/{key}?expires=86400"
    # and says when the link stops working: a day after it was signed (at the announcement)
    assert note.download_url_expires_at == w.clock.now + timedelta(days=1)
    assert note.provider == "wavespeed"
    assert note.provider_task_id == "ws-1"
    assert note.created_at == T0
    assert note.completed_at == T0 + timedelta(seconds=70)
    assert note.subject == "Your talking-avatar video is ready: alice"
    # and the task is marked announced, so the poller forgets it
    task = stored(w, task.task_id)
    assert task.notified_at == w.clock.now
    assert not task.needs_attention


def test_announce_publishes_the_reason_of_a_failure(w: World) -> None:
    # Given a FAILED task
    task = submitted(w)
    w.clock.advance(30)
    record_provider_news(w.ctx, task.task_id, news(P.FAILED, error_code="2001", error_message="no face"))
    # When it is announced
    assert announce(w.ctx, task.task_id) == "published"
    # Then the notification says why, and has no video
    (note,) = w.notifier.published
    assert note.status is S.FAILED
    assert note.reason == "WaveSpeed could not make the video (code 2001): no face"
    assert (note.output, note.download_url) == (None, None)
    assert set(note.inputs) == {"image", "audio"}
    assert note.completed_at == T0 + timedelta(seconds=30)


def test_announce_twice_publishes_once(w: World) -> None:
    task = completed(w)
    assert announce(w.ctx, task.task_id) == "published"
    assert announce(w.ctx, task.task_id) == "skipped"
    assert len(w.notifier.published) == 1


@pytest.mark.usefixtures("busy_threads")
def test_concurrent_announcers_publish_once() -> None:
    for round_ in range(RACE_ROUNDS):
        w = make_world()
        task = completed(w)
        actions = race(*(lambda w=w, t=task: announce(w.ctx, t.task_id) for _ in range(3)))
        assert sorted(actions) == ["published", "skipped", "skipped"], f"round {round_}"
        assert len(w.notifier.published) == 1, f"round {round_}"


def test_announce_skips_a_task_still_in_flight(w: World) -> None:
    task = submitted(w)
    assert announce(w.ctx, task.task_id) == "skipped"
    assert w.notifier.published == []
    assert stored(w, task.task_id) == task


def test_an_ended_task_is_counted_once_when_it_is_announced(w: World) -> None:
    # Given a COMPLETED task whose first announcement fails
    task = completed(w)
    w.notifier.fail_next(RuntimeError("SNS throttled"))
    assert announce(w.ctx, task.task_id) == "deferred"
    # Then nothing is counted yet
    assert w.meter.outcomes == []
    # When the poller publishes it later, and announcing is tried again afterwards
    w.clock.advance(NOTIFY_LEASE.total_seconds())
    run_poll(w)
    assert announce(w.ctx, task.task_id) == "skipped"
    # Then it is counted exactly once, as completed, with its times
    assert len(w.meter.outcomes) == 1
    outcome = w.meter.outcomes[0]
    assert (outcome.status, outcome.stage, outcome.provider) == (S.COMPLETED, "done", "wavespeed")
    assert outcome.provider_seconds is not None and 0 < outcome.provider_seconds <= outcome.end_to_end_seconds


def test_the_poller_reports_how_long_the_most_overdue_record_has_waited(w: World) -> None:
    # Given a submitted task that fell due 90 s ago
    task = submitted(w)
    assert task.next_check_at is not None
    w.clock.now = task.next_check_at + timedelta(seconds=90)
    # When the poller runs
    report = run_poll(w)
    # Then it says so
    assert report.oldest_due == timedelta(seconds=90)


def test_a_failed_publish_is_retried_by_the_poller_after_the_lease(w: World) -> None:
    # Given a COMPLETED task and an SNS outage
    task = completed(w)
    w.notifier.fail_next(RuntimeError("SNS throttled"))
    # When announcing fails, it is deferred (no exception: a stream retry could not do better than the poller)
    assert announce(w.ctx, task.task_id) == "deferred"
    # Then the task is still un-notified and needs the poller's attention
    task = stored(w, task.task_id)
    assert task.notified_at is None
    assert task.needs_attention
    assert w.notifier.published == []
    # When the poller runs while the notify lease holds, it does not publish
    w.clock.advance(NOTIFY_LEASE.total_seconds() - 1)
    run_poll(w)
    assert w.notifier.published == []
    # When it runs after the lease
    w.clock.advance(1)
    report = run_poll(w)
    # Then it publishes, and only once in total
    assert report.actions == {"notify-published": 1}
    assert len(w.notifier.published) == 1
    assert stored(w, task.task_id).notified_at is not None
    w.clock.advance(3600)
    run_poll(w)
    assert announce(w.ctx, task.task_id) == "skipped"
    assert len(w.notifier.published) == 1


def test_the_poller_announces_ended_tasks_nobody_announced(w: World) -> None:
    # Given a rejected upload whose notification the stream never sent
    handle_upload(w.ctx, upload("inbox/alice/notes.txt"))
    # When the poller runs
    report = run_poll(w)
    # Then it publishes it
    assert report.actions == {"notify-published": 1}
    (note,) = w.notifier.published
    assert note.status is S.REJECTED
    assert note.reason is not None
    assert "notes.txt" in note.reason


def test_two_images_in_one_job_reject_it_naming_both_and_nothing_is_paid_on_a_guess(w: World) -> None:
    # Given a job folder that receives two differently named images before any audio
    first = upload("inbox/alice/face.png", etag="img-a")
    second = upload("inbox/alice/other.png", etag="img-b")
    assert handle_upload(w.ctx, first).action == "waiting"
    outcome = handle_upload(w.ctx, second)
    # Then the job is REJECTED with a reason naming both files
    assert outcome.action == "rejected"
    reason = stored(w, outcome.task_id).reason or ""
    assert "inbox/alice/face.png" in reason and "inbox/alice/other.png" in reason
    # And the audio that follows waits for the image the user means; nothing is submitted on a guess
    assert handle_upload(w.ctx, AUDIO).action == "waiting"
    run_dispatcher(w)
    assert w.provider.submit_count == 0
    # When the intended image is uploaded again, the pair goes through
    assert handle_upload(w.ctx, first).action == "queued"
    assert run_dispatcher(w) == {"submit-submitted": 1}
    assert w.provider.submit_count == 1


def test_content_problems_reject_the_pair_before_any_provider_call(w: World) -> None:
    # Given an "image" whose bytes are a text file, and a real audio clip
    w.media.put_object(BUCKET, IMAGE.key, b"this is not an image at all" * 20)
    # When the pair arrives
    outcome = deliver_pair(w)
    # Then it is REJECTED naming the file, and the provider was never called
    assert outcome.action == "rejected"
    assert "face.png" in (stored(w, outcome.task_id).reason or "")
    assert w.provider.submit_count == 0


def test_a_repeat_of_the_completing_event_cuts_the_pair_when_the_first_attempt_died(w: World) -> None:
    # Given the image waits, and the invocation that got the audio died before cutting the pair
    handle_upload(w.ctx, IMAGE)
    w.tasks.fail_next("save_slot_and_create", RuntimeError("throttled"))
    with pytest.raises(RuntimeError):
        handle_upload(w.ctx, AUDIO)
    # When S3 (or Lambda's retry) delivers the audio's event again
    outcome = handle_upload(w.ctx, AUDIO)
    # Then the pair is cut into the line now, not at the pairing deadline, and sent
    assert outcome.action == "queued"
    assert run_dispatcher(w) == {"submit-submitted": 1}
    assert w.provider.submit_count == 1


def test_an_input_replaced_while_being_checked_waits_for_its_new_version(w: World, monkeypatch) -> None:
    # Given the face is overwritten while the pair is being checked (its ETag no longer matches)
    real_source = w.media.source

    def source(obj: S3Object) -> Any:
        if obj == IMAGE:
            raise InputGoneError(f"{obj.key} was deleted or replaced before it could be checked")
        return real_source(obj)

    monkeypatch.setattr(w.media, "source", source)
    handle_upload(w.ctx, IMAGE)
    # When the audio completes the pair
    outcome = handle_upload(w.ctx, AUDIO)
    # Then no task is made from bytes that are gone
    assert outcome.action == "waiting"
    assert w.tasks.all_tasks() == []
    # When the new version's event arrives
    newer = S3Object(bucket=BUCKET, key=IMAGE.key, etag="img-2", size=IMAGE.size, sequencer="2")
    outcome = handle_upload(w.ctx, newer)
    # Then the pair goes through with it
    assert outcome.action == "queued"
    assert stored(w, outcome.task_id).image == newer


def test_every_accepted_submission_is_metered_once_with_its_cost_whoever_made_it(w: World) -> None:
    # Given the first submission is turned away, and the one after the pause is accepted
    w.provider.script_submit(ProviderTransientError("HTTP 429"), ProviderJob(provider_task_id="ws-9", status=P.QUEUED))
    task = queued(w)
    assert send_next(w).actions == {"submit-requeued": 1}
    meter = w.meter
    assert meter.submissions == []
    # When the poller, at the end of the pause, moves the line
    w.clock.advance(w.ctx.settings.rate_window_seconds)
    assert run_poll(w).actions == {"submit-submitted": 1}
    # Then the one accepted submission is counted once, with the task's estimated cost
    assert meter.submissions == [("wavespeed", stored(w, task.task_id).estimated_cost_usd)]


# ============================================================================================== late videos


def timed_out_at_the_provider(w: World) -> Task:
    """A task WaveSpeed accepted and never started within its queue limit: timed out, and announced so."""
    task = submitted(w)
    w.clock.now = T0 + timedelta(seconds=w.ctx.settings.max_provider_queue_seconds + 1)
    assert run_poll(w).actions["timed-out"] == 1
    run_dispatcher(w)  # the stream: its render slot is free
    assert run_poll(w).actions == {"notify-published": 1}
    return stored(w, task.task_id)


def test_a_video_delivered_after_the_time_out_is_copied_and_announced_again_as_a_correction(w: World) -> None:
    # Given a task that timed out at WaveSpeed, announced as TIMED_OUT
    task = timed_out_at_the_provider(w)
    assert (task.status, task.notified_at) == (S.TIMED_OUT, w.clock.now)
    (first,) = w.notifier.published
    assert (first.status, first.corrects) == (S.TIMED_OUT, None)
    # When WaveSpeed's SUCCEEDED callback comes after all
    w.clock.advance(600)
    w.provider.script_callback(news(P.SUCCEEDED))
    action = receive_callback(
        w.ctx, "wavespeed", task.task_id, {"webhook-id": "late-1"}, b"{}", callback_query("wavespeed", task.task_id)
    )
    # Then the paid video is kept: the task reopens to OUTPUT_READY, marked as correcting its time-out
    assert action == "recorded"
    task = stored(w, task.task_id)
    assert task.status is S.OUTPUT_READY
    assert moves(task)[-2:] == [(S.SUBMITTED, S.TIMED_OUT), (S.TIMED_OUT, S.OUTPUT_READY)]
    assert task.reason == "WaveSpeed delivered the video after the task had timed out; keeping it"
    assert task.corrects is S.TIMED_OUT
    assert (task.notified_at, task.watch_until) == (None, None)
    assert task.provider_output_url == OUTPUT_URL
    assert task.output_expires_at == w.clock.now + PROVIDERS["wavespeed"].output_retention
    # When it is copied and announced
    w.media.script_download(OUTPUT_URL, VIDEO)
    assert finalize_output(w.ctx, task.task_id, FINALIZE_TIME) == "completed"
    assert announce(w.ctx, task.task_id) == "published"
    # Then a second notification says the video is ready after all, and corrects the first
    second = w.notifier.published[1]
    assert (second.status, second.corrects) == (S.COMPLETED, S.TIMED_OUT)
    assert second.subject == "Your talking-avatar video is ready after all: alice"
    assert second.download_url is not None
    assert "This replaces the earlier notification for this task, which said TIMED_OUT." in second.email_text
    # and that is all: exactly two notifications, however often the callback repeats and the poller runs
    w.provider.script_callback(news(P.SUCCEEDED))
    assert (
        receive_callback(
            w.ctx, "wavespeed", task.task_id, {"webhook-id": "late-2"}, b"{}", callback_query("wavespeed", task.task_id)
        )
        == "unchanged"
    )
    for _ in range(3):
        w.clock.advance(LATE_VIDEO_CHECK_EVERY.total_seconds())
        run_poll(w)
    assert announce(w.ctx, task.task_id) == "skipped"
    assert [(note.status, note.corrects) for note in w.notifier.published] == [
        (S.TIMED_OUT, None),
        (S.COMPLETED, S.TIMED_OUT),
    ]
    # and each ending was counted once
    assert [outcome.status for outcome in w.meter.outcomes] == [S.TIMED_OUT, S.COMPLETED]
    assert stored(w, task.task_id).status is S.COMPLETED


def test_the_poller_watches_a_timed_out_task_and_keeps_its_late_video(w: World) -> None:
    # Given a task that timed out at WaveSpeed and was announced so
    task = timed_out_at_the_provider(w)
    fetches = len(w.provider.fetches)
    # When the poller looks while WaveSpeed is still at it, then once it has finished
    w.provider.script_fetch(news(P.PROCESSING), news(P.SUCCEEDED))
    w.clock.advance(1)
    first = run_poll(w)
    w.clock.advance(LATE_VIDEO_CHECK_EVERY.total_seconds())
    second = run_poll(w)
    # Then it kept watching, then reopened the task with the late video
    assert first.actions == {"watching": 1}
    assert second.actions == {"late-video": 1}
    assert w.provider.fetches[fetches:] == ["ws-1", "ws-1"]
    task = stored(w, task.task_id)
    assert (task.status, task.corrects) == (S.OUTPUT_READY, S.TIMED_OUT)
    # When it is copied and announced
    w.media.script_download(OUTPUT_URL, VIDEO)
    assert finalize_output(w.ctx, task.task_id, FINALIZE_TIME) == "completed"
    assert announce(w.ctx, task.task_id) == "published"
    # Then there are exactly two notifications, the second correcting the first
    assert [(note.status, note.corrects) for note in w.notifier.published] == [
        (S.TIMED_OUT, None),
        (S.COMPLETED, S.TIMED_OUT),
    ]
    w.clock.advance(3600)
    run_poll(w)
    assert len(w.notifier.published) == 2


def test_a_late_video_before_the_time_out_was_announced_makes_a_single_notification(w: World) -> None:
    # Given a task timed out at WaveSpeed whose time-out nobody announced yet
    task = submitted(w)
    w.clock.now = T0 + timedelta(seconds=w.ctx.settings.max_provider_queue_seconds + 1)
    assert run_poll(w).actions["timed-out"] == 1
    # When the video arrives first
    assert record_provider_news(w.ctx, task.task_id, news(P.SUCCEEDED)) == "recorded"
    task = stored(w, task.task_id)
    # Then there is nothing to correct: the time-out is never announced, only the video
    assert (task.status, task.corrects) == (S.OUTPUT_READY, None)
    w.media.script_download(OUTPUT_URL, VIDEO)
    assert finalize_output(w.ctx, task.task_id, FINALIZE_TIME) == "completed"
    assert announce(w.ctx, task.task_id) == "published"
    w.clock.advance(3600)
    run_poll(w)
    assert [(note.status, note.corrects) for note in w.notifier.published] == [(S.COMPLETED, None)]
    assert w.notifier.published[0].subject == "Your talking-avatar video is ready: alice"


def test_the_watch_ends_when_the_provider_fails_the_task_and_late_news_changes_nothing_then(w: World) -> None:
    # Given a timed-out task whose provider then reports it failed
    task = timed_out_at_the_provider(w)
    w.provider.script_fetch(news(P.FAILED, error_code="2001", error_message="no face"))
    w.clock.advance(1)
    # When the poller looks
    assert run_poll(w).actions == {"watch-ended": 1}
    # Then the task is no longer the poller's, and stays TIMED_OUT
    task = stored(w, task.task_id)
    assert (task.status, task.watch_until) == (S.TIMED_OUT, None)
    assert not task.needs_attention
    # and a SUCCEEDED that still came changes nothing
    assert record_provider_news(w.ctx, task.task_id, news(P.SUCCEEDED)) == "unchanged"
    assert len(w.notifier.published) == 1


def test_the_watch_ends_when_the_provider_would_have_deleted_the_video(w: World) -> None:
    # Given a timed-out task the provider never finishes
    task = timed_out_at_the_provider(w)
    assert task.watch_until is not None
    # When the poller looks at the end of the watch
    w.clock.now = task.watch_until
    assert run_poll(w).actions == {"watch-ended": 1}
    # Then it looks no more
    assert not stored(w, task.task_id).needs_attention
    w.clock.advance(86400)
    assert run_poll(w).actions == {}


def test_a_task_that_timed_out_waiting_for_its_pair_is_not_watched(w: World) -> None:
    # Given an orphan image timed out (nothing was ever sent)
    handle_upload(w.ctx, IMAGE)
    w.clock.advance(w.ctx.settings.max_pair_wait_seconds)
    run_poll(w)
    run_poll(w)
    # Then it is not watched: the poller is done with it once announced
    task = w.tasks.only_task()
    assert (task.status, task.watch_until, task.notified_at) == (S.TIMED_OUT, None, w.clock.now)
    assert not task.needs_attention
