"""How an ended task is counted: its stage and times (the domain), and the EMF lines that carry them (the adapter)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from avatar_pipeline.adapters.metrics import EmfUsageMeter
from avatar_pipeline.domain.models import Task, TaskOutcome
from avatar_pipeline.domain.models import TaskStatus as S
from avatar_pipeline.domain.state_machine import begin, transition

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def walk(*statuses: S, step: float = 10.0) -> Task:
    """A task created at T0 that went through `statuses`, one every `step` seconds."""
    task = begin(
        "t-1", "job", since=T0, arrived="inbox/job/face.png", now=T0, provider="cometapi", model="kling-v1-std"
    )
    for number, status in enumerate(statuses, start=1):
        task = transition(task, status, why=f"to {status}", now=T0 + timedelta(seconds=step * number))
    return task


@pytest.mark.parametrize(
    ("path", "stage"),
    [
        ((S.TIMED_OUT,), "pairing"),
        ((S.REJECTED,), "input"),
        ((S.QUEUED, S.FAILED), "submission"),
        ((S.QUEUED, S.SUBMITTING, S.FAILED), "submission"),
        ((S.QUEUED, S.SUBMITTING, S.TIMED_OUT), "submission"),
        ((S.QUEUED, S.SUBMITTING, S.QUEUED, S.SUBMITTING, S.FAILED), "submission"),
        ((S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.PROCESSING, S.FAILED), "provider"),
        ((S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.TIMED_OUT), "provider"),
        ((S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.OUTPUT_READY, S.FINALIZING, S.FAILED), "copy"),
        ((S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.OUTPUT_READY, S.FINALIZING, S.COMPLETED), "done"),
        # A late video: timed out at the provider, then delivered, copied and completed after all.
        ((S.QUEUED, S.SUBMITTING, S.PROCESSING, S.TIMED_OUT, S.OUTPUT_READY, S.FINALIZING, S.COMPLETED), "done"),
    ],
)
def test_an_ended_task_is_counted_under_the_stage_it_ended_in(path: tuple[S, ...], stage: str) -> None:
    assert TaskOutcome.of(walk(*path)).stage == stage


def test_times_run_from_the_first_upload_and_from_the_submission_to_the_finished_video() -> None:
    # Given a task in line at +10 s, submitted at +20 s, whose video was ready at +40 s and stored at +60 s
    task = walk(S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.OUTPUT_READY, S.FINALIZING, S.COMPLETED)
    # Then its outcome says 60 s end to end (its wait in line included), 20 s at the provider
    outcome = TaskOutcome.of(task)
    assert (outcome.end_to_end_seconds, outcome.provider_seconds) == (60.0, 20.0)


def test_provider_time_counts_from_the_first_admission_when_the_provider_turned_the_first_away() -> None:
    # Given a task sent at +20 s, turned away (back in line at +30 s), sent again at +40 s, ready at +60 s
    task = walk(S.QUEUED, S.SUBMITTING, S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.OUTPUT_READY, S.FINALIZING, S.COMPLETED)
    # Then the provider time runs from the first submission
    assert TaskOutcome.of(task).provider_seconds == 40.0


def test_a_task_that_waited_in_line_and_never_reached_the_provider_has_no_provider_time() -> None:
    assert TaskOutcome.of(walk(S.QUEUED, S.FAILED)).provider_seconds is None


def test_a_task_that_never_reached_the_provider_has_no_provider_time() -> None:
    assert TaskOutcome.of(walk(S.REJECTED)).provider_seconds is None


def test_a_task_still_running_has_no_outcome() -> None:
    with pytest.raises(ValueError, match="has not ended"):
        TaskOutcome.of(walk(S.QUEUED))


def emf_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{") and "_aws" in line]


def test_the_meter_writes_a_plain_count_a_count_by_stage_and_the_times(capsys: pytest.CaptureFixture[str]) -> None:
    # Given a completed task
    outcome = TaskOutcome.of(walk(S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.OUTPUT_READY, S.FINALIZING, S.COMPLETED))
    # When the meter records it
    EmfUsageMeter().record_outcome(outcome)
    # Then there is one EMF line per metric, with the dimensions alarms and dashboards use
    lines = emf_lines(capsys.readouterr().out)
    seen = {
        (name["Name"], frozenset(line["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0])): line[name["Name"]]
        for line in lines
        for name in line["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    }
    service = frozenset({"service"})
    assert seen[("TaskCompleted", service)] == [1.0]
    assert seen[("TaskCompleted", service | {"stage"})] == [1.0]
    assert seen[("EndToEndSeconds", service)] == [60.0]
    assert seen[("ProviderSeconds", service | {"provider"})] == [20.0]
    assert len(lines) == 4


def test_the_meter_counts_a_line_stopped_by_the_spend_limit_plainly_and_by_provider(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # When the dispatcher reports that the spend limit stopped WaveSpeed's line
    EmfUsageMeter().record_spend_limit_reached("wavespeed")
    # Then there is a plain count (the alarm's) and one by provider
    lines = emf_lines(capsys.readouterr().out)
    seen = {
        (name["Name"], frozenset(line["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0])): line
        for line in lines
        for name in line["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    }
    service = frozenset({"service"})
    assert seen[("AdmissionBlockedBySpendLimit", service)]["AdmissionBlockedBySpendLimit"] == [1.0]
    by_provider = seen[("AdmissionBlockedBySpendLimit", service | {"provider"})]
    assert by_provider["AdmissionBlockedBySpendLimit"] == [1.0]
    assert by_provider["provider"] == "wavespeed"
    assert len(lines) == 2
