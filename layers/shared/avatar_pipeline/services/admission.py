"""Pairs wait in our own line until their provider account's quota has room; the dispatcher sends them, in order.

A provider account renders a few videos at once and takes a few submissions a minute; what is sent beyond that waits
at the provider while our clocks run, or is refused. So a checked pair becomes a QUEUED task (not sent, not paid)
with its place in its provider's line, and the dispatcher admits the first in line whenever the provider's quota
record has a free render slot and room in its submission window — admission is one transaction over the task, the
quota record and (with a spend limit) the day's spend, so no two dispatchers ever admit past a limit. A task gives its
slot back when it leaves the provider (the dispatcher runs on that change in the table's stream), so a render that
finishes lets the next pair in at once.

Spill-over: when a line has been empty with room to spare while another provider's line has a task that waited
there longer than the spill-over time (and this provider is among its failover targets), that task moves to this
line, before either provider was sent it — a task is only ever at one provider.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.exceptions import OrphanedChildLoggerError

from avatar_pipeline.domain.errors import (
    ProviderConfigError,
    ProviderError,
    ProviderOutcomeUnknownError,
    ProviderTransientError,
)
from avatar_pipeline.domain.model_choice import prompt_left_out, request_fields, unrunnable
from avatar_pipeline.domain.models import ProviderName, ProviderQuota, SubmissionRequest, Task, TaskStatus
from avatar_pipeline.domain.pricing import estimate_cost
from avatar_pipeline.domain.quota import (
    Wait,
    admitting,
    budget_day,
    ordinal,
    pausing,
    releasing,
    wait_before_admitting,
    waking,
)
from avatar_pipeline.domain.task_changes import (
    back_in_line,
    claim_submission,
    explain,
    mark_answer_lost,
    move_to_line,
    record_news,
)
from avatar_pipeline.observability import working_on
from avatar_pipeline.ports import Charge, ConflictError, SpendLimitReachedError
from avatar_pipeline.providers.registry import PROVIDERS, display_name
from avatar_pipeline.services.context import MAX_WRITE_ATTEMPTS, PipelineContext

logger = Logger(child=True)

# Longer than a submission's worst case (the time budget it starts with): once it has passed, the call that held the
# claim is over, and the poller treats its outcome as unknown (never resending it).
SUBMIT_LEASE = timedelta(seconds=240)
# A submission is started only with time for its worst case (3 attempts with timeouts and backoff, at each of two
# providers when failing over): killed mid-POST, a submission's outcome would be unknown.
SUBMIT_TIME_BUDGET = timedelta(seconds=200)
# A provider that turns the same task away this often (each time pausing its line for a window or its Retry-After)
# is not coming back for it soon: the task fails, explained, rather than cycle for ever (its history would outgrow the
# table's item size).
MAX_SUBMIT_ATTEMPTS = 100
# Tasks read from the head of a line per look: the index may still show a few that were just admitted.
HEAD_LOOKAHEAD = 10

SubmitAction = Literal["submitted", "requeued", "failed", "unknown"]


@dataclass
class DispatchReport:
    actions: Counter[str] = field(default_factory=Counter)
    # Why the line stopped moving, when it did with tasks still in it.
    waiting: str | None = None


def line_note(ctx: PipelineContext, provider: ProviderName, ahead: int, now: datetime) -> str:
    """Where a task stands in its provider's line, for its reason: '3rd in line for WaveSpeed (...)'."""
    limits = ctx.settings.quota_limits(provider)
    note = f"{ordinal(ahead + 1)} in line for {display_name(provider)} ({limits.describe()})"
    limit = ctx.settings.daily_spend_limit_usd
    if limit and ctx.tasks.spent_on(budget_day(now)) >= limit:
        note += f"; today's spend limit of ${limit} is reached: nothing more is sent before 00:00 UTC"
    return note


