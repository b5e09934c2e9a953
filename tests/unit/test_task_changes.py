"""task_changes: the named changes of a task record, each keeping its rule, none taking free-form fields."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from avatar_pipeline.domain.models import S3Object, Task, TaskStatus
from avatar_pipeline.domain.state_machine import InvalidTransitionError
from avatar_pipeline.domain.task_changes import (
    ChangeRefusedError,
    back_in_line,
    claim_copy,
    claim_notification,
    claim_submission,
    complete,
    end,
    explain,
    give_back_copy,
    hand_back_copy,
    holds_copy,
    join_line,
    mark_answer_lost,
    mark_notified,
    move_to_line,
    notification_claimable,
    record_news,
    renew_copy_lease,
    schedule_check,
    schedule_copy_retry,
    stop_watching,
    video_ready,
)

S = TaskStatus
T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
SOON = T0 + timedelta(minutes=1)
LATER = T0 + timedelta(minutes=5)
SERVICES = Path(__file__).resolve().parents[2] / "layers" / "shared" / "avatar_pipeline" / "services"
VIDEO = S3Object(bucket="media", key="outputs/alice/t-1.mp4", etag="e", size=10)


def make_task(status: TaskStatus, **fields: object) -> Task:
    base: dict[str, object] = {
        "task_id": "t-1",
        "job": "alice",
        "status": status,
        "version": 3,
        "provider": "wavespeed",
        "model": "kling-v1-std",
        "created_at": T0,
        "updated_at": T0,
    }
    return Task.model_validate(base | fields)


def copying(attempt: int = 2, lease_until: datetime = SOON) -> Task:
    return make_task(S.FINALIZING, finalize_attempts=attempt, lease_until=lease_until, provider_output_url="https://v")


# In line and at the provider


def test_given_a_checked_pair_when_it_joins_the_line_then_its_place_is_now_and_its_cost_is_text() -> None:
    joined = join_line(
        make_task(S.WAITING_FOR_PAIR),
        why="paired",
        now=LATER,
        audio_ms=1500,
        failover_targets=("cometapi",),
        estimated_cost_usd=Decimal("0.30"),
    )
    assert (joined.status, joined.queued_at, joined.audio_ms) == (S.QUEUED, LATER, 1500)
    assert (joined.failover_targets, joined.estimated_cost_usd) == (("cometapi",), "0.30")
    assert [(h.from_status, h.to_status, h.reason) for h in joined.history] == [
        (S.WAITING_FOR_PAIR, S.QUEUED, "paired")
    ]


def test_given_a_queued_task_when_admitted_then_it_is_leased_counted_and_due_when_the_lease_ends() -> None:
    claimed = claim_submission(
        make_task(S.QUEUED, submit_attempts=2), why="room", now=T0, lease_until=LATER, charged_on="2025-06-01"
    )
    assert (claimed.status, claimed.lease_until, claimed.next_check_at) == (S.SUBMITTING, LATER, LATER)
    assert (claimed.submit_attempts, claimed.charged_on) == (3, "2025-06-01")


def test_given_a_cost_counted_at_an_earlier_admission_when_admitted_again_then_that_day_stays() -> None:
    task = make_task(S.QUEUED, charged_on="2025-05-31")
    claimed = claim_submission(task, why="room", now=T0, lease_until=LATER, charged_on=None)
    assert claimed.charged_on == "2025-05-31"
    # and counting it a second time is refused
    with pytest.raises(ChangeRefusedError, match="counted on 2025-05-31"):
        claim_submission(task, why="room", now=T0, lease_until=LATER, charged_on="2025-06-01")


def test_given_a_turned_away_submission_when_back_in_line_then_no_lease_and_not_the_pollers() -> None:
    task = make_task(S.SUBMITTING, lease_until=LATER, next_check_at=LATER, queued_at=T0)
    queued = back_in_line(task, why="429", now=SOON)
    assert (queued.status, queued.lease_until, queued.next_check_at, queued.queued_at) == (S.QUEUED, None, None, T0)


def test_given_a_task_when_moved_to_the_other_line_then_it_remembers_where_from_and_its_cost_is_not_counted() -> None:
    task = make_task(
        S.SUBMITTING,
        lease_until=LATER,
        charged_on="2025-06-01",
        estimated_cost_usd="0.30",
        failover_targets=("cometapi",),
    )
    moved = move_to_line(task, "cometapi", why="failover", now=SOON, estimated_cost_usd=Decimal("0.45"))
    assert (moved.status, moved.provider, moved.failed_over_from) == (S.QUEUED, "cometapi", "wavespeed")
    assert (moved.estimated_cost_usd, moved.charged_on, moved.lease_until) == ("0.45", None, None)
    # Then it never moves back
    with pytest.raises(ChangeRefusedError, match="may move only to no provider"):
        move_to_line(moved, "wavespeed", why="again", now=LATER, estimated_cost_usd=Decimal("0.30"))


def test_given_a_task_with_several_targets_when_moved_then_only_forward_along_them() -> None:
    # Given a task at WaveSpeed whose job listed fal, then CometAPI
    task = make_task(S.SUBMITTING, failover_targets=("fal", "cometapi"))
    assert task.targets_ahead == ("fal", "cometapi")
    # When it moves to fal, then only CometAPI is ahead
    at_fal = move_to_line(task, "fal", why="failover", now=SOON, estimated_cost_usd=Decimal("0.45"))
    assert at_fal.targets_ahead == ("cometapi",)
    with pytest.raises(ChangeRefusedError, match="may move only to cometapi"):
        move_to_line(at_fal, "wavespeed", why="back", now=LATER, estimated_cost_usd=Decimal("0.30"))
    # And a task may not skip back over one it left: at CometAPI, nothing is ahead
    at_comet = move_to_line(at_fal, "cometapi", why="failover", now=LATER, estimated_cost_usd=Decimal("0.60"))
    assert (at_comet.provider, at_comet.failed_over_from, at_comet.targets_ahead) == ("cometapi", "fal", ())


def test_given_a_task_when_moved_to_its_own_provider_then_it_is_refused() -> None:
    with pytest.raises(ChangeRefusedError):
        move_to_line(make_task(S.QUEUED), "wavespeed", why="spill", now=SOON, estimated_cost_usd=Decimal(1))


def test_given_a_waiting_task_when_explained_then_only_its_reason_changes() -> None:
    task = make_task(S.QUEUED, queued_at=T0)
    explained = explain(task, why="spend limit reached", now=SOON)
    assert (explained.status, explained.reason, explained.history, explained.version) == (
        S.QUEUED,
        "spend limit reached",
        [],
        task.version + 1,
    )


def test_given_a_submission_whose_answer_was_lost_then_it_stays_submitting_without_a_lease() -> None:
    lost = mark_answer_lost(make_task(S.SUBMITTING, lease_until=LATER), why="no answer", now=SOON, check_at=LATER)
    assert (lost.status, lost.lease_until, lost.next_check_at, lost.reason) == (S.SUBMITTING, None, LATER, "no answer")
    with pytest.raises(ChangeRefusedError, match="not being submitted"):
        mark_answer_lost(make_task(S.QUEUED), why="no answer", now=SOON, check_at=LATER)


def test_given_provider_news_then_its_id_and_time_are_recorded_and_the_lease_ends() -> None:
    task = make_task(S.SUBMITTING, lease_until=LATER)
    news = record_news(task, S.PROCESSING, why="rendering", now=SOON, provider_task_id="ws-1", check_at=LATER)
    assert (news.status, news.provider_task_id, news.last_news_at) == (S.PROCESSING, "ws-1", SOON)
    assert (news.lease_until, news.next_check_at) == (None, LATER)


def test_given_news_that_ends_the_task_then_it_is_due_at_once_to_be_announced() -> None:
    failed = record_news(
        make_task(S.PROCESSING), S.FAILED, why="1003", now=SOON, provider_task_id="ws-1", check_at=LATER
    )
    assert (failed.status, failed.next_check_at) == (S.FAILED, SOON)


def test_given_news_of_a_finished_video_without_its_link_then_it_is_refused() -> None:
    with pytest.raises(ChangeRefusedError, match="video_ready"):
        record_news(make_task(S.PROCESSING), S.OUTPUT_READY, why="done", now=SOON, provider_task_id="w", check_at=LATER)


def test_given_a_finished_video_then_its_link_and_expiry_are_recorded() -> None:
    ready = video_ready(
        make_task(S.PROCESSING, provider_task_id="ws-1"),
        why="done",
        now=SOON,
        provider_task_id="ws-1",
        output_url="https://v",
        output_expires_at=LATER,
        check_at=LATER,
    )
    assert (ready.status, ready.provider_output_url, ready.output_expires_at) == (S.OUTPUT_READY, "https://v", LATER)
    assert (ready.last_news_at, ready.lease_until, ready.next_check_at, ready.corrects) == (SOON, None, LATER, None)


@pytest.mark.parametrize(
    ("announced", "corrects"),
    [({"notified_at": T0}, S.TIMED_OUT), ({"notify_lease_until": SOON}, S.TIMED_OUT), ({}, None)],
    ids=["announced", "being-announced", "not-announced"],
)
def test_given_a_late_video_for_a_timed_out_task_then_it_reopens_and_corrects_an_announced_time_out(
    announced: dict[str, object], corrects: TaskStatus | None
) -> None:
    task = make_task(S.TIMED_OUT, watch_until=LATER, **announced)
    ready = video_ready(
        task,
        why="late",
        now=SOON,
        provider_task_id="ws-1",
        output_url="https://v",
        output_expires_at=LATER,
        check_at=LATER,
    )
    assert (ready.status, ready.corrects, ready.watch_until) == (S.OUTPUT_READY, corrects, None)
    assert (ready.notified_at, ready.notify_lease_until) == (None, None)


def test_given_a_task_when_a_check_is_scheduled_then_only_the_check_time_and_version_change() -> None:
    task = make_task(S.SUBMITTED, lease_until=SOON)
    later = schedule_check(task, at=LATER, now=SOON)
    assert later.model_dump(exclude={"next_check_at", "version", "updated_at"}) == task.model_dump(
        exclude={"next_check_at", "version", "updated_at"}
    )
    assert (later.next_check_at, later.version) == (LATER, task.version + 1)


# The end


def test_given_a_task_when_it_ends_then_the_reason_and_history_are_recorded_no_lease_and_due_now() -> None:
    ended = end(make_task(S.FINALIZING, lease_until=LATER), S.FAILED, why="gone", now=SOON)
    assert (ended.status, ended.reason, ended.lease_until, ended.next_check_at) == (S.FAILED, "gone", None, SOON)
    assert [(h.from_status, h.to_status, h.reason, h.at) for h in ended.history] == [
        (S.FINALIZING, S.FAILED, "gone", SOON)
    ]


def test_given_a_task_at_the_provider_when_it_times_out_then_it_is_watched_for_a_late_video() -> None:
    ended = end(make_task(S.PROCESSING), S.TIMED_OUT, why="slow", now=SOON, watch_until=LATER)
    assert (ended.status, ended.watch_until) == (S.TIMED_OUT, LATER)


def test_given_a_status_that_is_not_an_end_then_ending_with_it_is_refused() -> None:
    with pytest.raises(ChangeRefusedError, match="not an end"):
        end(make_task(S.SUBMITTED), S.PROCESSING, why="no", now=SOON)


def test_given_an_ended_task_when_ending_it_again_then_the_state_machine_refuses() -> None:
    with pytest.raises(InvalidTransitionError):
        end(make_task(S.COMPLETED), S.FAILED, why="late", now=SOON)


def test_given_a_watched_task_when_the_watch_stops_then_nothing_is_due() -> None:
    stopped = stop_watching(make_task(S.TIMED_OUT, watch_until=LATER, next_check_at=SOON), now=SOON)
    assert (stopped.watch_until, stopped.next_check_at, stopped.status) == (None, None, S.TIMED_OUT)
    with pytest.raises(ChangeRefusedError, match="only an ended task"):
        stop_watching(make_task(S.PROCESSING), now=SOON)


# The copy


def test_given_a_ready_video_when_a_copy_is_claimed_then_it_is_the_next_attempt_under_a_lease() -> None:
    ready = make_task(S.OUTPUT_READY, finalize_attempts=1, copy_retry_at=T0)
    claimed = claim_copy(ready, now=T0, lease_until=SOON, check_at=LATER)
    assert (claimed.status, claimed.finalize_attempts, claimed.reason) == (
        S.FINALIZING,
        2,
        "copying the video (attempt 2)",
    )
    assert (claimed.lease_until, claimed.next_check_at, claimed.copy_retry_at) == (SOON, LATER, None)
    assert holds_copy(claimed, 2)
    assert not holds_copy(claimed, 1)


def test_given_a_copy_whose_lease_ran_out_when_claimed_then_the_new_attempt_takes_it_over() -> None:
    taken = claim_copy(copying(attempt=2, lease_until=SOON), now=SOON, lease_until=LATER, check_at=LATER)
    assert (taken.finalize_attempts, taken.lease_until) == (3, LATER)


def test_given_a_copy_still_leased_when_another_attempt_claims_it_then_it_is_refused() -> None:
    with pytest.raises(ChangeRefusedError, match="still holds"):
        claim_copy(copying(attempt=2, lease_until=LATER), now=SOON, lease_until=LATER, check_at=LATER)


def test_given_the_attempt_holding_the_copy_when_it_renews_then_its_lease_is_extended() -> None:
    renewed = renew_copy_lease(copying(attempt=2), attempt=2, until=LATER, check_at=LATER, now=SOON)
    assert (renewed.lease_until, renewed.next_check_at, renewed.finalize_attempts) == (LATER, LATER, 2)


@pytest.mark.parametrize("attempt", [1, 3], ids=["an-earlier-attempt", "a-later-attempt"])
def test_given_an_attempt_that_does_not_hold_the_copy_when_it_renews_then_it_is_refused(attempt: int) -> None:
    with pytest.raises(ChangeRefusedError, match=f"copy attempt {attempt} does not hold"):
        renew_copy_lease(copying(attempt=2), attempt=attempt, until=LATER, check_at=LATER, now=SOON)


def test_given_a_copy_that_ended_when_its_attempt_renews_then_it_is_refused() -> None:
    with pytest.raises(ChangeRefusedError):
        renew_copy_lease(make_task(S.COMPLETED, finalize_attempts=2), attempt=2, until=LATER, check_at=LATER, now=SOON)


def test_given_a_copy_that_broke_off_when_given_back_then_the_lease_ends_now_and_a_retry_is_set() -> None:
    back = give_back_copy(copying(attempt=2, lease_until=LATER), attempt=2, retry_at=LATER, why="reset", now=SOON)
    assert (back.status, back.lease_until, back.copy_retry_at, back.next_check_at) == (S.FINALIZING, SOON, LATER, LATER)
    assert back.reason == "reset"
    with pytest.raises(ChangeRefusedError):
        give_back_copy(copying(attempt=3), attempt=2, retry_at=LATER, why="reset", now=SOON)


def test_given_a_copy_that_stopped_without_a_word_then_a_retry_is_scheduled_but_never_over_a_running_lease() -> None:
    silent = schedule_copy_retry(copying(lease_until=T0), retry_at=LATER, why="silent", now=SOON)
    assert (silent.lease_until, silent.copy_retry_at, silent.next_check_at, silent.reason) == (
        T0,
        LATER,
        LATER,
        "silent",
    )
    with pytest.raises(ChangeRefusedError):
        schedule_copy_retry(copying(lease_until=LATER), retry_at=LATER, why="silent", now=SOON)


def test_given_a_copy_that_did_not_finish_when_handed_back_then_it_is_ready_again_but_never_over_a_running_lease() -> (
    None
):
    back = hand_back_copy(copying(lease_until=T0), why="did not finish", now=SOON, check_at=LATER)
    assert (back.status, back.next_check_at, back.history[-1].reason) == (S.OUTPUT_READY, LATER, "did not finish")
    with pytest.raises(ChangeRefusedError):
        hand_back_copy(copying(lease_until=LATER), why="did not finish", now=SOON, check_at=LATER)


def test_given_the_attempt_holding_the_copy_when_it_completes_then_the_video_is_recorded_and_the_lease_ends() -> None:
    done = complete(copying(attempt=2), attempt=2, output=VIDEO, now=SOON, check_at=LATER)
    assert (done.status, done.output, done.lease_until, done.next_check_at) == (S.COMPLETED, VIDEO, None, LATER)
    assert done.reason == f"video stored at {VIDEO.uri}"
    with pytest.raises(ChangeRefusedError):
        complete(copying(attempt=3), attempt=2, output=VIDEO, now=SOON, check_at=LATER)


# The notification


def test_given_an_ended_task_when_a_notifier_claims_it_then_it_holds_a_lease_and_others_cannot_claim() -> None:
    ended = make_task(S.COMPLETED)
    claimed = claim_notification(ended, now=T0, until=SOON)
    assert (claimed.notify_lease_until, claimed.next_check_at) == (SOON, SOON)
    assert not notification_claimable(claimed, T0)
    with pytest.raises(ChangeRefusedError):
        claim_notification(claimed, now=T0, until=LATER)
    # Then, once the lease ran out (the notifier died), it can be claimed again
    assert notification_claimable(claimed, SOON)


@pytest.mark.parametrize(
    "task",
    [make_task(S.PROCESSING), make_task(S.FAILED, notified_at=T0)],
    ids=["not-ended", "already-announced"],
)
def test_given_a_task_not_to_be_announced_when_a_notifier_claims_it_then_it_is_refused(task: Task) -> None:
    assert not notification_claimable(task, T0)
    with pytest.raises(ChangeRefusedError):
        claim_notification(task, now=T0, until=SOON)


def test_given_a_published_notification_when_marked_then_it_is_announced_once() -> None:
    notified = mark_notified(make_task(S.COMPLETED, notify_lease_until=SOON, next_check_at=SOON), now=T0)
    assert (notified.notified_at, notified.notify_lease_until, notified.next_check_at) == (T0, None, None)
    with pytest.raises(ChangeRefusedError, match="already"):
        mark_notified(notified, now=SOON)


# Validation and the services


def test_given_a_value_of_the_wrong_type_then_the_change_is_refused() -> None:
    # Given a copy, when its lease is renewed with something that is not a time, then pydantic refuses it
    with pytest.raises(ValidationError):
        renew_copy_lease(copying(attempt=2), attempt=2, until="soon", check_at=LATER, now=SOON)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        join_line(
            make_task(S.WAITING_FOR_PAIR),
            why="paired",
            now=SOON,
            audio_ms="long",  # type: ignore[arg-type]
            failover_targets=(),
            estimated_cost_usd=Decimal("0.30"),
        )


def test_every_change_leaves_the_original_untouched() -> None:
    task = copying(attempt=2)
    before = task.model_dump()
    complete(task, attempt=2, output=VIDEO, now=SOON, check_at=LATER)
    assert task.model_dump() == before


def test_no_service_changes_a_task_with_free_form_fields() -> None:
    # Given the services, then none calls touch, transition or model_copy (by name or as an attribute), nor imports
    # the state machine's building blocks: every change is one of the named ones
    free_form = {"touch", "transition", "model_copy"}
    for module in sorted(SERVICES.glob("*.py")):
        tree = ast.parse(module.read_text())
        calls = [node.func for node in ast.walk(tree) if isinstance(node, ast.Call)]
        called = {f.id for f in calls if isinstance(f, ast.Name)} | {
            f.attr for f in calls if isinstance(f, ast.Attribute)
        }
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
        assert not (free_form & (called | imported)), module.name


def test_transition_stays_the_one_check_of_status_moves() -> None:
    # A named change to a status the state machine does not allow from here is refused by it
    with pytest.raises(InvalidTransitionError):
        back_in_line(make_task(S.PROCESSING), why="no", now=SOON)


@pytest.mark.parametrize(("allowed", "targets"), [(True, ("cometapi",)), (False, ())])
def test_a_record_stored_with_failover_allowed_reads_as_its_failover_target(
    allowed: bool, targets: tuple[str, ...]
) -> None:
    # Given a task record stored before failover_targets, when only a yes/no was kept (and two providers existed)
    stored = make_task(S.QUEUED).model_dump(mode="json") | {"failover_allowed": allowed}
    del stored["failover_targets"]
    # When it is read, then its target is the other provider (the pair was checked against it), or none
    assert Task.model_validate(stored).failover_targets == targets


def test_a_record_stored_with_failover_allowed_after_it_moved_has_no_target_left() -> None:
    # Given a task record from before failover_targets that had already failed over (a task moved once, then)
    stored = make_task(S.QUEUED, provider="cometapi", failed_over_from="wavespeed").model_dump(mode="json")
    stored |= {"failover_allowed": True}
    del stored["failover_targets"]
    # When it is read, then it may not move again: not back to WaveSpeed, nor anywhere
    read = Task.model_validate(stored)
    assert (read.failover_targets, read.targets_ahead) == ((), ())
    with pytest.raises(ChangeRefusedError):
        move_to_line(read, "wavespeed", why="back", now=SOON, estimated_cost_usd=Decimal("0.25"))


def test_a_record_stored_with_a_mode_keeps_only_the_targets_offering_its_model() -> None:
    # Given a WaveSpeed std task stored when fal offered a "std" too (its Kling v2), with both as targets
    stored = make_task(S.QUEUED, failover_targets=("cometapi", "fal")).model_dump(mode="json") | {"mode": "std"}
    del stored["model"], stored["options"]
    # When it is read as Kling v1 standard, then fal.ai (which runs no Kling v1) is no longer a target
    assert Task.model_validate(stored).failover_targets == ("cometapi",)


@pytest.mark.parametrize(
    ("provider", "mode", "model"),
    [("wavespeed", "std", "kling-v1-std"), ("cometapi", "pro", "kling-v1-pro"), ("fal", "pro", "kling-v2-pro")],
)
def test_a_record_stored_with_a_mode_reads_as_its_providers_kling_model_of_that_tier(
    provider: str, mode: str, model: str
) -> None:
    # Given a task record stored before models had names, when a task named its Kling tier
    stored = make_task(S.QUEUED, provider=provider).model_dump(mode="json") | {"mode": mode}
    del stored["model"], stored["options"]
    # When it is read, then its model is the Kling avatar model its provider ran for that tier
    read = Task.model_validate(stored)
    assert (read.model, read.options) == (model, {})
