"""What the provider tells us (callbacks) and what we ask it (the poller), recorded one way."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from aws_lambda_powertools import Logger

from avatar_pipeline.domain.errors import CallbackMismatchError, ProviderError, ProviderTransientError, WebhookAuthError
from avatar_pipeline.domain.models import HOLDING_STATUSES, PairSlot, ProviderJob, ProviderJobStatus, Task, TaskStatus
from avatar_pipeline.domain.pairing import consume, content_id
from avatar_pipeline.domain.state_machine import begin, can_transition
from avatar_pipeline.domain.task_changes import (
    end,
    hand_back_copy,
    record_news,
    schedule_check,
    schedule_copy_retry,
    stop_watching,
    video_ready,
)
from avatar_pipeline.observability import working_on
from avatar_pipeline.ports import ConflictError, VideoProvider
from avatar_pipeline.providers.registry import PROVIDERS, describe_failure, display_name
from avatar_pipeline.services.admission import dispatch, reconcile
from avatar_pipeline.services.context import PipelineContext, UnknownTaskError
from avatar_pipeline.services.finishing import FINALIZE_GRACE, announce, copy_backoff, output_key

logger = Logger(child=True)

# The poller stops picking up work when less than this is left of its invocation (and starts a submission only with
# SUBMIT_TIME_BUDGET left).
POLL_SAFETY_MARGIN = timedelta(seconds=15)
MAX_DUE_PER_POLL = 500
# A task that timed out while its provider may still deliver is asked about this often (the webhook usually comes
# first), until the provider would have deleted the video anyway.
LATE_VIDEO_CHECK_EVERY = timedelta(minutes=15)

NewsAction = Literal["recorded", "unchanged", "deferred"]
# What came of a callback: its news (see NewsAction), or nothing at all for a delivery that was processed before.
CallbackOutcome = NewsAction | Literal["duplicate"]


class UnknownProviderError(LookupError):
    """A callback for a provider this stack has no adapter for (or no API key yet)."""


# Provider news can only move a task that is at the provider; what follows is ours to decide.
AT_PROVIDER = frozenset({TaskStatus.SUBMITTING, TaskStatus.SUBMITTED, TaskStatus.PROCESSING})

_NEXT_STATUS = {
    ProviderJobStatus.QUEUED: TaskStatus.SUBMITTED,
    ProviderJobStatus.PROCESSING: TaskStatus.PROCESSING,
    ProviderJobStatus.SUCCEEDED: TaskStatus.OUTPUT_READY,
    ProviderJobStatus.FAILED: TaskStatus.FAILED,
}


def record_provider_news(ctx: PipelineContext, task: Task | str, news: ProviderJob) -> NewsAction:
    """Move the task as far as the provider's news allows; repeated or late news changes nothing."""
    return "recorded" if ctx.update_task(task, functools.partial(_news_moves, ctx, news=news)) else "unchanged"


def _news_moves(ctx: PipelineContext, current: Task, *, news: ProviderJob) -> Task | None:
    """The task's next version after the provider's news, or None when the news moves it nowhere."""
    if current.provider_task_id and current.provider_task_id != news.provider_task_id:
        raise CallbackMismatchError(
            f"news about {news.provider_task_id} addressed to task {current.task_id},"
            f" which is {current.provider_task_id}"
        )
    target = _NEXT_STATUS[news.status]
    if _late_video(current, news):
        return _reopen_for_late_video(ctx, current, news)
    if current.status not in AT_PROVIDER or not can_transition(current.status, target):
        return None
    now = ctx.clock()
    name = display_name(current.provider)
    if target is TaskStatus.OUTPUT_READY:
        return _video_ready(current, news, why=f"{name} finished the video", now=now)
    if target is TaskStatus.FAILED:
        why = describe_failure(current.provider, news)
    elif target is TaskStatus.PROCESSING:
        why = f"{name} is making the video"
    else:
        why = f"{name} accepted it as {news.provider_task_id}"
    check_at = now + timedelta(seconds=ctx.settings.poll_after_seconds)
    return record_news(current, target, why=why, now=now, provider_task_id=news.provider_task_id, check_at=check_at)


def _late_video(task: Task, news: ProviderJob) -> bool:
    """The provider finished a video for a task that had timed out while it was there: a paid video, to be kept."""
    return (
        task.status is TaskStatus.TIMED_OUT
        and task.watch_until is not None
        and news.status is ProviderJobStatus.SUCCEEDED
        and news.output_url is not None
    )