def release(ctx: PipelineContext, provider: ProviderName, task_ids: set[str]) -> None:
    """These tasks left `provider` (so the stream said): their render slots are free — unless a task was admitted
    again since (turned away, then sent once more), which a late or repeated stream record must not undo."""
    for _ in range(MAX_WRITE_ATTEMPTS):
        quota = ctx.tasks.get_quota(provider)
        # Read after the quota: an admission between the two changes the quota's version, and the write below fails.
        gone = {task_id for task_id in task_ids if not _holds_slot(ctx, task_id, provider)}
        freed = releasing(quota, gone) if quota else None
        if quota is None or freed is None:
            return
        try:
            ctx.tasks.save_quota(freed, expected=quota)
        except ConflictError:
            continue
        logger.info("render slots released", extra={"provider": provider, "task_ids": sorted(task_ids)})
        return
    raise ConflictError(f"the quota of {provider} kept changing; giving up this release")


def reconcile(ctx: PipelineContext, provider: ProviderName) -> int:
    """Drop holders that are no longer at the provider (a release whose stream record was lost); returns how many."""
    quota = ctx.tasks.get_quota(provider)
    if quota is None:
        return 0
    gone = {task_id for task_id in quota.holders if not _holds_slot(ctx, task_id, provider)}
    if gone:
        release(ctx, provider, gone)
    return len(gone)


def _holds_slot(ctx: PipelineContext, task_id: str, provider: ProviderName) -> bool:
    task = ctx.tasks.get(task_id)
    if task is None or not task.holds_render_slot or task.provider != provider:
        return False
    if task.status is TaskStatus.SUBMITTING and task.lease_until is None:
        # A submission whose answer was lost: the provider may be rendering it, or never got it. After a render's
        # longest time its slot goes back, so a few lost answers cannot stop the line for hours (should the provider
        # have it after all, it queues one more on its side); the task is still waited for.
        return ctx.clock() - task.status_since <= ctx.settings.render_limit(task)
    return True


def dispatch(
    ctx: PipelineContext,
    provider: ProviderName,
    time_left: Callable[[], timedelta],
    joined: Collection[str] = (),
) -> DispatchReport:
    """Send the first tasks of `provider`'s line for as long as its quota (and the spend limit) has room. `joined`:
    tasks the stream says just joined the line, which the line's index may not show yet."""
    report = DispatchReport()
    limits = ctx.settings.quota_limits(provider)
    conflicts = 0
    while time_left() >= SUBMIT_TIME_BUDGET:
        working_on(None)  # the line's own reads are no task's
        now = ctx.clock()
        stored = ctx.tasks.get_quota(provider)
        quota = stored or ProviderQuota(provider=provider)
        wait = wait_before_admitting(quota, limits, now)
        if wait is not None:
            if ctx.tasks.queue_head(provider, 1):
                report.waiting = wait.reason
                _wake_when_over(ctx, quota, stored, wait, now)
            break
        task = _first_in_line(ctx, provider, joined) or _spill_over_to(ctx, provider, now)
        if task is None:
            break
        working_on(task.job, task.task_id)
        charge = _charge_for(ctx, task, now)
        if ended := _end_if_never_sendable(ctx, task, charge):
            report.actions[ended] += 1
            continue
        claimed = claim_submission(
            task,
            why=f"{display_name(provider)} has room ({limits.describe()}): sending it",
            now=now,
            lease_until=now + SUBMIT_LEASE,
            charged_on=charge.day if charge else None,
        )
        try:
            ctx.tasks.admit(
                claimed,
                expected=task,
                quota=admitting(quota, task.task_id, limits, now),
                expected_quota=stored,
                charge=charge,
            )
        except ConflictError:
            conflicts += 1
            if conflicts >= MAX_WRITE_ATTEMPTS:
                break  # another dispatcher is admitting from this line: it carries on
            continue
        except SpendLimitReachedError:
            assert charge is not None
            report.waiting = f"today's spend limit of ${charge.limit} is reached"
            _hold_for_spend_limit(ctx, task, charge)
            break
        report.actions[f"submit-{submit_claimed(ctx, claimed)}"] += 1
    else:
        # Out of time with room left: another invocation carries on at once, rather than the poller in a minute.
        if ctx.tasks.queue_head(provider, 1):
            ctx.waker.wake(provider, ctx.clock())
            report.waiting = "this invocation ran out of time; the line goes on in the next"
    working_on(None)
    return report


