"""Admission by quota: checked pairs wait in their provider's line and are sent, first come first served, as the
provider account's render slots, its submission window and the daily spend limit allow (services/admission.py over
the pure decisions of quota.py)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from support.fakes import (
    BUCKET,
    T0,
    ScriptedProvider,
    World,
    make_settings,
    make_world,
    run_dispatcher,
    upload,
)

from avatar_local.simulators.media import make_sample_speech as sample_speech
from avatar_pipeline.domain.errors import ProviderOutcomeUnknownError, ProviderTransientError
from avatar_pipeline.domain.models import ProviderJob, ProviderJobStatus, ProviderName, ProviderQuota, Task, TaskStatus
from avatar_pipeline.domain.quota import (
    WINDOW_MARGIN,
    QuotaLimits,
    admitting,
    budget_day,
    ordinal,
    pausing,
    releasing,
    wait_before_admitting,
    waking,
)
from avatar_pipeline.services import admission
from avatar_pipeline.services.admission import DispatchReport, dispatch, on_line_changes
from avatar_pipeline.services.intake import handle_upload
from avatar_pipeline.services.tracking import poll, record_provider_news

S = TaskStatus
P = ProviderJobStatus
LEFT = timedelta(minutes=5)
# The window a submission is counted in: the provider's minute and a margin for the network between our clocks.
COUNTED_MINUTE = timedelta(seconds=60 * (1 + WINDOW_MARGIN))


# --- helpers ---------------------------------------------------------------------------------------------------


def pair(w: World, job: str, options: dict | None = None) -> Task:
    """Job `job`'s image and audio arrive (with its job.json, if given): one checked task, in its provider's line.
    The clock moves on a millisecond, so pairs made one after the other join the line one after the other."""
    if options is not None:
        w.media.put_object(BUCKET, f"inbox/{job}/job.json", json.dumps(options))
    assert handle_upload(w.ctx, upload(f"inbox/{job}/face.png", etag=f"img-{job}")).action == "waiting"
    outcome = handle_upload(w.ctx, upload(f"inbox/{job}/voice.mp3", etag=f"aud-{job}"))
    assert outcome.action == "queued", outcome
    task = w.tasks.get(outcome.task_id or "")
    assert task is not None
    w.clock.advance(0.001)
    return task


def send_next(w: World, provider: ProviderName = "wavespeed") -> DispatchReport:
    return dispatch(w.ctx, provider, lambda: LEFT)


def wake_up(w: World, provider: ProviderName = "wavespeed") -> DispatchReport:
    """The delayed SQS message the dispatcher asked for arrives."""
    return on_line_changes(w.ctx, {}, {provider: set()}, lambda: LEFT)


def status(w: World, task: Task) -> TaskStatus:
    stored = w.tasks.get(task.task_id)
    assert stored is not None
    return stored.status


def sent(w: World, provider: ScriptedProvider | None = None) -> list[str]:
    """Our task ids in the order `provider` (WaveSpeed) was sent them."""
    return [request.task_id for request in (provider or w.provider).submissions]


def ready(w: World, task: Task, provider_task_id: str) -> None:
    """The provider finished `task`'s video (its callback)."""
    done = ProviderJob(provider_task_id=provider_task_id, status=P.SUCCEEDED, output_url="https://cdn.test/v.mp4")
    assert record_provider_news(w.ctx, task.task_id, done) == "recorded"


def run_poll(w: World) -> dict[str, int]:
    return dict(poll(w.ctx, lambda: LEFT).actions)


# ============================================================================================== the line


def test_the_line_is_first_come_first_served_across_jobs(w: World) -> None:
    # Given pairs of four jobs checked one after the other (their names in no particular order)
    tasks = []
    for job in ("zed", "amy", "kim", "bob"):
        tasks.append(pair(w, job))
        w.clock.advance(1)
    # Then each was told its place when it joined the line
    assert [task.reason.split("; ")[-1] for task in tasks if task.reason] == [
        f"Kling v1 AI Avatar (standard), {place} in line for WaveSpeed (3 renders at once, 5 submissions a minute)"
        for place in ("1st", "2nd", "3rd", "4th")
    ]
    assert w.tasks.line("wavespeed") == [task.task_id for task in tasks]
    # When the dispatcher moves the line
    report = send_next(w)
    # Then the first three are sent in the order they came, whatever their job, and the fourth waits its turn
    assert report.actions == {"submit-submitted": 3}
    assert sent(w) == [task.task_id for task in tasks[:3]]
    assert [status(w, task) for task in tasks] == [S.SUBMITTED, S.SUBMITTED, S.SUBMITTED, S.QUEUED]