def _reopen_for_late_video(ctx: PipelineContext, task: Task, news: ProviderJob) -> Task:
    """TIMED_OUT → OUTPUT_READY, once: the video is copied and announced like any other, and its notification says
    it overturns the time-out (if that was announced, or may have been)."""
    why = f"{display_name(task.provider)} delivered the video after the task had timed out; keeping it"
    return _video_ready(task, news, why=why, now=ctx.clock())


def _video_ready(task: Task, news: ProviderJob, *, why: str, now: datetime) -> Task:
    """OUTPUT_READY with the provider's video, copied no earlier than the grace and no later than its provider keeps
    it."""
    return video_ready(
        task,
        why=why,
        now=now,
        provider_task_id=news.provider_task_id,
        output_url=news.output_url,
        output_expires_at=now + PROVIDERS[task.provider].output_retention,
        check_at=now + FINALIZE_GRACE,
    )


def receive_callback(
    ctx: PipelineContext,
    provider_name: str,
    task_id: str,
    headers: Mapping[str, str],
    body: bytes,
    query: Mapping[str, str],
) -> CallbackOutcome:
    """An HTTP callback from a provider: authenticate it first, then record it, once per delivery.

    Every callback URL carries the task's token (derived, see `CallbackTokens`), checked before anything else is
    done: a forged callback costs no read. Signed callbacks (WaveSpeed) are then verified too; unsigned ones
    (CometAPI) are only hints: what is recorded is the provider's answer to our own query.
    A delivery the provider names (WaveSpeed's webhook-id, kept on its retries) is processed once; a repeat of it is
    a "duplicate" and changes nothing. Only a delivery processed to the end is remembered: one that failed midway is
    processed afresh when the provider retries it.
    Raises UnknownProviderError, WebhookAuthError, WebhookPayloadError, UnknownTaskError, CallbackMismatchError or
    DeliveryInProgressError.
    """
    # An unknown task is refused as a wrong token is: the answer must not tell a caller which task ids exist.
    if not ctx.callback_tokens.accepts(provider_name, task_id, query.get("token", "")):
        raise WebhookAuthError("the callback's token is not the task's")
    provider = ctx.providers.get(provider_name)
    if provider is None:
        raise UnknownProviderError(f"no provider called {provider_name!r}")
    process: Callable[[], NewsAction]
    if provider.callback_auth == "signature":
        news = provider.parse_callback(headers, body, ctx.clock())
        process = functools.partial(_record_signed, ctx, provider_name, task_id, news)
    else:
        process = functools.partial(_confirm_and_record, ctx, provider, provider_name, task_id, headers, body)
    delivery_id = provider.delivery_id(headers)
    if delivery_id is None:
        return process()
    outcome, replayed = ctx.deliveries.once(f"{provider_name}:{delivery_id}", process)
    if replayed:
        logger.info(
            "delivery already processed",
            extra={"task_id": task_id, "delivery_id": delivery_id, "first_outcome": outcome},
        )
        return "duplicate"
    return outcome


def _record_signed(ctx: PipelineContext, provider_name: str, task_id: str, news: ProviderJob) -> NewsAction:
    return _record_callback_news(ctx, _existing_task(ctx, task_id), provider_name, news)


def _confirm_and_record(
    ctx: PipelineContext,
    provider: VideoProvider,
    provider_name: str,
    task_id: str,
    headers: Mapping[str, str],
    body: bytes,
) -> NewsAction:
    task = _existing_task(ctx, task_id)
    _check_addressee(task, provider_name)
    hint = provider.parse_callback(headers, body, ctx.clock())
    if task.provider_task_id and hint.provider_task_id != task.provider_task_id:
        raise CallbackMismatchError(f"callback about {hint.provider_task_id} for task {task_id}")
    try:
        news = provider.fetch(hint.provider_task_id)
    except ProviderError as error:
        # The hint cannot be confirmed now: the poller asks the provider at once instead, and the callback is
        # acknowledged (nothing is lost, and the provider is not kept waiting on our retries).
        logger.warning("callback not confirmed; polling it now", extra={"task_id": task_id, "error": str(error)})
        _reschedule(ctx, task, ctx.clock())
        return "deferred"
    return _record_callback_news(ctx, task, provider_name, news)


def _existing_task(ctx: PipelineContext, task_id: str) -> Task:
    task = ctx.tasks.get(task_id)
    if task is None:
        raise UnknownTaskError(f"no task {task_id}")
    return task