def _first_in_line(ctx: PipelineContext, provider: ProviderName, joined: Collection[str]) -> Task | None:
    head = ctx.tasks.queue_head(provider, HEAD_LOOKAHEAD)
    for task_id in head:
        if (task := _waiting_for(ctx, task_id, provider)) is not None:
            return task
    # The index is updated after the write the stream reported: a task that just joined may not be in it yet (the
    # tasks it does show joined earlier).
    late = [task for task_id in joined if task_id not in head and (task := _waiting_for(ctx, task_id, provider))]
    return min(late, key=lambda task: (task.queued_at or task.created_at, task.task_id), default=None)


def _waiting_for(ctx: PipelineContext, task_id: str, provider: ProviderName) -> Task | None:
    task = ctx.tasks.get(task_id)
    return task if task is not None and task.status is TaskStatus.QUEUED and task.provider == provider else None


def _spill_over_to(ctx: PipelineContext, target: ProviderName, now: datetime) -> Task | None:
    """The first task that has waited long enough in another provider's line (tried in the registry's order), moved
    to `target`'s line; None when there is none."""
    for source in PROVIDERS.others(target):
        if moved := _spill_over(ctx, source, target, now):
            return moved
    return None


def _spill_over(ctx: PipelineContext, source: ProviderName, target: ProviderName, now: datetime) -> Task | None:
    """The first task of `source`'s line that has waited past the spill-over time and may fail over, moved to
    `target`'s line (the caller's: empty, with room); None when there is none."""
    after = timedelta(seconds=ctx.settings.spill_over_after_seconds)
    if not after or not ctx.settings.may_fail_over_to(target):
        return None
    for task_id in ctx.tasks.queue_head(source, HEAD_LOOKAHEAD):
        task = ctx.tasks.get(task_id)
        if task is None or task.status is not TaskStatus.QUEUED or task.provider != source:
            continue
        assert task.queued_at is not None
        waited = now - task.queued_at
        if waited < after:
            return None  # the rest of the line joined later
        if target not in task.targets_ahead or task.failed_over_from is not None or not _runs(target, task):
            continue
        if not _configured(ctx, target):
            return None
        why = (
            f"waited {_duration(waited)} in line for {display_name(source)}; {display_name(target)} has room:"
            " moved to its line (spill-over)"
        )
        moved = ctx.update_task(task, functools.partial(_spill, ctx, source=source, target=target, why=why))
        if moved is not None:
            logger.info("spilled over", extra={"task_id": task.task_id, "from": source, "to": target})
            return moved
    return None


def _spill(ctx: PipelineContext, current: Task, *, source: ProviderName, target: ProviderName, why: str) -> Task | None:
    if current.status is not TaskStatus.QUEUED or current.provider != source:
        return None
    return _moved_to(ctx, current, target, why)


def _moved_to(ctx: PipelineContext, task: Task, other: ProviderName, why: str) -> Task:
    """`task`, moved to `other`'s line at the same place, with that provider's cost — counted against the
    spend limit when it is admitted there, even if the first provider's already was (a spend limit may count too
    much, never too little)."""
    seconds = (task.audio_ms or 0) / 1000
    left_out = prompt_left_out(task, other)
    return move_to_line(
        task,
        other,
        why=f"{why}; {left_out}" if left_out else why,
        now=ctx.clock(),
        estimated_cost_usd=estimate_cost(other, task.model, seconds, ctx.settings, task.options),
    )


def _duration(span: timedelta) -> str:
    seconds = round(span.total_seconds())
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"


def _charge_for(ctx: PipelineContext, task: Task, now: datetime) -> Charge | None:
    limit = ctx.settings.daily_spend_limit_usd
    if not limit or task.charged_on is not None:
        return None  # no limit, or counted at an earlier admission (the provider turned that one away)
    return Charge(day=budget_day(now), amount=Decimal(task.estimated_cost_usd or "0"), limit=limit)


