"""What every use case needs: the ports, the settings, a clock, and the one way to change a task."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from aws_lambda_powertools import Logger

from avatar_pipeline.config import Settings
from avatar_pipeline.domain.callback_tokens import CallbackTokens
from avatar_pipeline.domain.errors import ProviderConfigError
from avatar_pipeline.domain.models import PairSlot, Task, TaskStatus, utcnow
from avatar_pipeline.domain.state_machine import can_transition
from avatar_pipeline.domain.task_changes import end
from avatar_pipeline.ports import (
    ConflictError,
    DeliveryLog,
    MediaStore,
    Notifier,
    TaskRepository,
    UsageMeter,
    VideoProvider,
    Waker,
)

logger = Logger(child=True)

MAX_WRITE_ATTEMPTS = 5


class UnknownTaskError(LookupError):
    """No task with that id in the table."""


@dataclass
class PipelineContext:
    settings: Settings
    tasks: TaskRepository
    media: MediaStore
    notifier: Notifier
    providers: Mapping[str, VideoProvider]
    meter: UsageMeter
    deliveries: DeliveryLog
    waker: Waker
    callback_tokens: CallbackTokens
    clock: Callable[[], datetime] = field(default=utcnow)

    def provider_for(self, task: Task) -> VideoProvider:
        try:
            return self.providers[task.provider]
        except KeyError:
            raise ProviderConfigError(f"{task.provider} is not configured (no API key in its secret)") from None

    def update_task(self, task: Task | str, decide: Callable[[Task], Task | None]) -> Task | None:
        """Apply `decide` to the stored task with optimistic concurrency; None when it decided on no change.

        `decide` gets the latest record and returns its next version (or None). When another writer got there
        first, the record is read again and `decide` asked again, so every decision is made on fresh facts.
        """
        current = self.tasks.get(task) if isinstance(task, str) else task
        for _ in range(MAX_WRITE_ATTEMPTS):
            if current is None:
                raise UnknownTaskError(f"no task {task}")
            new = decide(current)
            if new is None:
                return None
            try:
                self.tasks.replace(new, expected=current)
            except ConflictError:
                logger.info("task changed meanwhile; deciding again", extra={"task_id": current.task_id})
                current = self.tasks.get(current.task_id)
                continue
            return new
        raise ConflictError(f"task {current.task_id if current else task} kept changing; giving up this attempt")

    def update_slot(
        self, job: str, decide: Callable[[PairSlot | None], PairSlot | None]
    ) -> tuple[PairSlot | None, PairSlot | None]:
        """The same optimistic concurrency for a job's pair slot: (the slot as read, the slot as written or None)."""
        for _ in range(MAX_WRITE_ATTEMPTS):
            current = self.tasks.get_slot(job)
            new = decide(current)
            if new is None:
                return current, None
            try:
                self.tasks.save_slot(new, expected=current)
            except ConflictError:
                continue
            return current, new
        raise ConflictError(f"the slot of job {job} kept changing; giving up this attempt")

    def end_task(
        self, task: Task | str, status: TaskStatus, why: str, *, provided: Callable[[Task], bool]
    ) -> Task | None:
        """End the task with `status` — but only if `provided` still holds for the latest record.

        `provided` restates the premise the decision was made on (e.g. "still FINALIZING, attempt 2"), so a writer
        that lost a race never ends a task on facts that have changed since it looked.
        """
        return self.update_task(task, functools.partial(self._end_if, status=status, why=why, provided=provided))

    def _end_if(self, current: Task, *, status: TaskStatus, why: str, provided: Callable[[Task], bool]) -> Task | None:
        if not provided(current) or not can_transition(current.status, status):
            return None
        return end(current, status, why=why, now=self.clock())