def _record_callback_news(ctx: PipelineContext, task: Task, provider_name: str, news: ProviderJob) -> NewsAction:
    _check_addressee(task, provider_name)
    working_on(task.job, task.task_id)
    if news.external_id is not None and news.external_id != task.task_id:
        # The provider's own record says this task belongs to another of ours: a leaked or misused token.
        raise CallbackMismatchError(
            f"{news.provider_task_id} was created for task {news.external_id}, not {task.task_id}"
        )
    return record_provider_news(ctx, task, news)


def _check_addressee(task: Task, provider_name: str) -> None:
    if task.provider != provider_name:
        raise CallbackMismatchError(f"task {task.task_id} belongs to {task.provider}, not {provider_name}")


@dataclass
class PollReport:
    actions: Counter[str] = field(default_factory=Counter)
    stopped_early: bool = False
    # How long the most overdue record had been due when this pass began: grows when records stay stuck.
    oldest_due: timedelta = timedelta(0)


def poll(ctx: PipelineContext, time_left: Callable[[], timedelta]) -> PollReport:
    """One pass over what is due: chase providers, retry turned-away submissions, expire what waited too long,
    hand stuck copies back to finalize and publish notifications nobody published."""
    report = PollReport()
    # First the dispatcher's safety net, so many due tasks cannot crowd it out: slots whose release was lost are
    # given back, and lines whose wake-up was lost move (a dispatch out of time hands its line to a new invocation).
    for provider in PROVIDERS:
        try:
            if reclaimed := reconcile(ctx, provider):
                report.actions["slot-reclaimed"] += reclaimed
            report.actions.update(dispatch(ctx, provider, time_left).actions)
        except Exception:
            logger.exception("dispatching from the line failed", extra={"provider": provider})
            report.actions["error"] += 1
        finally:
            working_on(None)  # a dispatch that failed mid-task left it named
    now = ctx.clock()
    tasks, slots = ctx.tasks.due(now, MAX_DUE_PER_POLL)
    due_since = [task.next_check_at for task in tasks if task.next_check_at is not None]
    due_since += [slot.next_check_at for slot in slots if slot.next_check_at is not None]
    if due_since:
        report.oldest_due = max(timedelta(0), now - min(due_since))
    work: list[tuple[str, str | None, Callable[[], str]]] = [
        *((slot.job, None, functools.partial(_check_slot, ctx, slot)) for slot in slots),
        *((task.job, task.task_id, functools.partial(_check, ctx, task)) for task in tasks),
    ]
    for job, task_id, check in work:
        if time_left() < POLL_SAFETY_MARGIN:
            report.stopped_early = True
            break
        working_on(job, task_id)
        try:
            report.actions[check()] += 1
        except Exception:
            # One bad record must not starve the others; it stays due and is tried again next poll.
            logger.exception("poll of one record failed")
            report.actions["error"] += 1
    working_on(None)
    return report


def _check_slot(ctx: PipelineContext, slot: PairSlot) -> str:
    if slot.is_complete:
        # The invocation that completed it died before settling it: finish its work.
        from avatar_pipeline.services.intake import cut_pair  # the poller's alone: callbacks never load validation

        return f"pair-{cut_pair(ctx, slot, last_chance=True).action}"
    return _expire_orphan(ctx, slot)


def _expire_orphan(ctx: PipelineContext, slot: PairSlot) -> str:
    half = slot.image or slot.audio
    if half is None or slot.waiting_since is None:
        return "skipped"
    missing = "audio" if slot.audio is None else "image"
    minutes = ctx.settings.max_pair_wait_seconds // 60
    now = ctx.clock()
    why = f"no {missing} arrived for {half.key} within {minutes} min"
    waiting = begin(
        content_id(slot.job, half, occasion=slot.waiting_since.isoformat()),
        slot.job,
        since=slot.waiting_since,
        arrived=half.key,
        now=now,
        provider=ctx.settings.default_provider,
        model=ctx.settings.default_model,
        image=slot.image,
        audio=slot.audio,
    )
    timed_out = end(waiting, TaskStatus.TIMED_OUT, why=why, now=now)
    # The half is used up by its TIMED_OUT task, in one transaction with it: if the partner (or a replacement)
    # arrived meanwhile, the slot's version changed and nothing is written.
    released = consume(slot, [half], now, now)
    assert released is not None
    try:
        created = ctx.tasks.save_slot_and_create(released, expected=slot, task=timed_out)
    except ConflictError:
        return "skipped"
    return "orphan-timed-out" if created else "skipped"


def _reschedule(ctx: PipelineContext, task: Task, at: datetime) -> None:
    ctx.update_task(task, functools.partial(_check_later, ctx, still_in=task.status, at=at))