def _end_if_never_sendable(ctx: PipelineContext, task: Task, charge: Charge | None) -> str | None:
    """End a task that can never be sent as it stands, and say so ("not-allowed", "too-costly"); None for the rest."""
    if beyond := _beyond_operator_limits(ctx, task):
        _fail_beyond_limits(ctx, task, beyond)
        return "not-allowed"
    if charge is not None and charge.amount > charge.limit:
        _fail_never_fits(ctx, task, charge)
        return "too-costly"
    return None


def _beyond_operator_limits(ctx: PipelineContext, task: Task) -> str | None:
    """Why the stack may no longer send this task (it was queued under looser settings; intake refuses such pairs
    now), or None. Checked at admission, so a redeploy that tightens the limits holds for the pairs in line too."""
    settings = ctx.settings
    if task.model not in settings.allowed_models:
        return f"its model {task.model} is no longer allowed (AllowedModels: {', '.join(settings.allowed_models)})"
    if task.provider not in settings.allowed_providers:
        allowed = ", ".join(settings.allowed_providers)
        return f"its provider {task.provider} is no longer allowed (AllowedProviders: {allowed})"
    if task.estimated_cost_usd is not None and not settings.within_cost_limit(Decimal(task.estimated_cost_usd)):
        return (
            f"its estimated cost of ${task.estimated_cost_usd} is more than the per-pair cost limit of"
            f" ${settings.max_cost_per_pair_usd} (MaxCostPerPairUsd)"
        )
    return None


def _fail_beyond_limits(ctx: PipelineContext, task: Task, beyond: str) -> None:
    ctx.end_task(
        task,
        TaskStatus.FAILED,
        f"not sent: {beyond}",
        provided=lambda current: current.status is TaskStatus.QUEUED,
    )
    logger.warning("task beyond the stack's limits; failed unsent", extra={"task_id": task.task_id, "why": beyond})


def _fail_never_fits(ctx: PipelineContext, task: Task, charge: Charge) -> None:
    """A task that joined the line before the limit was set below its cost (intake rejects such pairs): admitting it
    would pass the limit, and holding it would stop its line for good."""
    why = (
        f"its estimated cost of ${charge.amount} is more than the daily spend limit of ${charge.limit},"
        " so it could never be sent"
    )
    ctx.end_task(
        task,
        TaskStatus.FAILED,
        why,
        provided=lambda current: current.status is TaskStatus.QUEUED and current.charged_on is None,
    )
    logger.warning("task costs more than the daily spend limit; failed", extra={"task_id": task.task_id})


def _hold_for_spend_limit(ctx: PipelineContext, task: Task, charge: Charge) -> None:
    """The first in line says why the line stands still; an alarm watches the metric."""
    ctx.meter.record_spend_limit_reached(task.provider)
    note = (
        f"first in line for {display_name(task.provider)}; today's spend limit of ${charge.limit} is reached:"
        " nothing more is sent before 00:00 UTC"
    )
    logger.warning("spend limit reached; the line waits", extra={"provider": task.provider, "limit": str(charge.limit)})
    ctx.update_task(task, functools.partial(_say_why_in_line, ctx, why=note))


def _say_why_in_line(ctx: PipelineContext, current: Task, *, why: str) -> Task | None:
    if current.status is not TaskStatus.QUEUED or current.reason == why:
        return None
    return explain(current, why=why, now=ctx.clock())


def _wake_when_over(
    ctx: PipelineContext, quota: ProviderQuota, stored: ProviderQuota | None, wait: Wait, now: datetime
) -> None:
    """A wait with an end no event marks (a rate window, a pause): ask to be woken then, once per moment."""
    if wait.until is None:
        return  # a finishing render is a change in the table, which wakes the dispatcher itself
    scheduled = waking(quota, wait.until, now)
    if scheduled is None:
        return
    try:
        ctx.tasks.save_quota(scheduled, expected=stored)
    except ConflictError:
        return  # someone else changed the record: they are at work on this line
    ctx.waker.wake(quota.provider, wait.until)


