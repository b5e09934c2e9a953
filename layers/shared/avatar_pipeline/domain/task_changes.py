"""The named changes a task record goes through, each keeping the rule it names.

The services say what happened (a copy was claimed, the provider sent news, the task ended) with these; none of them
passes free-form field changes. Each change is made through `transition` (the one place that checks status moves) or
`touch`, so the new version is validated as a whole; a change that would break its rule raises ChangeRefusedError.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from avatar_pipeline.domain.models import ProviderName, S3Object, Task, TaskStatus
from avatar_pipeline.domain.state_machine import touch, transition

S = TaskStatus


class ChangeRefusedError(ValueError):
    """The change would break a rule of the task record (a caller deciding on stale facts, or a bug)."""


def _lease_runs(task: Task, now: datetime) -> bool:
    return task.lease_until is not None and task.lease_until > now


# In line and at the provider


def join_line(
    task: Task,
    *,
    why: str,
    now: datetime,
    audio_ms: int,
    failover_targets: tuple[ProviderName, ...],
    estimated_cost_usd: Decimal,
    mask: S3Object | None = None,
    output_key: str | None = None,
) -> Task:
    """A checked pair joins its provider's line (QUEUED): its place is `now`, kept when the provider turns it away,
    with what admission needs to know (its length, its estimated cost, whether it may fail over, its checked mask)
    and where its video will go."""
    return transition(
        task,
        S.QUEUED,
        why=why,
        now=now,
        queued_at=now,
        audio_ms=audio_ms,
        failover_targets=failover_targets,
        estimated_cost_usd=str(estimated_cost_usd),
        mask=mask,
        output_key=output_key,
    )


def claim_submission(task: Task, *, why: str, now: datetime, lease_until: datetime, charged_on: str | None) -> Task:
    """Admission: SUBMITTING under a lease (the poller looks when it runs out), one more attempt counted.

    `charged_on` is the day this admission counts the task's cost against, or None when it counts nothing; a cost is
    counted once, so a day counted at an earlier admission stays.
    """
    if charged_on is not None and task.charged_on is not None:
        raise ChangeRefusedError(f"task {task.task_id}'s cost was counted on {task.charged_on} already")
    return transition(
        task,
        S.SUBMITTING,
        why=why,
        now=now,
        lease_until=lease_until,
        next_check_at=lease_until,
        submit_attempts=task.submit_attempts + 1,
        charged_on=task.charged_on if charged_on is None else charged_on,
    )


def back_in_line(task: Task, *, why: str, now: datetime) -> Task:
    """The provider turned the submission away: back to its place in its line (QUEUED), free of the submission's
    lease and of the poller (the dispatcher sends a line's tasks)."""
    return transition(task, S.QUEUED, why=why, now=now, lease_until=None, next_check_at=None)


def move_to_line(task: Task, provider: ProviderName, *, why: str, now: datetime, estimated_cost_usd: Decimal) -> Task:
    """Into `provider`'s line at the same place (failover or spill-over), forward along its failover targets only
    (never back to one it left): the task remembers where it came from, costs what the new provider charges, and
    that cost is not counted yet (it is at its admission there)."""
    if provider not in task.targets_ahead:
        raise ChangeRefusedError(
            f"task {task.task_id} at {task.provider} may move only to {', '.join(task.targets_ahead) or 'no provider'}"
        )
    return transition(
        task,
        S.QUEUED,
        why=why,
        now=now,
        lease_until=None,
        next_check_at=None,
        provider=provider,
        failed_over_from=task.provider,
        estimated_cost_usd=str(estimated_cost_usd),
        charged_on=None,
    )


def explain(task: Task, *, why: str, now: datetime) -> Task:
    """Same status, a new reason (what it waits for): the history records moves only."""
    return touch(task, now=now, reason=why)


def mark_answer_lost(task: Task, *, why: str, now: datetime, check_at: datetime) -> Task:
    """A submission whose answer was lost stays SUBMITTING without a lease: that is how the poller and the render
    slots know its outcome is unknown (the provider may have it, so it is never sent again). Looked at `check_at`."""
    if task.status is not S.SUBMITTING:
        raise ChangeRefusedError(f"task {task.task_id} is {task.status}, not being submitted")
    return touch(task, now=now, lease_until=None, next_check_at=check_at, reason=why)


def record_news(
    task: Task, target: TaskStatus, *, why: str, now: datetime, provider_task_id: str, check_at: datetime
) -> Task:
    """The provider's news moves the task to `target`: the provider's id and the time of the news are recorded, and
    no lease is held any more (a submission's claim ends with the provider's first word). The poller looks at
    `check_at`, or at once when the news ended the task (to announce it). A finished video is `video_ready`."""
    if target is S.OUTPUT_READY:
        raise ChangeRefusedError("a finished video comes with its link: video_ready records it")
    return transition(
        task,
        target,
        why=why,
        now=now,
        provider_task_id=provider_task_id,
        last_news_at=now,
        lease_until=None,
        next_check_at=now if target.is_terminal else check_at,
    )


def video_ready(
    task: Task,
    *,
    why: str,
    now: datetime,
    provider_task_id: str,
    output_url: str | None,
    output_expires_at: datetime,
    check_at: datetime,
) -> Task:
    """The provider finished the video: OUTPUT_READY, with where it is and until when the provider keeps it (copies
    are tried until then); the poller looks at `check_at` in case finalize never picks it up.

    A timed-out task reopens this way, once (a paid video is kept): its watch ends, and the next notification says it
    overturns the time-out if that was announced or may have been (a notifier held the lease).
    """
    reopening: dict[str, object] = {}
    if task.status is S.TIMED_OUT:
        announced = task.notified_at is not None or task.notify_lease_until is not None
        reopening = {
            "watch_until": None,
            "corrects": S.TIMED_OUT if announced else None,
            "notified_at": None,
            "notify_lease_until": None,
        }
    return transition(
        task,
        S.OUTPUT_READY,
        why=why,
        now=now,
        provider_task_id=provider_task_id,
        provider_output_url=output_url,
        output_expires_at=output_expires_at,
        last_news_at=now,
        **reopening,
        lease_until=None,
        next_check_at=check_at,
    )


def schedule_check(task: Task, *, at: datetime, now: datetime) -> Task:
    """The poller looks at the task again at `at`; nothing else changes (a new version all the same, so the table's
    stream sees it)."""
    return touch(task, now=now, next_check_at=at)


# The end


def end(task: Task, status: TaskStatus, *, why: str, now: datetime, watch_until: datetime | None = None) -> Task:
    """The task ends with `status` (a terminal one) and `why` in its history: no lease outlives it, and the poller
    looks at once, to announce it. `watch_until`: a task that ended while its provider may still deliver is watched
    for a late video until then."""
    if not status.is_terminal:
        raise ChangeRefusedError(f"{status} is not an end")
    return transition(task, status, why=why, now=now, lease_until=None, next_check_at=now, watch_until=watch_until)


def stop_watching(task: Task, *, now: datetime) -> Task:
    """No late video can come any more: the watch ends, and with it the poller's interest in an ended task."""
    if not task.status.is_terminal:
        raise ChangeRefusedError(f"task {task.task_id} is {task.status}: only an ended task is watched")
    return touch(task, now=now, watch_until=None, next_check_at=None)


# The copy into our bucket


def holds_copy(task: Task, attempt: int) -> bool:
    """Copy attempt number `attempt` holds the task: it is FINALIZING, and no later attempt took it over."""
    return task.status is S.FINALIZING and task.finalize_attempts == attempt


def _refuse_unless_held(task: Task, attempt: int) -> None:
    if not holds_copy(task, attempt):
        raise ChangeRefusedError(
            f"copy attempt {attempt} does not hold task {task.task_id}"
            f" ({task.status}, attempt {task.finalize_attempts})"
        )


def claim_copy(task: Task, *, now: datetime, lease_until: datetime, check_at: datetime) -> Task:
    """A new copy attempt holds the task (FINALIZING) until `lease_until`, numbered one past the last; a retry it
    was waiting for is over. It takes a ready video, or a copy whose lease ran out (that attempt died); never one
    another attempt still holds. The poller looks at `check_at`, in case this attempt dies too."""
    if task.status is S.FINALIZING and _lease_runs(task, now):
        raise ChangeRefusedError(f"copy attempt {task.finalize_attempts} still holds task {task.task_id}")
    attempt = task.finalize_attempts + 1
    return transition(
        task,
        S.FINALIZING,
        why=f"copying the video (attempt {attempt})",
        now=now,
        finalize_attempts=attempt,
        copy_retry_at=None,
        lease_until=lease_until,
        next_check_at=check_at,
    )


def renew_copy_lease(task: Task, *, attempt: int, until: datetime, check_at: datetime, now: datetime) -> Task:
    """The copy attempt holding the task holds it until `until` now (only it may renew); the poller looks at
    `check_at`."""
    _refuse_unless_held(task, attempt)
    return touch(task, now=now, lease_until=until, next_check_at=check_at)


def give_back_copy(task: Task, *, attempt: int, retry_at: datetime, why: str, now: datetime) -> Task:
    """The copy attempt holding the task broke off: its lease ends now, and the next attempt is made no earlier than
    `retry_at` (when the poller hands it over)."""
    _refuse_unless_held(task, attempt)
    return touch(task, now=now, lease_until=now, copy_retry_at=retry_at, next_check_at=retry_at, reason=why)


def schedule_copy_retry(task: Task, *, retry_at: datetime, why: str, now: datetime) -> Task:
    """A copy that stopped without a word (nobody holds it any more) is tried again no earlier than `retry_at`."""
    if task.status is not S.FINALIZING or _lease_runs(task, now):
        raise ChangeRefusedError(f"task {task.task_id} is not a copy that stopped ({task.status})")
    return touch(task, now=now, copy_retry_at=retry_at, next_check_at=retry_at, reason=why)


def hand_back_copy(task: Task, *, why: str, now: datetime, check_at: datetime) -> Task:
    """A copy that did not finish (nobody holds it any more) goes back to OUTPUT_READY: a new stream record, so
    finalize gets another go; the poller looks at `check_at` if it does not."""
    if task.status is not S.FINALIZING or _lease_runs(task, now):
        raise ChangeRefusedError(f"task {task.task_id} is not a copy that stopped ({task.status})")
    return transition(task, S.OUTPUT_READY, why=why, now=now, next_check_at=check_at)


def complete(task: Task, *, attempt: int, output: S3Object, now: datetime, check_at: datetime) -> Task:
    """The copy attempt holding the task stored the video at `output`: COMPLETED (by it alone), its lease over; the
    poller announces it at `check_at` if the notifier did not."""
    _refuse_unless_held(task, attempt)
    return transition(
        task,
        S.COMPLETED,
        why=f"video stored at {output.uri}",
        now=now,
        output=output,
        lease_until=None,
        next_check_at=check_at,
    )


# The one notification


def notification_claimable(task: Task, now: datetime) -> bool:
    """The ended task's one notification is not out yet, and no notifier holds the right to publish it."""
    leased = task.notify_lease_until is not None and task.notify_lease_until > now
    return task.status.is_terminal and task.notified_at is None and not leased


def claim_notification(task: Task, *, now: datetime, until: datetime) -> Task:
    """A notifier holds the right to publish the ended task's one notification until `until` (when the poller looks,
    in case it died); never while it is out already or another notifier holds it."""
    if not notification_claimable(task, now):
        raise ChangeRefusedError(f"task {task.task_id}'s notification is not to be claimed now")
    return touch(task, now=now, notify_lease_until=until, next_check_at=until)


def mark_notified(task: Task, *, now: datetime) -> Task:
    """The notification went out at `now`, once: the notifier's lease ends, and the poller has nothing left to do."""
    if task.notified_at is not None:
        raise ChangeRefusedError(f"task {task.task_id} was announced at {task.notified_at} already")
    return touch(task, now=now, notified_at=now, notify_lease_until=None, next_check_at=None)
