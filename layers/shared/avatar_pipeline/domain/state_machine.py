"""Which status a task may move to from which, and the one way a task record changes.

Every write produces a new version of the record; the repository only stores it if the stored
record still has the status and version it was derived from. So a late duplicate can never move a
finished task backwards, and of two racing writers exactly one wins.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from avatar_pipeline.domain.models import ModelName, ModelOptions, ProviderName, S3Object, Task, TaskStatus, Transition

S = TaskStatus

# target status → the statuses it may be reached from
ALLOWED_SOURCES: dict[TaskStatus, frozenset[TaskStatus]] = {
    # From SUBMITTING: the provider turned the submission away; it goes back to its place in line (maybe another
    # provider's, when failing over). From QUEUED: it spilled over to another provider's line.
    S.QUEUED: frozenset({S.WAITING_FOR_PAIR, S.SUBMITTING, S.QUEUED}),
    # Only by admission: the provider's quota has room for it.
    S.SUBMITTING: frozenset({S.QUEUED}),
    S.SUBMITTED: frozenset({S.SUBMITTING}),
    # A callback may overtake the write that records the submission's answer.
    S.PROCESSING: frozenset({S.SUBMITTING, S.SUBMITTED}),
    # From FINALIZING: the poller hands a stuck copy back to finalize. From TIMED_OUT: the provider delivered after
    # all, and a paid video is never thrown away (once per task).
    S.OUTPUT_READY: frozenset({S.SUBMITTING, S.SUBMITTED, S.PROCESSING, S.FINALIZING, S.TIMED_OUT}),
    # From FINALIZING: a new finalize attempt takes over a copy whose lease ran out.
    S.FINALIZING: frozenset({S.OUTPUT_READY, S.FINALIZING}),
    S.COMPLETED: frozenset({S.FINALIZING}),
    S.REJECTED: frozenset({S.WAITING_FOR_PAIR}),
    # From QUEUED: the provider cannot be used at all (not configured), or the task can never fit the spend limit.
    S.FAILED: frozenset({S.QUEUED, S.SUBMITTING, S.SUBMITTED, S.PROCESSING, S.OUTPUT_READY, S.FINALIZING}),
    # Never from QUEUED: waiting one's turn is not taking too long. Not from OUTPUT_READY or FINALIZING: once the
    # video exists, only the copy can fail (FAILED, when the provider no longer has it), never the clock.
    S.TIMED_OUT: frozenset({S.WAITING_FOR_PAIR, S.SUBMITTING, S.SUBMITTED, S.PROCESSING}),
}


class InvalidTransitionError(ValueError):
    def __init__(self, current: TaskStatus, target: TaskStatus) -> None:
        super().__init__(f"a task cannot go from {current} to {target}")
        self.current = current
        self.target = target


def can_transition(current: TaskStatus, target: TaskStatus) -> bool:
    return current in ALLOWED_SOURCES.get(target, frozenset())


def begin(
    task_id: str,
    job: str,
    *,
    since: datetime,
    arrived: str,
    now: datetime,
    provider: ProviderName,
    model: ModelName,
    options: ModelOptions | None = None,
    image: S3Object | None = None,
    audio: S3Object | None = None,
    prompt: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Task:
    """The one way a task begins: WAITING_FOR_PAIR since its first file (`arrived`) landed, for `provider`'s `model`
    with the job's options for it, with the files it has so far."""
    entry = Transition(at=since, from_status=None, to_status=S.WAITING_FOR_PAIR, reason=f"{arrived} arrived")
    return Task(
        task_id=task_id,
        job=job,
        status=S.WAITING_FOR_PAIR,
        created_at=since,
        updated_at=now,
        history=[entry],
        provider=provider,
        model=model,
        options=options or {},
        image=image,
        audio=audio,
        prompt=prompt,
        metadata=metadata or {},
    )


def transition(task: Task, target: TaskStatus, *, why: str, now: datetime, **changes: Any) -> Task:
    """The task moved to `target` because of `why`: a new version, with the move in its history and `why` as
    the task's current reason."""
    if not can_transition(task.status, target):
        raise InvalidTransitionError(task.status, target)
    entry = Transition(at=now, from_status=task.status, to_status=target, reason=why)
    return touch(task, now=now, status=target, reason=why, history=[*task.history, entry], **changes)


class UnknownTaskFieldError(TypeError):
    """A change names a field the task record does not have (a typo would otherwise be dropped without a word)."""


def touch(task: Task, *, now: datetime, **changes: Any) -> Task:
    """Same status, new facts (a lease, a poll time, the provider's id): still a new version.

    The new version is validated as a whole: a change to a field the record does not have, or of the wrong type,
    raises here, before anything is written (pydantic's model_copy would take either silently).
    """
    if unknown := changes.keys() - Task.model_fields.keys():
        raise UnknownTaskFieldError(f"a task has no field {', '.join(sorted(unknown))}")
    # Nested records (history entries, S3 objects) are kept as they are; every field's value is checked.
    return Task.model_validate({**dict(task), **changes, "version": task.version + 1, "updated_at": now})