def webhook_url(ctx: PipelineContext, task: Task) -> str:
    base = ctx.settings.webhook_base_url.rstrip("/")
    if not base:
        raise ProviderConfigError("WEBHOOK_BASE_URL is not configured, so the provider could not call back")
    # The token is checked before anything else, for every provider: signed callbacks (WaveSpeed) are then also bound
    # to their task, which the provider's signature does not cover.
    token = ctx.callback_tokens.token_for(task.provider, task.task_id)
    return f"{base}/webhooks/{task.provider}?task_id={task.task_id}&token={token}"


def submit_claimed(ctx: PipelineContext, claimed: Task) -> SubmitAction:
    """Send a task whose submission claim we hold to its provider, and record what came of it.

    The claim (SUBMITTING with a lease) was written before this call, so a crash here can never lead to a blind
    second POST: only an answer proving the provider did not take the task makes sending it again safe.
    """
    working_on(claimed.job, claimed.task_id)
    assert claimed.image is not None
    assert claimed.audio is not None
    name = display_name(claimed.provider)
    # The provider may fetch its inputs until its queue's and its render's clocks have run out.
    expiry = ctx.settings.input_url_expiry_seconds(claimed)
    try:
        try:
            provider = ctx.provider_for(claimed)
            inputs = (claimed.image, claimed.audio, *([claimed.mask] if claimed.mask else []))
            changed = [obj.key for obj in inputs if not ctx.media.unchanged(obj)]
            if changed:
                return _fail_inputs_changed(ctx, claimed, changed)
            fetch_until = ctx.clock() + ctx.settings.provider_fetch_window(claimed)
            links = [ctx.media.presigned_get(obj, expiry) for obj in inputs]
            _warn_if_links_die_early(claimed, min(link.expires_at for link in links), fetch_until)
            image, audio, *mask = links
            model = PROVIDERS.model(claimed.provider, claimed.model)
            request = SubmissionRequest(
                task_id=claimed.task_id,
                image_url=image.url,
                audio_url=audio.url,
                prompt=claimed.prompt if model.takes_prompt else None,
                model_id=model.model_id,
                webhook_url=webhook_url(ctx, claimed),
                options=request_fields(model, claimed.options, (claimed.audio_ms or 0) / 1000),
                mask_url=mask[0].url if mask else None,
            )
        except ProviderError:
            raise
        except Exception as error:
            # Nothing has been sent yet (e.g. the secret could not be read), so trying again later is safe.
            raise ProviderTransientError(f"could not prepare the submission: {error}") from error
        accepted = provider.submit(request)
    except ProviderTransientError as error:
        return _back_in_line(ctx, claimed, error)
    except ProviderOutcomeUnknownError as error:
        # The provider may have taken it: it keeps its render slot, and we wait for its callback (which names our
        # task), never POST again; where the provider can find the job by our task id, the poller looks it up.
        look_again_at = ctx.clock() + ctx.settings.provider_fetch_window(claimed)
        if provider.finds_by_task:
            look_again_at = min(look_again_at, ctx.clock() + timedelta(seconds=ctx.settings.poll_after_seconds))
        note = f"{name} did not answer the submission ({error}); waiting for its callback, not resending"
        ctx.update_task(claimed, functools.partial(_answer_lost, ctx, why=note, check_at=look_again_at))
        logger.warning("submission outcome unknown", extra={"task_id": claimed.task_id})
        return "unknown"
    except ProviderError as error:
        # Refused input (1xxx), bad credentials or a broken contract: retrying cannot help.
        code = f" (code {error.code})" if error.code else ""
        # A configuration error is ours (no key, no callback URL, a key the provider does not know): say so.
        verdict = "cannot be used as configured" if isinstance(error, ProviderConfigError) else "refused the submission"
        why = f"{name} {verdict}{code}: {error}"
        ctx.end_task(claimed, TaskStatus.FAILED, why, provided=lambda task: task.status is TaskStatus.SUBMITTING)
        logger.error("provider refused the submission", extra={"task_id": claimed.task_id, "reason": why})
        return "failed"
    why = f"{name} accepted it as {accepted.provider_task_id}"
    ctx.update_task(
        claimed, functools.partial(_record_acceptance, ctx, why=why, provider_task_id=accepted.provider_task_id)
    )
    ctx.meter.record_submission(claimed.provider, claimed.estimated_cost_usd)
    logger.info("submitted", extra={"task_id": claimed.task_id, "provider_task_id": accepted.provider_task_id})
    return "submitted"


