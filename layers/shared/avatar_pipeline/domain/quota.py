"""Admission by quota: how many tasks a provider account renders at once and how fast it takes submissions.

Pure decisions over a `ProviderQuota` record; the dispatcher (services/admission.py) stores them with versioned
writes, so two dispatchers never admit past the limit between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from avatar_pipeline.domain.models import ProviderQuota
from avatar_pipeline.providers.registry import display_name

# Our clock and the provider's see a submission a network round trip apart: counting each of ours a little longer
# than the provider's window keeps a late-arriving earlier request from making the provider count one too many.
WINDOW_MARGIN = 0.05


@dataclass(frozen=True)
class QuotaLimits:
    submissions_per_window: int
    window: timedelta
    renders_at_once: int

    @property
    def counted_window(self) -> timedelta:
        return self.window * (1 + WINDOW_MARGIN)

    def describe(self) -> str:
        per = "minute" if self.window == timedelta(minutes=1) else f"{self.window.total_seconds():g} s"
        renders = "render" if self.renders_at_once == 1 else "renders"
        submissions = "submission" if self.submissions_per_window == 1 else "submissions"
        return f"{self.renders_at_once} {renders} at once, {self.submissions_per_window} {submissions} a {per}"


@dataclass(frozen=True)
class Wait:
    """Why nothing can be admitted now, and until when (None: until one of the provider's renders finishes)."""

    reason: str
    until: datetime | None


def _recent(quota: ProviderQuota, limits: QuotaLimits, now: datetime) -> list[datetime]:
    return sorted(moment for moment in quota.recent if moment > now - limits.counted_window)


def wait_before_admitting(quota: ProviderQuota, limits: QuotaLimits, now: datetime) -> Wait | None:
    """None when one more task may go to the provider now; otherwise what it waits for."""
    name = display_name(quota.provider)
    if quota.paused_until is not None and quota.paused_until > now:
        return Wait(f"{name} asked us to slow down (rate limited)", quota.paused_until)
    if len(quota.holders) >= limits.renders_at_once:
        return Wait(f"all {limits.renders_at_once} of {name}'s render slots are in use", None)
    recent = _recent(quota, limits, now)
    if len(recent) >= limits.submissions_per_window:
        # One more fits once the oldest of the last `submissions_per_window` admissions has left the window.
        until = recent[-limits.submissions_per_window] + limits.counted_window
        return Wait(f"{name} takes {limits.submissions_per_window} submissions per window", until)
    return None


def admitting(quota: ProviderQuota, task_id: str, limits: QuotaLimits, now: datetime) -> ProviderQuota:
    """The record once `task_id` is admitted: it holds a render slot and counts as a submission."""
    recent = [*_recent(quota, limits, now), now][-limits.submissions_per_window :]
    paused = quota.paused_until if quota.paused_until is not None and quota.paused_until > now else None
    return quota.model_copy(
        update={
            "holders": {**quota.holders, task_id: now},
            "recent": recent,
            "paused_until": paused,
            "version": quota.version + 1,
        }
    )


def releasing(quota: ProviderQuota, task_ids: set[str]) -> ProviderQuota | None:
    """The record without these holders; None when none of them holds a slot (nothing to write)."""
    if not task_ids & quota.holders.keys():
        return None
    holders = {task_id: since for task_id, since in quota.holders.items() if task_id not in task_ids}
    return quota.model_copy(update={"holders": holders, "version": quota.version + 1})


def pausing(quota: ProviderQuota, until: datetime, *, releasing_task: str) -> ProviderQuota:
    """The provider turned a submission away (429): it gives its slot back and nothing is sent before `until`."""
    holders = {task_id: since for task_id, since in quota.holders.items() if task_id != releasing_task}
    paused = max(until, quota.paused_until) if quota.paused_until is not None else until
    return quota.model_copy(update={"holders": holders, "paused_until": paused, "version": quota.version + 1})


def waking(quota: ProviderQuota, at: datetime, now: datetime) -> ProviderQuota | None:
    """The record with a wake-up scheduled at `at`; None when one at or before it is already coming."""
    if quota.wake_at is not None and now < quota.wake_at <= at:
        return None
    return quota.model_copy(update={"wake_at": at, "version": quota.version + 1})


def budget_day(now: datetime) -> str:
    """The UTC day a spend limit counts within."""
    return now.date().isoformat()


def ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"