def _check_later(ctx: PipelineContext, current: Task, *, still_in: TaskStatus, at: datetime) -> Task | None:
    return schedule_check(current, at=at, now=ctx.clock()) if current.status is still_in else None


def _time_out(ctx: PipelineContext, task: Task, why: str, *, still_in: frozenset[TaskStatus]) -> str:
    """End the task TIMED_OUT — only if it is still where the reason says it is (a callback may have delivered the
    video meanwhile). A task its provider may still be making is watched afterwards, so a late video is kept."""
    time_out = functools.partial(_timed_out, why=why, still_in=still_in, now=ctx.clock())
    return "timed-out" if ctx.update_task(task, time_out) else "skipped"


def _timed_out(current: Task, *, why: str, still_in: frozenset[TaskStatus], now: datetime) -> Task | None:
    if current.status not in still_in:
        return None
    watch = now + PROVIDERS[current.provider].output_retention if current.status in HOLDING_STATUSES else None
    return end(current, TaskStatus.TIMED_OUT, why=why, now=now, watch_until=watch)


def _check(ctx: PipelineContext, task: Task) -> str:
    now = ctx.clock()
    if task.status.is_terminal:
        if task.notified_at is None:
            return f"notify-{announce(ctx, task)}"
        return _watch_for_late_video(ctx, task, now)
    if task.lease_until is not None and task.lease_until > now:
        _reschedule(ctx, task, task.lease_until)
        return "leased"
    if task.status is TaskStatus.SUBMITTING:
        return _check_submitting(ctx, task, now)
    if task.status is TaskStatus.SUBMITTED:
        limit = timedelta(seconds=ctx.settings.max_provider_queue_seconds)
        why = f"{display_name(task.provider)} had not started the video {_minutes(limit)} after accepting it"
        return _ask_provider(ctx, task, now, limit, why)
    if task.status is TaskStatus.PROCESSING:
        limit = ctx.settings.render_limit(task)
        why = f"{display_name(task.provider)} did not finish the video within {_minutes(limit)} of starting it"
        return _ask_provider(ctx, task, now, limit, why)
    return _check_finishing(ctx, task, now)


def _minutes(span: timedelta) -> str:
    return f"{span.total_seconds() / 60:g} min"


def _check_submitting(ctx: PipelineContext, task: Task, now: datetime) -> str:
    """A submission whose call ended without an answer (or whose function died): the provider may have the task."""
    if (found := _find_lost_submission(ctx, task)) is not None:
        return f"found-{record_provider_news(ctx, task.task_id, found)}"
    # Its callback may come as late as the provider's queue and render allow.
    limit = ctx.settings.provider_fetch_window(task)
    give_up_at = task.status_since + limit
    if now >= give_up_at:
        why = (
            f"{display_name(task.provider)} never confirmed the submission within {_minutes(limit)}"
            " (its answer was lost and no callback came)"
        )
        return _time_out(ctx, task, why, still_in=frozenset({TaskStatus.SUBMITTING}))
    if ctx.provider_for(task).finds_by_task:
        give_up_at = min(give_up_at, now + timedelta(seconds=ctx.settings.poll_after_seconds))
    _reschedule(ctx, task, give_up_at)
    return "awaiting-callback"


def _find_lost_submission(ctx: PipelineContext, task: Task) -> ProviderJob | None:
    """The job a submission whose answer was lost made, if the provider can find it by our task id."""
    provider = ctx.provider_for(task)
    if not provider.finds_by_task:
        return None
    try:
        return provider.find_by_task(task.task_id)
    except ProviderError as error:
        logger.warning("looking up a submission with a lost answer failed", extra={"error": str(error)})
        return None


def _ask_provider(ctx: PipelineContext, task: Task, now: datetime, limit: timedelta, too_old_reason: str) -> str:
    """Ask the provider about a task with no recent news; time it out (its stage's clock ran out) only after this
    last look."""
    assert task.provider_task_id is not None
    recorded = False
    try:
        news = ctx.provider_for(task).fetch(task.provider_task_id)
    except ProviderError as error:
        logger.warning("provider status query failed", extra={"task_id": task.task_id, "error": str(error)})
        action = "provider-unavailable" if isinstance(error, ProviderTransientError) else "provider-error"
    else:
        # The record the poll read: a write conditioned on its version catches any change since (no second read).
        recorded = record_provider_news(ctx, task, news) == "recorded"
        action = f"news-{news.status.value.lower()}" if recorded else "no-news"
        if recorded or news.status in (ProviderJobStatus.SUCCEEDED, ProviderJobStatus.FAILED):
            return action  # moved on (a new stage, a new clock), or ended
    if now - task.status_since > limit:
        return _time_out(ctx, task, too_old_reason, still_in=frozenset({task.status}))
    _reschedule(ctx, task, now + timedelta(seconds=ctx.settings.poll_after_seconds))
    return action


