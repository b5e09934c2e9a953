"""The end of a task: the provider's video copied into our bucket, and exactly one notification."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Literal

from aws_lambda_powertools import Logger

from avatar_pipeline.domain.errors import OutputCopyInterruptedError, OutputUnusableError
from avatar_pipeline.domain.models import Notification, S3Object, Task, TaskOutcome, TaskStatus
from avatar_pipeline.domain.output_keys import DEFAULT_TEMPLATE, render
from avatar_pipeline.domain.task_changes import (
    claim_copy,
    claim_notification,
    complete,
    end,
    give_back_copy,
    holds_copy,
    mark_notified,
    notification_claimable,
    renew_copy_lease,
)
from avatar_pipeline.providers.registry import describe_model
from avatar_pipeline.services.context import PipelineContext

logger = Logger(child=True)

# How long an OUTPUT_READY task may wait for finalize before the poller hands it over again: longer than the
# finalize function's 15-minute timeout.
FINALIZE_GRACE = timedelta(seconds=960)
# A copy holds the task for this long and renews the hold while bytes flow, so a copy that died (its Lambda killed
# mid-copy) is handed to the next attempt within about a minute, not at the end of the function's timeout.
COPY_LEASE = timedelta(seconds=60)
# The poller looks at a held task this long after its hold would run out.
COPY_LEASE_MARGIN = timedelta(seconds=15)
# How long one notifier holds the right to publish a task's notification.
NOTIFY_LEASE = timedelta(seconds=60)
# A copy that broke off is tried again after this, doubling per attempt up to COPY_RETRY_MAX, for as long as the
# provider keeps the video: a CDN or S3 hiccup never costs a paid video.
COPY_RETRY_FIRST = timedelta(seconds=15)
COPY_RETRY_MAX = timedelta(hours=1)

FinalizeAction = Literal["completed", "failed", "retry-scheduled", "skipped"]
AnnounceAction = Literal["published", "skipped", "deferred"]


def output_key(task: Task) -> str:
    """Where the task's video goes: as its template gave it, or the default for records from before templates."""
    return task.output_key or render(DEFAULT_TEMPLATE, task)


def copy_backoff(attempt: int) -> timedelta:
    """How long to wait after failed copy attempt number `attempt` (1 for the first)."""
    return min(COPY_RETRY_FIRST * (1 << max(0, min(attempt - 1, 20))), COPY_RETRY_MAX)


class CopyLeaseLostError(OutputCopyInterruptedError):
    """Another attempt took the task over while this one was copying: this one stops."""


def finalize_output(ctx: PipelineContext, task: Task | str, time_left: timedelta) -> FinalizeAction:
    """Copy a ready video into outputs/ and complete the task.

    A copy that broke off is given back with a time for the next attempt, which the poller hands to finalize then;
    the task fails only when the provider's video is unusable or gone.
    """
    now = ctx.clock()
    deadline = now + time_left
    claimed = ctx.update_task(task, functools.partial(_claim_copy, now=now, deadline=deadline))
    if claimed is None:
        return "skipped"
    if claimed.status is TaskStatus.FAILED:
        ctx.media.discard_partial_copies(ctx.settings.media_bucket, output_key(claimed))
        return "failed"
    return _CopyAttempt(ctx, claimed, deadline).run()


def _claim_copy(current: Task, *, now: datetime, deadline: datetime) -> Task | None:
    """FINALIZING with a lease, for a ready video (or one whose copy's lease ran out) that is not backing off; FAILED
    when the provider has deleted the video meanwhile; None when it is not finalize's to copy now."""
    lease_over = current.status is TaskStatus.FINALIZING and (current.lease_until or now) <= now
    if current.status is not TaskStatus.OUTPUT_READY and not lease_over:
        return None
    if current.copy_retry_at is not None and current.copy_retry_at > now:
        return None  # backing off: the poller hands it over when it is time
    if current.output_expires_at is not None and now >= current.output_expires_at:
        why = (
            f"the provider deleted its video before it could be copied ({current.finalize_attempts} attempts;"
            f" last: {current.reason})"
        )
        return end(current, TaskStatus.FAILED, why=why, now=now)
    lease_until = min(now + COPY_LEASE, deadline)
    return claim_copy(current, now=now, lease_until=lease_until, check_at=lease_until + COPY_LEASE_MARGIN)