def test_a_pair_the_lines_index_does_not_show_yet_is_sent_from_the_stream_record_that_announced_it(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the line's index lags behind the table (a GSI is updated after the write the stream reports)
    monkeypatch.setattr(w.tasks, "queue_head", lambda provider, limit: [])
    task = pair(w, "a")
    # When the stream record of the pair joining the line reaches the dispatcher
    assert run_dispatcher(w) == {"submit-submitted": 1}
    # Then it was sent at once, not a poll later
    assert sent(w) == [task.task_id]


def test_no_more_than_renders_at_once_tasks_hold_render_slots(w: World) -> None:
    # Given five pairs in line, and WaveSpeed renders three at once
    tasks = [pair(w, job) for job in ("a", "b", "c", "d", "e")]
    # When the dispatcher sees them join
    actions = run_dispatcher(w)
    # Then three are sent and hold the slots; the other two wait, with no wake-up (a finishing render wakes it)
    assert actions == {"submit-submitted": 3}
    assert w.tasks.holders("wavespeed") == {task.task_id for task in tasks[:3]}
    assert w.tasks.line("wavespeed") == [task.task_id for task in tasks[3:]]
    assert w.waker.calls == []
    report = send_next(w)
    assert (report.actions, report.waiting) == ({}, "all 3 of WaveSpeed's render slots are in use")
    # When WaveSpeed starts rendering them, and the poller keeps running, nothing more is sent
    for task, provider_task_id in zip(tasks[:3], ("ws-1", "ws-2", "ws-3"), strict=True):
        record_provider_news(w.ctx, task.task_id, ProviderJob(provider_task_id=provider_task_id, status=P.PROCESSING))
    run_dispatcher(w)
    for _ in range(3):
        w.clock.advance(w.ctx.settings.poll_after_seconds)
        run_poll(w)
    assert w.provider.submit_count == 3
    assert len(w.tasks.holders("wavespeed")) == 3


def test_a_finishing_render_lets_the_next_in_line_in_at_once(w: World) -> None:
    # Given three renders at WaveSpeed and a fourth pair waiting
    first, second, third, fourth = (pair(w, job) for job in ("a", "b", "c", "d"))
    run_dispatcher(w)
    assert status(w, fourth) is S.QUEUED
    # When the second render finishes (its callback)
    w.clock.advance(90)
    ready(w, second, "ws-2")
    # Then the dispatcher, on that change, gives its slot back and sends the fourth at that very moment
    assert run_dispatcher(w) == {"submit-submitted": 1}
    assert sent(w)[-1] == fourth.task_id
    assert w.tasks.holders("wavespeed") == {first.task_id, third.task_id, fourth.task_id}
    stored = w.tasks.get(fourth.task_id)
    assert stored is not None and stored.status is S.SUBMITTED
    assert [step.at for step in stored.history if step.to_status is S.SUBMITTING] == [w.clock.now]


@pytest.mark.parametrize("ending", ["failed", "timed-out"])
def test_a_render_that_ends_any_other_way_gives_its_slot_back_too(ending: str) -> None:
    w = make_world(settings={"WAVESPEED_RENDERS_AT_ONCE": "1"})
    first, second = pair(w, "a"), pair(w, "b")
    run_dispatcher(w)
    if ending == "failed":
        failure = ProviderJob(provider_task_id="ws-1", status=P.FAILED, error_message="no face")
        record_provider_news(w.ctx, first.task_id, failure)
    else:
        w.clock.advance(w.ctx.settings.max_provider_queue_seconds + 1)
        assert run_poll(w)["timed-out"] == 1  # (the same pass reconciles the slot and moves the line)
    run_dispatcher(w)
    assert status(w, second) is S.SUBMITTED
    assert w.tasks.holders("wavespeed") == {second.task_id}
    assert sent(w) == [first.task_id, second.task_id]


# ============================================================================================== the window


def test_the_submission_window_is_honoured_and_the_dispatcher_is_woken_when_it_has_room() -> None:
    # Given plenty of render slots, 5 submissions a minute, and seven pairs in line
    w = make_world(settings={"WAVESPEED_RENDERS_AT_ONCE": "10"})
    tasks = [pair(w, f"job{number}") for number in range(7)]
    # When the dispatcher moves the line
    start = w.clock.now
    report = send_next(w)
    # Then five are sent, and it asks to be woken when the oldest of them leaves the window
    assert report.actions == {"submit-submitted": 5}
    assert report.waiting == "WaveSpeed takes 5 submissions per window"
    assert sent(w) == [task.task_id for task in tasks[:5]]
    assert w.waker.calls == [("wavespeed", start + COUNTED_MINUTE)]
    # When another pair joins the line meanwhile, it waits too, and no second wake-up is asked for
    w.clock.advance(30)
    late = pair(w, "late")
    assert run_dispatcher(w) == {}
    assert w.waker.calls == [("wavespeed", start + COUNTED_MINUTE)]
    # When the poller looks just before the window has room, nothing is sent
    w.clock.now = start + COUNTED_MINUTE - timedelta(seconds=1)
    assert run_poll(w) == {}
    # When the wake-up comes
    w.clock.now = start + COUNTED_MINUTE
    report = wake_up(w)
    # Then the rest of the line is sent, in order
    assert report.actions == {"submit-submitted": 3}
    assert sent(w)[5:] == [tasks[5].task_id, tasks[6].task_id, late.task_id]


def test_a_window_filled_over_time_has_room_when_its_oldest_submission_leaves() -> None:
    # Given five submissions 10 s apart (the window then full) and one more pair waiting
    w = make_world(settings={"WAVESPEED_RENDERS_AT_ONCE": "10"})
    times = []
    for number in range(5):
        pair(w, f"job{number}")
        times.append(w.clock.now)
        assert send_next(w).actions == {"submit-submitted": 1}
        w.clock.advance(10)
    waiting = pair(w, "waiting")
    # When the dispatcher moves the line
    report = send_next(w)
    # Then it waits until the first submission has left the counted window, and asks to be woken then
    assert report.waiting == "WaveSpeed takes 5 submissions per window"
    assert w.waker.calls == [("wavespeed", times[0] + COUNTED_MINUTE)]
    w.clock.now = times[0] + COUNTED_MINUTE - timedelta(milliseconds=1)
    assert send_next(w).actions == {}
    w.clock.now = times[0] + COUNTED_MINUTE
    assert wake_up(w).actions == {"submit-submitted": 1}
    assert status(w, waiting) is S.SUBMITTED


def test_a_lost_wake_up_is_made_up_by_the_poller() -> None:
    # Given a full window, a task waiting, and the wake-up the dispatcher asked for never arrives
    w = make_world(settings={"WAVESPEED_RENDERS_AT_ONCE": "10"})
    tasks = [pair(w, f"job{number}") for number in range(6)]
    send_next(w)
    # When the poller runs after the window has room
    w.clock.now = T0 + COUNTED_MINUTE + timedelta(seconds=20)
    actions = run_poll(w)
    # Then it moves the line itself
    assert actions["submit-submitted"] == 1
    assert status(w, tasks[-1]) is S.SUBMITTED


# ============================================================================================== turned away


def test_a_429_puts_the_task_back_at_its_place_and_pauses_the_provider(w: World) -> None:
    # Given three pairs in line, and WaveSpeed answers the first submission with a 429 (Retry-After: 30 s)
    first, second, third = (pair(w, job) for job in ("a", "b", "c"))
    w.provider.script_submit(ProviderTransientError("HTTP 429", code="429", retry_after=30), None)
    # When the dispatcher moves the line
    start = w.clock.now
    report = send_next(w)
    # Then the first is back at the head of the line, where it was, and nothing more is sent while WaveSpeed pauses
    assert report.actions == {"submit-requeued": 1}
    assert report.waiting == "WaveSpeed asked us to slow down (rate limited)"
    assert w.tasks.line("wavespeed") == [first.task_id, second.task_id, third.task_id]
    requeued = w.tasks.get(first.task_id)
    assert requeued is not None
    assert (requeued.status, requeued.queued_at) == (S.QUEUED, first.queued_at)
    assert requeued.reason == "WaveSpeed turned it away (HTTP 429); back to its place in line, sent after 12:00:30 UTC"
    quota = w.tasks.get_quota("wavespeed")
    assert quota is not None
    assert (quota.paused_until, quota.holders) == (start + timedelta(seconds=30), {})
    # and the dispatcher asks to be woken when the pause ends
    assert w.waker.calls == [("wavespeed", start + timedelta(seconds=30))]
    # When the line is moved before then, nothing is sent
    w.clock.advance(29)
    assert send_next(w).actions == {}
    assert w.provider.submit_count == 1
    # When the wake-up comes at the end of the pause
    w.clock.advance(1)
    assert wake_up(w).actions == {"submit-submitted": 3}
    # Then the line goes in its order, the turned-away task first
    assert sent(w) == [first.task_id, first.task_id, second.task_id, third.task_id]
    resent = w.tasks.get(first.task_id)
    assert resent is not None and (resent.status, resent.submit_attempts) == (S.SUBMITTED, 2)


def test_a_late_release_of_a_task_sent_again_since_does_not_free_the_slot_it_holds_now() -> None:
    # Given WaveSpeed renders one at a time, turns a pair away once (Retry-After 0) and takes it at once again
    w = make_world(settings={"WAVESPEED_RENDERS_AT_ONCE": "1"})
    task, other = pair(w, "a"), pair(w, "b")
    w.provider.script_submit(ProviderTransientError("HTTP 429", code="429", retry_after=0), None)
    assert send_next(w).actions == {"submit-requeued": 1, "submit-submitted": 1}
    assert w.tasks.holders("wavespeed") == {task.task_id}
    # When the stream record of its turn-away (it left SUBMITTING) reaches the dispatcher only now
    on_line_changes(w.ctx, {"wavespeed": {task.task_id}}, {"wavespeed": set()}, lambda: LEFT)
    # Then it keeps the slot it holds at WaveSpeed, and the next pair waits for it
    assert w.tasks.holders("wavespeed") == {task.task_id}
    assert sent(w) == [task.task_id, task.task_id]
    assert status(w, other) is S.QUEUED


def test_a_task_the_provider_keeps_turning_away_fails_explained_instead_of_cycling_for_ever(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given WaveSpeed answers every submission 503, and a task may be turned away 3 times
    monkeypatch.setattr(admission, "MAX_SUBMIT_ATTEMPTS", 3)
    task, behind = pair(w, "a"), pair(w, "b")
    w.provider.script_submit(*[ProviderTransientError("HTTP 503", code="503")] * 3, None)
    # When the line moves each time the pause is over
    actions = []
    for _ in range(3):
        actions.append(send_next(w).actions)
        w.clock.advance(60)
    # Then it went back in line twice, and the third time it failed, saying why; nothing was ever taken
    assert actions == [{"submit-requeued": 1}, {"submit-requeued": 1}, {"submit-failed": 1}]
    failed = w.tasks.get(task.task_id)
    assert failed is not None and failed.status is S.FAILED
    assert failed.reason == (
        "WaveSpeed turned it away 3 times since it was first sent (last: HTTP 503); it was never taken, so nothing"
        " was paid: upload the files again to try again"
    )
    # and the line goes on with the pair behind it, into the slot it gave back
    assert send_next(w).actions == {"submit-submitted": 1}
    assert w.tasks.holders("wavespeed") == {behind.task_id}


def test_a_pause_keeps_the_slots_of_tasks_already_at_the_provider(w: World) -> None:
    # Given one task at WaveSpeed, and the next submission is turned away
    first, second = pair(w, "a"), pair(w, "b")
    w.provider.script_submit(None, ProviderTransientError("HTTP 429", code="429"), None)
    start = w.clock.now
    report = send_next(w)
    # Then only the turned-away task gave its slot back; the line pauses for one window
    assert report.actions == {"submit-submitted": 1, "submit-requeued": 1}
    assert w.tasks.holders("wavespeed") == {first.task_id}
    quota = w.tasks.get_quota("wavespeed")
    assert quota is not None and quota.paused_until == start + timedelta(seconds=60)
    assert status(w, second) is S.QUEUED


def test_failover_puts_the_task_in_the_other_providers_line_at_its_place_and_never_at_both() -> None:
    # Given CometAPI renders one at a time, a WaveSpeed pair in line first, then a CometAPI pair
    wavespeed, comet = ScriptedProvider(), ScriptedProvider("cometapi", "query")
    w = make_world(
        provider=wavespeed,
        providers={"wavespeed": wavespeed, "cometapi": comet},
        settings={"COMETAPI_RENDERS_AT_ONCE": "1"},
    )
    moved = pair(w, "amy")
    w.clock.advance(10)
    other = pair(w, "bob", {"provider": "cometapi"})
    # When WaveSpeed turns the first away (unavailable: it did not take it)
    wavespeed.script_submit(ProviderTransientError("HTTP 503", code="503"))
    w.clock.advance(10)
    assert send_next(w, "wavespeed").actions == {"submit-requeued": 1}
    # Then it is in CometAPI's line only, ahead of the pair that joined after it
    assert w.tasks.line("wavespeed") == []
    assert w.tasks.line("cometapi") == [moved.task_id, other.task_id]
    # When CometAPI's line moves
    assert run_dispatcher(w) == {"submit-submitted": 1}
    # Then it goes first; the other waits for CometAPI's one slot
    assert sent(w, comet) == [moved.task_id]
    assert status(w, other) is S.QUEUED
    # and WaveSpeed never has it, however often its line moves
    w.clock.advance(120)
    send_next(w, "wavespeed")
    run_poll(w)
    assert sent(w, wavespeed) == [moved.task_id]  # the submission it turned away
    stored = w.tasks.get(moved.task_id)
    assert stored is not None and (stored.status, stored.provider) == (S.SUBMITTED, "cometapi")


def test_a_pair_for_a_provider_that_is_not_configured_fails_saying_it_is_ours_to_fix(w: World) -> None:
    # Given only WaveSpeed has a key, and a job asks for CometAPI
    task = pair(w, "amy", {"provider": "cometapi"})
    # When CometAPI's line moves
    assert send_next(w, "cometapi").actions == {"submit-failed": 1}
    # Then the task failed without a request, saying the configuration is at fault, not the provider
    stored = w.tasks.get(task.task_id)
    assert stored is not None and stored.status is S.FAILED
    assert stored.reason == (
        "CometAPI cannot be used as configured: cometapi is not configured (no API key in its secret)"
    )


def test_a_pair_whose_file_changed_while_it_waited_is_not_sent(w: World) -> None:
    # Given a checked pair in line, and its image is overwritten before its turn
    task = pair(w, "amy")
    w.media.changed.add((BUCKET, "inbox/amy/face.png"))
    # When its turn comes
    assert send_next(w).actions == {"submit-failed": 1}
    # Then nothing was sent (the provider would have downloaded unchecked bytes), and the task says why
    assert w.provider.submit_count == 0
    stored = w.tasks.get(task.task_id)
    assert stored is not None and stored.status is S.FAILED
    assert stored.reason == (
        "inbox/amy/face.png changed or was deleted while the pair waited in line; not sent (an upload that replaced"
        " it is a pair of its own)"
    )


# ============================================================================================== spill-over

SPILL_OVER_AFTER = timedelta(seconds=600)


def one_render_each() -> tuple[World, ScriptedProvider, ScriptedProvider]:
    wavespeed, comet = ScriptedProvider(), ScriptedProvider("cometapi", "query")
    w = make_world(
        provider=wavespeed,
        providers={"wavespeed": wavespeed, "cometapi": comet},
        settings={"WAVESPEED_RENDERS_AT_ONCE": "1", "COMETAPI_RENDERS_AT_ONCE": "1"},
    )
    return w, wavespeed, comet


def test_a_pair_that_waited_long_spills_over_to_the_other_provider_with_room_and_is_sent_there_only() -> None:
    # Given WaveSpeed renders one at a time: the first pair renders there, the second waits in its line
    w, wavespeed, comet = one_render_each()
    rendering, waiting = pair(w, "amy"), pair(w, "bob")
    assert run_dispatcher(w) == {"submit-submitted": 1}
    # When it has waited the spill-over time and the poller moves the lines (CometAPI's is empty, with room)
    w.clock.advance(SPILL_OVER_AFTER.total_seconds())
    assert run_poll(w) == {"no-news": 1, "submit-submitted": 1}
    # Then it was moved to CometAPI's line and sent there, at CometAPI's price, and the move is in its history
    assert sent(w, comet) == [waiting.task_id]
    stored = w.tasks.get(waiting.task_id)
    assert stored is not None
    assert (stored.status, stored.provider, stored.failed_over_from) == (S.SUBMITTED, "cometapi", "wavespeed")
    assert stored.estimated_cost_usd == "0.30"
    spill = next(step for step in stored.history if (step.from_status, step.to_status) == (S.QUEUED, S.QUEUED))
    assert spill.reason == "waited 10 min in line for WaveSpeed; CometAPI has room: moved to its line (spill-over)"
    # and WaveSpeed never gets it, even once its slot is free
    ready(w, rendering, "ws-1")
    run_dispatcher(w)
    run_poll(w)
    assert sent(w, wavespeed) == [rendering.task_id]


@pytest.mark.parametrize(
    ("why_it_stays", "options", "settings", "waited"),
    [
        ("it has not waited the spill-over time", None, {}, SPILL_OVER_AFTER - timedelta(seconds=1)),
        ("its job does not allow failover", {"failover": False}, {}, SPILL_OVER_AFTER),
        ("spill-over is off", None, {"SPILL_OVER_AFTER_SECONDS": "0"}, SPILL_OVER_AFTER * 3),
    ],
)
def test_a_pair_stays_in_its_providers_line_when(
    why_it_stays: str, options: dict | None, settings: dict[str, str], waited: timedelta
) -> None:
    # Given WaveSpeed renders one at a time and CometAPI's line is empty
    wavespeed, comet = ScriptedProvider(), ScriptedProvider("cometapi", "query")
    w = make_world(
        provider=wavespeed,
        providers={"wavespeed": wavespeed, "cometapi": comet},
        settings={"WAVESPEED_RENDERS_AT_ONCE": "1", **settings},
    )
    pair(w, "amy", options)
    waiting = pair(w, "bob", options)
    run_dispatcher(w)
    # When the lines move after it waited (less than the spill-over time, or with spill-over not allowed)
    w.clock.advance(waited.total_seconds())
    run_poll(w)
    # Then it is still in WaveSpeed's line, and CometAPI was sent nothing
    assert w.tasks.line("wavespeed") == [waiting.task_id], why_it_stays
    assert sent(w, comet) == []


def test_a_pair_does_not_spill_over_to_a_provider_with_no_room() -> None:
    # Given both providers render one at a time and CometAPI is busy with a pair of its own
    w, _, comet = one_render_each()
    pair(w, "amy")
    waiting = pair(w, "bob")
    pair(w, "cat", {"provider": "cometapi"})
    assert run_dispatcher(w) == {"submit-submitted": 2}
    # When the WaveSpeed pair has waited long
    w.clock.advance(SPILL_OVER_AFTER.total_seconds() * 2)
    run_poll(w)
    # Then it waits on in WaveSpeed's line
    assert w.tasks.line("wavespeed") == [waiting.task_id]
    assert len(sent(w, comet)) == 1


# ============================================================================================== the spend limit


def test_the_daily_spend_limit_stops_admission_and_the_first_in_line_says_why() -> None:
    # Given a daily limit of $0.50 and three pairs of $0.25 each
    w = make_world(settings={"DAILY_SPEND_LIMIT_USD": "0.50"})
    first, second, third = (pair(w, job) for job in ("a", "b", "c"))
    # When the dispatcher moves the line
    actions = run_dispatcher(w)
    # Then two are sent, and nothing past the limit
    assert actions == {"submit-submitted": 2}
    assert sent(w) == [first.task_id, second.task_id]
    assert w.tasks.spent_on("2025-06-01") == Decimal("0.50")
    # and the first in line says why it waits, and the meter (whose alarm watches it) recorded it
    waiting = w.tasks.get(third.task_id)
    assert waiting is not None and waiting.status is S.QUEUED
    assert waiting.reason == (
        "first in line for WaveSpeed; today's spend limit of $0.50 is reached: nothing more is sent before 00:00 UTC"
    )
    assert w.meter.spend_limit_reached and set(w.meter.spend_limit_reached) == {"wavespeed"}
    assert send_next(w).waiting == "today's spend limit of $0.50 is reached"
    # and a pair that joins the line now is told so
    fourth = pair(w, "d")
    assert fourth.reason is not None
    assert fourth.reason.endswith(
        "2nd in line for WaveSpeed (3 renders at once, 5 submissions a minute); today's spend limit of $0.50 is"
        " reached: nothing more is sent before 00:00 UTC"
    )
    # When the videos are made and the poller keeps running through the day, nothing more is sent
    ready(w, first, "ws-1")
    ready(w, second, "ws-2")
    run_dispatcher(w)
    w.clock.now = datetime(2025, 6, 1, 23, 59, 59, tzinfo=UTC)
    run_poll(w)
    assert w.provider.submit_count == 2
    # When the next UTC day begins
    w.clock.now = datetime(2025, 6, 2, 0, 0, 30, tzinfo=UTC)
    actions = run_poll(w)
    # Then the line moves again, within the new day's limit
    assert actions["submit-submitted"] == 2
    assert sent(w)[2:] == [third.task_id, fourth.task_id]
    assert w.tasks.spent_on("2025-06-02") == Decimal("0.50")
    charged = w.tasks.get(third.task_id)
    assert charged is not None and charged.charged_on == "2025-06-02"


def test_a_task_turned_away_is_not_charged_again_when_it_is_sent() -> None:
    # Given a spend limit, and WaveSpeed turns the first submission away
    w = make_world(settings={"DAILY_SPEND_LIMIT_USD": "10"})
    task = pair(w, "a")
    w.provider.script_submit(ProviderTransientError("HTTP 429", code="429"), None)
    assert send_next(w).actions == {"submit-requeued": 1}
    assert w.tasks.spent_on("2025-06-01") == Decimal("0.25")
    # When it is sent after the pause
    w.clock.advance(60)
    assert send_next(w).actions == {"submit-submitted": 1}
    # Then its cost was counted once
    assert w.tasks.spent_on("2025-06-01") == Decimal("0.25")
    stored = w.tasks.get(task.task_id)
    assert stored is not None and stored.charged_on == "2025-06-01"


def test_a_task_that_fails_over_is_counted_at_the_other_providers_cost_too() -> None:
    # Given a spend limit, both providers, and WaveSpeed turns the first submission away
    wavespeed, comet = ScriptedProvider(), ScriptedProvider("cometapi", "query")
    w = make_world(
        provider=wavespeed,
        providers={"wavespeed": wavespeed, "cometapi": comet},
        settings={"DAILY_SPEND_LIMIT_USD": "10"},
    )
    task = pair(w, "a")
    wavespeed.script_submit(ProviderTransientError("HTTP 503", code="503"))
    assert send_next(w).actions == {"submit-requeued": 1}
    # When CometAPI's line sends it
    assert send_next(w, "cometapi").actions == {"submit-submitted": 1}
    # Then CometAPI's estimate is counted as well as WaveSpeed's: the limit may count too much, never too little
    assert w.tasks.spent_on("2025-06-01") == Decimal("0.25") + Decimal("0.30")
    stored = w.tasks.get(task.task_id)
    assert stored is not None and (stored.provider, stored.estimated_cost_usd) == ("cometapi", "0.30")


def test_a_pair_that_costs_more_than_the_daily_limit_is_rejected_when_it_is_cut() -> None:
    # Given a daily limit below the price of one video
    w = make_world(settings={"DAILY_SPEND_LIMIT_USD": "0.20"})
    # When a pair arrives
    handle_upload(w.ctx, upload("inbox/a/face.png"))
    outcome = handle_upload(w.ctx, upload("inbox/a/voice.mp3"))
    # Then it is REJECTED, saying why, and never joins the line
    assert outcome.action == "rejected"
    task = w.tasks.only_task()
    assert task.status is S.REJECTED
    assert task.reason == (
        "its estimated cost of $0.25 is more than the daily spend limit of $0.20, so it could never be sent"
    )
    assert w.tasks.line("wavespeed") == []
    run_dispatcher(w)
    assert w.provider.submit_count == 0
    assert w.tasks.spent_on("2025-06-01") == Decimal(0)


def test_a_task_in_line_that_costs_more_than_a_lowered_limit_fails_instead_of_passing_it_or_blocking_the_line() -> None:
    # Given a $0.50 pair (9 s of audio) and a $0.25 one in line while there was no limit
    w = make_world()
    w.media.put_object(BUCKET, "inbox/long/voice.mp3", sample_speech(9.0))
    costly, cheap = pair(w, "long"), pair(w, "short")
    assert (costly.estimated_cost_usd, cheap.estimated_cost_usd) == ("0.50", "0.25")
    # When the stack is redeployed with a daily limit of $0.30, and the line moves
    w.ctx.settings = make_settings(DAILY_SPEND_LIMIT_USD="0.30")
    report = send_next(w)
    # Then the pair that could never fit fails, saying why, and the line goes on within the limit
    assert report.actions == {"too-costly": 1, "submit-submitted": 1}
    failed = w.tasks.get(costly.task_id)
    assert failed is not None and failed.status is S.FAILED
    assert failed.reason == (
        "its estimated cost of $0.50 is more than the daily spend limit of $0.30, so it could never be sent"
    )
    assert sent(w) == [cheap.task_id]
    assert w.tasks.spent_on("2025-06-01") == Decimal("0.25")


def test_without_a_spend_limit_nothing_is_counted_against_one(w: World) -> None:
    task = pair(w, "a")
    assert send_next(w).actions == {"submit-submitted": 1}
    assert w.tasks.spent_on("2025-06-01") == Decimal(0)
    stored = w.tasks.get(task.task_id)
    assert stored is not None and stored.charged_on is None
    assert w.meter.spend_limit_reached == []


# ============================================================================================== robustness


@pytest.mark.usefixtures("busy_threads")
def test_two_dispatchers_at_once_never_admit_past_the_quota_nor_send_a_task_twice() -> None:
    for round_ in range(20):
        # Given six pairs in line and three render slots
        w = make_world()
        for number in range(6):
            pair(w, f"job{number}")
        # When two dispatchers move the line at the same moment (a stream batch and a wake-up)
        barrier = threading.Barrier(2)

        def move(w: World = w, barrier: threading.Barrier = barrier) -> DispatchReport:
            barrier.wait()
            return send_next(w)

        with ThreadPoolExecutor(max_workers=2) as pool:
            reports = [future.result(timeout=10) for future in [pool.submit(move), pool.submit(move)]]
        # Then three were sent in all, each once, and three hold the slots
        assert sum(report.actions["submit-submitted"] for report in reports) == 3, f"round {round_}"
        assert len(sent(w)) == len(set(sent(w))) == 3, f"round {round_}"
        assert len(w.tasks.holders("wavespeed")) == 3, f"round {round_}"
        assert len(w.tasks.line("wavespeed")) == 3, f"round {round_}"


def test_an_id_the_line_index_still_shows_after_its_admission_is_skipped(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a task already sent that the (eventually consistent) index still lists first, then the real head
    gone = pair(w, "a")
    assert send_next(w).actions == {"submit-submitted": 1}
    head = pair(w, "b")
    real_head = w.tasks.queue_head
    monkeypatch.setattr(w.tasks, "queue_head", lambda provider, limit: [gone.task_id, *real_head(provider, limit)])
    # When the line moves
    assert send_next(w).actions == {"submit-submitted": 1}
    # Then the sent task is not sent again; the real head is
    assert sent(w) == [gone.task_id, head.task_id]


def test_the_poller_gives_back_a_slot_whose_release_was_lost() -> None:
    # Given one render slot, held by a task whose video is ready, but the stream record that would free it is lost
    w = make_world(settings={"WAVESPEED_RENDERS_AT_ONCE": "1"})
    first, second = pair(w, "a"), pair(w, "b")
    run_dispatcher(w)
    ready(w, first, "ws-1")
    w.tasks.take_stream()
    assert w.tasks.holders("wavespeed") == {first.task_id}
    # When the poller runs
    actions = run_poll(w)
    # Then it reconciles the quota with the tasks, and the line moves
    assert actions["slot-reclaimed"] == 1
    assert actions["submit-submitted"] == 1
    assert w.tasks.holders("wavespeed") == {second.task_id}


def test_a_submission_whose_answer_was_lost_gives_its_slot_back_after_a_renders_longest_time() -> None:
    # Given WaveSpeed renders one at a time, and the answer to the first submission was lost
    w = make_world(settings={"WAVESPEED_RENDERS_AT_ONCE": "1"})
    lost, waiting = pair(w, "a"), pair(w, "b")
    w.provider.script_submit(ProviderOutcomeUnknownError("read timeout"), None)
    assert send_next(w).actions == {"submit-unknown": 1}
    # When the poller looks within a render's longest time, the slot stays taken (WaveSpeed may be rendering it)
    w.clock.advance(w.ctx.settings.max_render_seconds)
    assert "slot-reclaimed" not in run_poll(w)
    assert status(w, waiting) is S.QUEUED
    # When it looks after that time
    w.clock.advance(1)
    actions = run_poll(w)
    # Then the slot went back and the next pair was sent; the lost one is still waited for, never sent again
    assert actions["slot-reclaimed"] == 1 and actions["submit-submitted"] == 1
    assert sent(w) == [lost.task_id, waiting.task_id]
    assert status(w, lost) is S.SUBMITTING


def test_a_dispatcher_short_of_time_sends_nothing_and_hands_its_line_to_a_new_invocation_at_once(w: World) -> None:
    # Given a pair in line
    task = pair(w, "a")
    # When the dispatcher has less time left than a submission's worst case
    report = dispatch(w.ctx, "wavespeed", lambda: timedelta(seconds=199))
    # Then it sends nothing, and asks to be woken now rather than leave the line to the next poll
    assert report.actions == {}
    assert w.provider.submit_count == 0
    assert w.tasks.line("wavespeed") == [task.task_id]
    assert w.waker.calls == [("wavespeed", w.clock.now)]
    # When that wake-up arrives, the pair is sent
    assert wake_up(w).actions == {"submit-submitted": 1}


# ============================================================================================== quota.py

LIMITS = QuotaLimits(submissions_per_window=5, window=timedelta(minutes=1), renders_at_once=3)


def quota(**fields: object) -> ProviderQuota:
    return ProviderQuota(provider="wavespeed", version=7, **fields)  # type: ignore[arg-type]


def test_limits_describe_themselves_and_count_a_submission_a_little_longer_than_the_providers_window() -> None:
    assert LIMITS.describe() == "3 renders at once, 5 submissions a minute"
    assert QuotaLimits(2, timedelta(seconds=30), 1).describe() == "1 render at once, 2 submissions a 30 s"
    assert LIMITS.counted_window == timedelta(seconds=63)


def test_there_is_room_with_a_free_slot_and_room_in_the_window() -> None:
    recent = [T0 - timedelta(seconds=seconds) for seconds in (1, 2, 3, 4)]
    assert wait_before_admitting(quota(holders={"a": T0, "b": T0}, recent=recent), LIMITS, T0) is None
    # submissions older than the counted window no longer count
    old = [T0 - timedelta(seconds=64)] * 10
    assert wait_before_admitting(quota(recent=old), LIMITS, T0) is None


def test_full_render_slots_wait_for_a_finishing_render_not_a_moment() -> None:
    wait = wait_before_admitting(quota(holders={"a": T0, "b": T0, "c": T0}), LIMITS, T0)
    assert wait is not None
    assert (wait.reason, wait.until) == ("all 3 of WaveSpeed's render slots are in use", None)


def test_a_full_window_waits_until_its_oldest_counted_submission_leaves_it() -> None:
    recent = [T0 - timedelta(seconds=seconds) for seconds in (50, 40, 30, 20, 10, 70)]
    wait = wait_before_admitting(quota(recent=recent), LIMITS, T0)
    assert wait is not None
    assert wait.reason == "WaveSpeed takes 5 submissions per window"
    # the one 70 s ago no longer counts; the oldest that does was 50 s ago
    assert wait.until == T0 - timedelta(seconds=50) + timedelta(seconds=63)


def test_a_pause_comes_first_and_ends_when_it_ends() -> None:
    paused = quota(paused_until=T0 + timedelta(seconds=30), holders={"a": T0, "b": T0, "c": T0})
    wait = wait_before_admitting(paused, LIMITS, T0)
    assert wait is not None
    assert (wait.reason, wait.until) == ("WaveSpeed asked us to slow down (rate limited)", T0 + timedelta(seconds=30))
    assert wait_before_admitting(quota(paused_until=T0), LIMITS, T0) is None


def test_admitting_holds_a_slot_counts_a_submission_and_forgets_what_no_longer_counts() -> None:
    before = quota(
        holders={"a": T0},
        recent=[T0 - timedelta(seconds=seconds) for seconds in (100, 40, 30, 20, 10, 5)],
        paused_until=T0 - timedelta(seconds=1),
    )
    after = admitting(before, "new", LIMITS, T0)
    assert after.holders == {"a": T0, "new": T0}
    assert after.recent == [T0 - timedelta(seconds=seconds) for seconds in (30, 20, 10, 5, 0)]
    assert after.paused_until is None
    assert after.version == 8
    assert before.holders == {"a": T0} and before.version == 7  # a new record; the old one is untouched
    still_paused = admitting(quota(paused_until=T0 + timedelta(seconds=5)), "new", LIMITS, T0)
    assert still_paused.paused_until == T0 + timedelta(seconds=5)


def test_releasing_drops_the_holders_and_has_nothing_to_write_when_none_of_them_holds_one() -> None:
    held = quota(holders={"a": T0, "b": T0})
    released = releasing(held, {"a", "x"})
    assert released is not None
    assert (released.holders, released.version) == ({"b": T0}, 8)
    assert releasing(held, {"x", "y"}) is None


def test_pausing_gives_the_turned_away_tasks_slot_back_and_never_shortens_a_pause() -> None:
    held = quota(holders={"a": T0, "b": T0})
    paused = pausing(held, T0 + timedelta(seconds=60), releasing_task="a")
    assert (paused.holders, paused.paused_until, paused.version) == ({"b": T0}, T0 + timedelta(seconds=60), 8)
    longer = quota(paused_until=T0 + timedelta(seconds=90))
    assert pausing(longer, T0 + timedelta(seconds=60), releasing_task="a").paused_until == T0 + timedelta(seconds=90)
    shorter = quota(paused_until=T0 + timedelta(seconds=10))
    assert pausing(shorter, T0 + timedelta(seconds=60), releasing_task="a").paused_until == T0 + timedelta(seconds=60)


def test_waking_schedules_one_wake_up_per_moment() -> None:
    at = T0 + timedelta(seconds=63)
    scheduled = waking(quota(), at, T0)
    assert scheduled is not None and (scheduled.wake_at, scheduled.version) == (at, 8)
    # one at or before that moment is already coming: nothing to do
    assert waking(quota(wake_at=at), at, T0) is None
    assert waking(quota(wake_at=at - timedelta(seconds=5)), at, T0) is None
    # one coming later, or one whose moment has passed, does not do
    assert waking(quota(wake_at=at + timedelta(seconds=5)), at, T0) is not None
    assert waking(quota(wake_at=T0), at, T0) is not None


def test_the_budget_day_is_the_utc_date() -> None:
    assert budget_day(datetime(2025, 6, 1, 23, 59, 59, tzinfo=UTC)) == "2025-06-01"
    assert budget_day(datetime(2025, 6, 2, 0, 0, tzinfo=UTC)) == "2025-06-02"


ORDINALS = [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"), (13, "13th"), (21, "21st")]
ORDINALS += [(22, "22nd"), (101, "101st"), (111, "111th"), (112, "112th")]


@pytest.mark.parametrize(("number", "text"), ORDINALS)
def test_places_in_line_read_as_ordinals(number: int, text: str) -> None:
    assert ordinal(number) == text