def _watch_for_late_video(ctx: PipelineContext, task: Task, now: datetime) -> str:
    """A timed-out task whose provider may still deliver: ask it now and then, until it would have deleted the video."""
    if task.watch_until is None:
        return "skipped"
    if now >= task.watch_until:
        return _stop_watching(ctx, task, now)
    news: ProviderJob | None = None
    try:
        if task.provider_task_id:
            news = ctx.provider_for(task).fetch(task.provider_task_id)
        else:
            news = _find_lost_submission(ctx, task)
    except ProviderError as error:
        logger.warning("asking about a late video failed", extra={"error": str(error)})
    if news is not None and news.status is ProviderJobStatus.FAILED:
        return _stop_watching(ctx, task, now)
    if news is not None and record_provider_news(ctx, task, news) == "recorded":
        return "late-video"
    _reschedule(ctx, task, min(task.watch_until, now + LATE_VIDEO_CHECK_EVERY))
    return "watching"


def _stop_watching(ctx: PipelineContext, task: Task, now: datetime) -> str:
    """No late video can come any more (the provider failed it, or would have deleted it by now)."""
    ctx.update_task(task, functools.partial(_unwatched, now=now))
    return "watch-ended"


def _unwatched(current: Task, *, now: datetime) -> Task | None:
    return stop_watching(current, now=now) if current.watch_until else None


def _check_finishing(ctx: PipelineContext, task: Task, now: datetime) -> str:
    """OUTPUT_READY that finalize never picked up or whose copy waits for its retry, or FINALIZING whose copy died."""
    abandoned = functools.partial(_copy_abandoned, looked_at=task, now=now)
    if task.output_expires_at is not None and now >= task.output_expires_at:
        why = (
            f"the provider deleted its video before it could be copied ({task.finalize_attempts} attempts;"
            f" last: {task.reason})"
        )
        if not ctx.end_task(task, TaskStatus.FAILED, why, provided=abandoned):
            return "skipped"
        ctx.media.discard_partial_copies(ctx.settings.media_bucket, output_key(task))
        return "finalize-failed"
    if task.status is TaskStatus.FINALIZING and task.copy_retry_at is None:
        # The attempt stopped without a word (its function died or ran out of time): the next one after a backoff,
        # so a video that kills every copy does not keep the pipeline busy.
        retry_at = now + copy_backoff(task.finalize_attempts)
        back_off = functools.partial(_back_off_silent_copy, abandoned=abandoned, now=now, retry_at=retry_at)
        return "finalize-backoff" if ctx.update_task(task, back_off) else "skipped"
    if task.copy_retry_at is not None and task.copy_retry_at > now:
        _reschedule(ctx, task, task.copy_retry_at)
        return "finalize-waiting"
    hand_back = functools.partial(_hand_back_to_finalize, abandoned=abandoned, now=now)
    return "finalize-redriven" if ctx.update_task(task, hand_back) else "skipped"


def _copy_abandoned(current: Task, *, looked_at: Task, now: datetime) -> bool:
    """The same copy attempt the poller looked at, and nobody is copying now."""
    lease_free = current.lease_until is None or current.lease_until <= now
    return current.finalize_attempts == looked_at.finalize_attempts and lease_free


def _back_off_silent_copy(
    current: Task, *, abandoned: Callable[[Task], bool], now: datetime, retry_at: datetime
) -> Task | None:
    if not abandoned(current) or current.status is not TaskStatus.FINALIZING:
        return None
    attempt = current.finalize_attempts
    note = f"copy attempt {attempt} stopped without a word; trying again at {retry_at:%H:%M:%S} UTC"
    return schedule_copy_retry(current, retry_at=retry_at, why=note, now=now)


def _hand_back_to_finalize(current: Task, *, abandoned: Callable[[Task], bool], now: datetime) -> Task | None:
    if not abandoned(current):
        return None
    # A new version of an OUTPUT_READY record is a new stream record: finalize gets another go.
    if current.status is TaskStatus.FINALIZING:
        why = f"copy attempt {current.finalize_attempts} did not finish; handing it back to finalize"
        return hand_back_copy(current, why=why, now=now, check_at=now + FINALIZE_GRACE)
    if current.status is TaskStatus.OUTPUT_READY:
        return schedule_check(current, at=now + FINALIZE_GRACE, now=now)
    return None