class _CopyAttempt:
    """One claimed copy attempt: it holds the task while bytes flow, and every write it makes is conditional on the
    task still being this attempt's (FINALIZING, with this attempt's number)."""

    def __init__(self, ctx: PipelineContext, claimed: Task, deadline: datetime) -> None:
        assert claimed.provider_output_url is not None
        self._ctx = ctx
        self._claimed = claimed
        self._source = claimed.provider_output_url
        self._attempt = claimed.finalize_attempts
        self._deadline = deadline
        self._held_until = claimed.lease_until or ctx.clock()

    def still_ours(self, current: Task) -> bool:
        return holds_copy(current, self._attempt)

    def run(self) -> FinalizeAction:
        ctx, claimed = self._ctx, self._claimed
        bucket, key = ctx.settings.media_bucket, output_key(claimed)
        # Parts left behind by an attempt that died mid-copy are of no use to anyone.
        ctx.media.discard_partial_copies(bucket, key)
        try:
            output = ctx.media.copy_from_url(self._source, bucket, key, ctx.settings.max_output_bytes, self.keep_alive)
        except CopyLeaseLostError as error:
            logger.warning("copy abandoned", extra={"task_id": claimed.task_id, "reason": str(error)})
            return "skipped"
        except OutputUnusableError as error:
            _fail_if(ctx, claimed, self.still_ours, f"the provider's video could not be used: {error}")
            return "failed"
        except OutputCopyInterruptedError as error:
            self._give_back(error)
            return "retry-scheduled"
        return "completed" if ctx.update_task(claimed, functools.partial(self._complete, output=output)) else "skipped"

    def keep_alive(self) -> None:
        """Called as bytes flow: renew the hold when half of it is used, and stop when the task is someone else's
        or this invocation's time is up."""
        moment = self._ctx.clock()
        if moment >= self._deadline:
            raise OutputCopyInterruptedError("the copy did not finish within the function's time")
        if self._held_until - moment > COPY_LEASE / 2:
            return
        renewed_until = min(moment + COPY_LEASE, self._deadline)
        renew = functools.partial(self._renew, until=renewed_until, now=moment)
        if self._ctx.update_task(self._claimed.task_id, renew) is None:
            raise CopyLeaseLostError(f"copy attempt {self._attempt} was taken over by another attempt")
        self._held_until = renewed_until

    def _renew(self, current: Task, *, until: datetime, now: datetime) -> Task | None:
        if not self.still_ours(current):
            return None
        return renew_copy_lease(
            current, attempt=self._attempt, until=until, check_at=until + COPY_LEASE_MARGIN, now=now
        )

    def _give_back(self, error: OutputCopyInterruptedError) -> None:
        """The copy broke off: the task is handed back, with a time for the next attempt."""
        later = self._ctx.clock()
        retry_at = later + copy_backoff(self._attempt)
        note = f"copy attempt {self._attempt} broke off ({error}); trying again at {retry_at:%H:%M:%S} UTC"
        self._ctx.update_task(self._claimed, functools.partial(self._release, retry_at=retry_at, why=note, now=later))
        logger.warning("copy interrupted; retry scheduled", extra={"task_id": self._claimed.task_id, "reason": note})

    def _release(self, current: Task, *, retry_at: datetime, why: str, now: datetime) -> Task | None:
        if not self.still_ours(current):
            return None
        return give_back_copy(current, attempt=self._attempt, retry_at=retry_at, why=why, now=now)

    def _complete(self, current: Task, *, output: S3Object) -> Task | None:
        if not self.still_ours(current):
            return None
        now = self._ctx.clock()
        return complete(current, attempt=self._attempt, output=output, now=now, check_at=now + NOTIFY_LEASE)


def _fail_if(ctx: PipelineContext, task: Task, still_ours: Callable[[Task], bool], why: str) -> None:
    ctx.end_task(task, TaskStatus.FAILED, why, provided=still_ours)
    logger.error("finalize failed", extra={"task_id": task.task_id, "reason": why})


def build_notification(ctx: PipelineContext, task: Task) -> Notification:
    ended_at = task.history[-1].at if task.history else task.updated_at
    download = None
    if task.status is TaskStatus.COMPLETED and task.output is not None:
        download = ctx.media.presigned_get(task.output, ctx.settings.download_url_expiry_seconds)
    return Notification(
        job=task.job,
        task_id=task.task_id,
        status=task.status,
        reason=None if task.status is TaskStatus.COMPLETED else task.reason,
        inputs={role: obj.uri for role, obj in (("image", task.image), ("audio", task.audio)) if obj is not None},
        output=task.output.uri if task.output else None,
        download_url=download.url if download else None,
        # When the link really stops working (its signing credentials may expire before its own expiry).
        download_url_expires_at=download.expires_at if download else None,
        provider=task.provider,
        model=task.model,
        model_title=describe_model(task.provider, task.model, task.options),
        provider_task_id=task.provider_task_id,
        estimated_cost_usd=task.estimated_cost_usd,
        metadata=task.metadata,
        corrects=task.corrects,
        created_at=task.created_at,
        completed_at=ended_at,
    )


def announce(ctx: PipelineContext, task: Task | str) -> AnnounceAction:
    """Publish the task's one notification, if it has ended and nobody has published it yet.

    A short lease, claimed with a conditional write before publishing, keeps concurrent notifiers (stream
    retries, the poller) from publishing twice; if a notifier dies holding it, the poller publishes later.
    """
    claimed = ctx.update_task(task, functools.partial(_claim_notification, now=ctx.clock()))
    if claimed is None:
        return "skipped"
    try:
        message_id = ctx.notifier.publish(build_notification(ctx, claimed))
    except Exception:
        # The lease stays: when it has run out, the poller publishes. (Releasing it here would be a new stream
        # record, hence another immediate attempt: a loop for as long as the topic is unreachable.)
        logger.exception(
            "publishing the notification failed; the poller will retry", extra={"task_id": claimed.task_id}
        )
        return "deferred"
    ctx.update_task(claimed, functools.partial(_confirm_notified, ctx, announced=claimed.status))
    # Counted here, where each ended task passes exactly once.
    ctx.meter.record_outcome(TaskOutcome.of(claimed))
    logger.info("notification published", extra={"task_id": claimed.task_id, "message_id": message_id})
    return "published"


def _claim_notification(current: Task, *, now: datetime) -> Task | None:
    if not notification_claimable(current, now):
        return None
    return claim_notification(current, now=now, until=now + NOTIFY_LEASE)


def _confirm_notified(ctx: PipelineContext, current: Task, *, announced: TaskStatus) -> Task | None:
    # Not over a late video's reopening (a new ending, announced on its own).
    if current.notified_at is not None or current.status is not announced:
        return None
    return mark_notified(current, now=ctx.clock())
