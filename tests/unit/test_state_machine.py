"""state_machine: which moves a task may make, and how every change produces a new version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from avatar_pipeline.domain.models import TERMINAL_STATUSES, Task, TaskStatus
from avatar_pipeline.domain.state_machine import (
    ALLOWED_SOURCES,
    InvalidTransitionError,
    UnknownTaskFieldError,
    can_transition,
    touch,
    transition,
)

S = TaskStatus
CREATED = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
LATER = CREATED + timedelta(minutes=5)

ALLOWED = sorted(
    ((source, target) for target, sources in ALLOWED_SOURCES.items() for source in sources),
    key=lambda pair: (pair[0].value, pair[1].value),
)
FORBIDDEN = [
    (source, target)
    for source in TaskStatus
    for target in TaskStatus
    if source not in ALLOWED_SOURCES.get(target, frozenset())
]


def make_task(status: TaskStatus, version: int = 3) -> Task:
    return Task(
        task_id="t-1",
        job="alice",
        status=status,
        version=version,
        provider="wavespeed",
        mode="std",
        created_at=CREATED,
        updated_at=CREATED,
    )


def name(pair: tuple[TaskStatus, TaskStatus]) -> str:
    return f"{pair[0]}->{pair[1]}"


@pytest.mark.parametrize(("source", "target"), ALLOWED, ids=[name(p) for p in ALLOWED])
def test_every_allowed_transition_moves_records_history_and_bumps_the_version(
    source: TaskStatus, target: TaskStatus
) -> None:
    # Given a task in `source`
    task = make_task(source)
    # When it moves to `target`
    moved = transition(task, target, why="because", now=LATER)
    # Then it is a new version in `target`, with the move recorded
    assert moved.status is target
    assert moved.version == task.version + 1
    assert moved.updated_at == LATER
    assert moved.reason == "because"
    assert len(moved.history) == 1
    entry = moved.history[0]
    assert (entry.from_status, entry.to_status, entry.reason, entry.at) == (source, target, "because", LATER)
    # and the original is untouched
    assert task.status is source
    assert task.version == 3
    assert task.history == []


def test_history_accumulates_in_order() -> None:
    task = make_task(S.WAITING_FOR_PAIR, version=0)
    path = (S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.PROCESSING, S.OUTPUT_READY)
    for step, target in enumerate(path, start=1):
        task = transition(task, target, why=f"step {step}", now=CREATED + timedelta(seconds=step))
    assert [(h.from_status, h.to_status) for h in task.history] == [
        (S.WAITING_FOR_PAIR, S.QUEUED),
        (S.QUEUED, S.SUBMITTING),
        (S.SUBMITTING, S.SUBMITTED),
        (S.SUBMITTED, S.PROCESSING),
        (S.PROCESSING, S.OUTPUT_READY),
    ]
    assert task.version == 5
    assert [h.reason for h in task.history] == ["step 1", "step 2", "step 3", "step 4", "step 5"]


def test_transition_applies_the_other_changes_with_the_move() -> None:
    moved = transition(make_task(S.SUBMITTING), S.SUBMITTED, why="ok", now=LATER, provider_task_id="ws-1")
    assert moved.provider_task_id == "ws-1"


def test_history_entries_serialise_with_from_and_to() -> None:
    moved = transition(make_task(S.SUBMITTING), S.SUBMITTED, why="ok", now=LATER)
    dumped = moved.model_dump(mode="json", by_alias=True)["history"][0]
    assert dumped["from"] == "SUBMITTING"
    assert dumped["to"] == "SUBMITTED"
    assert Task.model_validate(moved.model_dump(mode="json", by_alias=True)) == moved


@pytest.mark.parametrize(("source", "target"), FORBIDDEN, ids=[name(p) for p in FORBIDDEN])
def test_every_pair_not_allowed_is_refused(source: TaskStatus, target: TaskStatus) -> None:
    task = make_task(source)
    assert not can_transition(source, target)
    with pytest.raises(InvalidTransitionError) as raised:
        transition(task, target, why="nope", now=LATER)
    assert (raised.value.current, raised.value.target) == (source, target)
    assert str(source) in str(raised.value)
    assert str(target) in str(raised.value)


def test_the_tables_cover_every_pair() -> None:
    assert len(ALLOWED) + len(FORBIDDEN) == len(TaskStatus) ** 2


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES - {S.TIMED_OUT}))
def test_terminal_states_can_never_be_left(terminal: TaskStatus) -> None:
    assert terminal.is_terminal
    for target in TaskStatus:
        assert not can_transition(terminal, target), f"{terminal} -> {target} must be impossible"
        with pytest.raises(InvalidTransitionError):
            transition(make_task(terminal), target, why="late news", now=LATER)


def test_a_late_video_is_the_only_way_out_of_timed_out() -> None:
    # A paid video the provider delivers after the time-out is kept: TIMED_OUT reopens to OUTPUT_READY, and to
    # nothing else.
    assert S.TIMED_OUT.is_terminal
    assert {target for target in TaskStatus if can_transition(S.TIMED_OUT, target)} == {S.OUTPUT_READY}
    reopened = transition(make_task(S.TIMED_OUT), S.OUTPUT_READY, why="late video", now=LATER)
    assert reopened.status is S.OUTPUT_READY


def test_a_checked_pair_joins_its_line_before_anything_is_sent() -> None:
    # Only admission by quota sends a task: SUBMITTING is reached from QUEUED alone.
    assert ALLOWED_SOURCES[S.SUBMITTING] == frozenset({S.QUEUED})
    assert not can_transition(S.WAITING_FOR_PAIR, S.SUBMITTING)


def test_a_queued_task_is_sent_or_fails_but_never_times_out() -> None:
    # Waiting one's turn is not taking too long.
    # (QUEUED to QUEUED: it spilled over to the other provider's line.)
    assert {target for target in TaskStatus if can_transition(S.QUEUED, target)} == {S.SUBMITTING, S.FAILED, S.QUEUED}
    assert not can_transition(S.QUEUED, S.TIMED_OUT)


def test_a_submission_turned_away_goes_back_in_line() -> None:
    assert ALLOWED_SOURCES[S.QUEUED] == frozenset({S.WAITING_FOR_PAIR, S.SUBMITTING, S.QUEUED})
    assert not can_transition(S.SUBMITTING, S.SUBMITTING)


@pytest.mark.parametrize("status", [S.OUTPUT_READY, S.FINALIZING])
def test_once_the_video_exists_the_clock_can_no_longer_end_the_task(status: TaskStatus) -> None:
    assert not can_transition(status, S.TIMED_OUT)
    assert can_transition(status, S.FAILED)


def test_nothing_leads_back_to_waiting_for_pair() -> None:
    assert S.WAITING_FOR_PAIR not in ALLOWED_SOURCES
    assert not any(can_transition(source, S.WAITING_FOR_PAIR) for source in TaskStatus)


def test_only_completed_tasks_come_out_of_finalizing_successfully() -> None:
    assert ALLOWED_SOURCES[S.COMPLETED] == frozenset({S.FINALIZING})


def test_touch_bumps_the_version_without_history() -> None:
    task = transition(make_task(S.SUBMITTING), S.SUBMITTED, why="accepted", now=CREATED)
    touched = touch(task, now=LATER, next_check_at=LATER + timedelta(minutes=2))
    assert touched.status is task.status
    assert touched.version == task.version + 1
    assert touched.updated_at == LATER
    assert touched.next_check_at == LATER + timedelta(minutes=2)
    assert touched.history == task.history
    assert touched.reason == "accepted"


def test_status_since_is_when_the_task_entered_its_current_status() -> None:
    # Each stage's clock counts from here, not from when the task was created.
    task = make_task(S.WAITING_FOR_PAIR, version=0)
    assert task.status_since == CREATED  # no history: since it was created
    task = transition(task, S.QUEUED, why="paired", now=CREATED + timedelta(minutes=1))
    task = transition(task, S.SUBMITTING, why="admitted", now=CREATED + timedelta(hours=3))
    task = transition(task, S.SUBMITTED, why="accepted", now=CREATED + timedelta(hours=3, seconds=2))
    task = touch(task, now=CREATED + timedelta(hours=4), next_check_at=CREATED + timedelta(hours=5))
    assert task.status_since == CREATED + timedelta(hours=3, seconds=2)


def test_only_tasks_at_the_provider_hold_a_render_slot_and_a_queued_one_is_not_the_pollers() -> None:
    holding = {status for status in TaskStatus if make_task(status).holds_render_slot}
    assert holding == {S.SUBMITTING, S.SUBMITTED, S.PROCESSING}
    queued = make_task(S.QUEUED)
    assert not queued.needs_attention  # the provider's line holds it, not the poller's index
    assert make_task(S.SUBMITTED).needs_attention


def test_touch_works_in_terminal_states_too() -> None:
    # Announcing a finished task writes to it without moving it.
    touched = touch(make_task(S.COMPLETED), now=LATER, notified_at=LATER)
    assert touched.status is S.COMPLETED
    assert touched.notified_at == LATER
    assert touched.version == 4


def test_a_change_to_a_field_the_task_does_not_have_is_refused() -> None:
    # Given a task, when a write misspells a field (lease_untill), then nothing is made of it: it raises, naming it
    task = make_task(S.FINALIZING)
    with pytest.raises(UnknownTaskFieldError, match="lease_untill"):
        touch(task, now=LATER, lease_untill=LATER)
    with pytest.raises(UnknownTaskFieldError, match="copy_retry"):
        transition(task, S.COMPLETED, why="stored", now=LATER, copy_retry=LATER)


@pytest.mark.parametrize(
    "change",
    [{"submit_attempts": "x"}, {"lease_until": "soon"}, {"status": "DONE"}, {"estimated_cost_usd": 1.5}],
    ids=["count-as-text", "time-as-text", "unknown-status", "cost-as-float"],
)
def test_a_change_of_the_wrong_type_is_refused(change: dict[str, object]) -> None:
    # Given a task, when a write gives a field a value of the wrong type, then it raises before anything is written
    with pytest.raises(ValidationError):
        touch(make_task(S.SUBMITTED), now=LATER, **change)  # type: ignore[arg-type]


def test_a_valid_change_keeps_the_records_nested_in_the_task() -> None:
    # Given a task with history, when it is touched, then its history entries are the very same records
    task = transition(make_task(S.SUBMITTING), S.SUBMITTED, why="accepted", now=CREATED)
    touched = touch(task, now=LATER, submit_attempts=2)
    assert touched.submit_attempts == 2
    assert all(after is before for after, before in zip(touched.history, task.history, strict=True))