def _record_acceptance(ctx: PipelineContext, task: Task, *, why: str, provider_task_id: str) -> Task | None:
    if task.status is not TaskStatus.SUBMITTING:
        return None  # a callback already moved it on, and recorded the provider's id with it
    now = ctx.clock()
    check_at = now + timedelta(seconds=ctx.settings.poll_after_seconds)
    return record_news(
        task, TaskStatus.SUBMITTED, why=why, now=now, provider_task_id=provider_task_id, check_at=check_at
    )


def _answer_lost(ctx: PipelineContext, task: Task, *, why: str, check_at: datetime) -> Task | None:
    if task.status is not TaskStatus.SUBMITTING:
        return None
    return mark_answer_lost(task, why=why, now=ctx.clock(), check_at=check_at)


def _invocation_id() -> str | None:
    """The Lambda invocation this runs in: the request id the handler's Logger carries (Powertools adds it with
    `inject_lambda_context`). None outside Lambda (a script, a unit test) or before a handler's Logger exists."""
    try:
        request_id = logger.get_current_keys().get("function_request_id")
    except OrphanedChildLoggerError:
        return None
    return str(request_id) if request_id else None


class _OncePerInvocation:
    """True the first time it is asked in each Lambda invocation; where no invocation is known, every time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: str | None = None

    def first(self) -> bool:
        invocation = _invocation_id()
        if invocation is None:
            return True
        with self._lock:
            if invocation == self._last:
                return False
            self._last = invocation
            return True


_LINKS_DIE_EARLY_WARNING = _OncePerInvocation()


def _warn_if_links_die_early(claimed: Task, links_end: datetime, fetch_until: datetime) -> None:
    """Input links that stop working before the provider's fetch window ends (signed with short-lived credentials,
    or a window longer than SigV4's 7 days) may be dead when the provider gets to them. The submission goes ahead
    (the provider usually fetches at once); the warning is given once per invocation, as every link signed in it
    shares its credentials."""
    if links_end >= fetch_until or not _LINKS_DIE_EARLY_WARNING.first():
        return
    logger.warning(
        "input links may stop working before the provider fetches them",
        extra={
            "task_id": claimed.task_id,
            "links_work_until": links_end.isoformat(),
            "provider_may_fetch_until": fetch_until.isoformat(),
            "hint": "sign links with the link signer's long-term key (LINK_SIGNER_SECRET_ID), or shorten the"
            " provider's queue and render times (MAX_PROVIDER_QUEUE_SECONDS + MAX_RENDER_SECONDS)",
        },
    )


def _fail_inputs_changed(ctx: PipelineContext, claimed: Task, keys: list[str]) -> SubmitAction:
    """What was checked is not what the provider would download: never send (and pay for) unchecked files."""
    why = (
        f"{' and '.join(keys)} changed or was deleted while the pair waited in line; not sent (an upload that"
        " replaced it is a pair of its own)"
    )
    ctx.end_task(claimed, TaskStatus.FAILED, why, provided=lambda task: task.status is TaskStatus.SUBMITTING)
    logger.warning("inputs changed while queued; not sent", extra={"task_id": claimed.task_id, "keys": keys})
    return "failed"


def _back_in_line(ctx: PipelineContext, claimed: Task, error: ProviderTransientError) -> SubmitAction:
    """The provider proved it did not take the task (429, 503, no connection): its provider's line pauses (as long
    as the provider asked, else one rate window) and the task goes back to its place — in its first failover
    target's line, when it has one (a provider the job and the operator allow that accepts these files). It is never
    at two."""
    now = ctx.clock()
    limits = ctx.settings.quota_limits(claimed.provider)
    pause = timedelta(seconds=error.retry_after) if error.retry_after is not None else limits.window
    for _ in range(MAX_WRITE_ATTEMPTS):
        stored = ctx.tasks.get_quota(claimed.provider)
        quota = stored or ProviderQuota(provider=claimed.provider)
        try:
            ctx.tasks.save_quota(pausing(quota, now + pause, releasing_task=claimed.task_id), expected=stored)
            break
        except ConflictError:
            continue
    other = _failover_target(ctx, claimed)
    name = display_name(claimed.provider)
    if other is None and claimed.submit_attempts >= MAX_SUBMIT_ATTEMPTS:
        why = (
            f"{name} turned it away {claimed.submit_attempts} times since it was first sent (last: {error});"
            " it was never taken, so nothing was paid: upload the files again to try again"
        )
        ctx.end_task(claimed, TaskStatus.FAILED, why, provided=lambda task: task.status is TaskStatus.SUBMITTING)
        logger.error("provider kept turning the submission away; failed", extra={"task_id": claimed.task_id})
        return "failed"
    if other is not None:
        why = f"{name} is unavailable ({error}); failing over to {display_name(other)}"
    else:
        why = f"{name} turned it away ({error}); back to its place in line, sent after {now + pause:%H:%M:%S} UTC"
    ctx.update_task(claimed, functools.partial(_requeue, ctx, provider=claimed.provider, other=other, why=why))
    logger.warning("provider turned the submission away; back in line", extra={"failover_to": other})
    return "requeued"


def _requeue(
    ctx: PipelineContext, current: Task, *, provider: ProviderName, other: ProviderName | None, why: str
) -> Task | None:
    """Back in line (`provider`'s, or the `other`'s when failing over), if it is still being sent to `provider`."""
    if current.status is not TaskStatus.SUBMITTING or current.provider != provider:
        return None
    if other is not None:
        return _moved_to(ctx, current, other, why)
    return back_in_line(current, why=why, now=ctx.clock())


def _failover_target(ctx: PipelineContext, claimed: Task) -> ProviderName | None:
    """The provider a turned-away task moves to: the next of its failover targets (in the job's order of preference)
    that the operator still allows, still runs its model, and this function is configured for."""
    targets = (
        other for other in claimed.targets_ahead if ctx.settings.may_fail_over_to(other) and _runs(other, claimed)
    )
    return next((other for other in targets if _configured(ctx, other)), None)


def _runs(provider: ProviderName, task: Task) -> bool:
    """Whether `provider` (still) runs the task's model with its options: checked when the pair was, and again at a
    move, as a redeploy may have changed a provider's catalog since."""
    return not unrunnable(provider, task.model, task.options)


def _configured(ctx: PipelineContext, provider: ProviderName) -> bool:
    try:
        ctx.providers[provider]
    except Exception:  # not configured, or its secret cannot be read now
        logger.warning("the provider to move to is unavailable", extra={"provider": provider})
        return False
    return True


def on_line_changes(
    ctx: PipelineContext,
    released: dict[ProviderName, set[str]],
    lines: dict[ProviderName, set[str]],
    time_left: Callable[[], timedelta],
) -> DispatchReport:
    """Tasks left their provider (their slots are free) and lines changed or are due (with the tasks that joined
    them, if any): move every line concerned."""
    report = DispatchReport()
    for provider, task_ids in released.items():
        release(ctx, provider, task_ids)
    for provider in sorted(lines.keys() | released.keys()):
        moved = dispatch(ctx, provider, time_left, lines.get(provider, set()))
        report.actions.update(moved.actions)
        if moved.waiting:
            report.waiting = moved.waiting
            logger.info("line waits", extra={"provider": provider, "reason": moved.waiting})
    return report
