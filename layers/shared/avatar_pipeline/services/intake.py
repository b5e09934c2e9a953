"""Uploads in, paid submissions out: pairing, validation, the submission claim and the provider call."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from aws_lambda_powertools import Logger
from pydantic import ValidationError

from avatar_pipeline.config import Settings
from avatar_pipeline.domain.errors import InputGoneError
from avatar_pipeline.domain.model_choice import choose_model, prompt_left_out, unrunnable
from avatar_pipeline.domain.models import JobOptions, MediaRole, PairSlot, ProviderName, S3Object, Task, TaskStatus
from avatar_pipeline.domain.output_keys import key_problems, render, template_problems
from avatar_pipeline.domain.pairing import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    INBOX_PREFIX,
    MASK_SUFFIXES,
    consume,
    content_id,
    options_key,
    parse_inbox_key,
    remember_used,
    rival,
    with_upload,
)
from avatar_pipeline.domain.pricing import estimate_cost
from avatar_pipeline.domain.state_machine import begin
from avatar_pipeline.domain.task_changes import end, join_line
from avatar_pipeline.observability import working_on
from avatar_pipeline.ports import ConflictError
from avatar_pipeline.providers.registry import PROVIDERS, describe_model, display_name
from avatar_pipeline.services.admission import line_note
from avatar_pipeline.services.context import MAX_WRITE_ATTEMPTS, PipelineContext

if TYPE_CHECKING:
    from avatar_pipeline.domain.validation import PairReport

logger = Logger(child=True)

MAX_OPTIONS_BYTES = 64 * 1024
MASK_NAMING = f"a mask's file name ends in one of {', '.join(MASK_SUFFIXES)}"

UploadAction = Literal["ignored", "waiting", "duplicate", "rejected", "queued"]


@dataclass(frozen=True)
class UploadOutcome:
    action: UploadAction
    job: str | None = None
    task_id: str | None = None


def handle_upload(ctx: PipelineContext, upload: S3Object) -> UploadOutcome:
    """One object landed under inbox/: record it, and if it completes a pair, cut and submit one task."""
    entry = parse_inbox_key(upload.key)
    working_on(entry.job if entry else None)
    if entry is None:
        logger.info("not an inbox upload; ignored", extra={"key": upload.key})
        return UploadOutcome("ignored")
    if entry.kind == "options" or entry.kind == "mask":
        # Read when its pair completes; upload job.json (and a mask it names) before (or with) the media files.
        logger.info("job options noted", extra={"job": entry.job, "key": upload.key, "kind": entry.kind})
        return UploadOutcome("ignored", job=entry.job)
    now = ctx.clock()
    if entry.kind == "unsupported":
        reason = (
            f"{upload.key} is neither an image ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            f" nor an audio clip ({', '.join(sorted(AUDIO_EXTENSIONS))})"
        )
        return _reject_alone(ctx, entry.job, upload, reason, now)

    deadline = now + timedelta(seconds=ctx.settings.max_pair_wait_seconds)
    role = entry.kind
    rejected = _reject_rivals(ctx, entry.job, role, upload, now, deadline)
    if rejected is not None:
        return rejected
    stored, slot = ctx.update_slot(
        entry.job, lambda current: with_upload(current, entry.job, role, upload, now, deadline)
    )
    if slot is None:
        holds_it = stored is not None and any(upload.same_upload(half) for half in (stored.image, stored.audio))
        if stored is not None and stored.is_complete and holds_it:
            # A repeat of the event that completed the pair: the attempt that got it died before cutting it.
            return cut_pair(ctx, stored)
        logger.info("repeated or out-of-date upload event; nothing new", extra={"job": entry.job, "key": upload.key})
        return UploadOutcome("duplicate", job=entry.job)
    if not slot.is_complete:
        logger.info("waiting for the other half", extra={"job": entry.job, "key": upload.key})
        return UploadOutcome("waiting", job=entry.job)
    return cut_pair(ctx, slot)


def _reject_rivals(
    ctx: PipelineContext, job: str, role: MediaRole, upload: S3Object, now: datetime, deadline: datetime
) -> UploadOutcome | None:
    """A job takes one image and one audio clip: a second, differently named one rejects the job, naming both
    files, instead of guessing which was meant. Both are then used up; uploading the intended one again pairs it."""
    for _ in range(MAX_WRITE_ATTEMPTS):
        current = ctx.tasks.get_slot(job)
        held = rival(current, role, upload)
        if current is None or held is None:
            return None
        kind = "images" if role == "image" else "audio clips"
        why = (
            f"{held.key} and {upload.key} are two {kind} for job {job}; a job takes one image and one audio clip"
            f" — upload the one you mean again"
        )
        waiting = begin(
            content_id(job, held, upload),
            job,
            since=current.waiting_since or now,
            arrived=held.key,
            now=now,
            provider=ctx.settings.default_provider,
            model=ctx.settings.default_model,
            image=current.image,
            audio=current.audio,
        )
        rejected = end(waiting, TaskStatus.REJECTED, why=why, now=now)
        released = consume(current, [held], now, deadline)
        assert released is not None
        released = remember_used(released, role, upload)
        try:
            created = ctx.tasks.save_slot_and_create(released, expected=current, task=rejected)
        except ConflictError:
            continue
        logger.warning("two files of one role in a job; rejected", extra={"job": job, "reason": why})
        return UploadOutcome("rejected" if created else "duplicate", job=job, task_id=rejected.task_id)
    raise ConflictError(f"the slot of job {job} kept changing; giving up this attempt")


def cut_pair(ctx: PipelineContext, slot: PairSlot, *, last_chance: bool = False) -> UploadOutcome:
    """A complete slot becomes its one task: checked, and in its provider's line (the dispatcher sends it).

    The task is created in the same transaction that marks the slot's halves used, so a pair can neither be lost
    between the two writes nor cut twice. A pair whose bytes already made a task makes no new one — unless that
    task ended unsuccessfully and this is a new upload of the files (a retry by the user).
    """
    assert slot.image is not None
    assert slot.audio is not None
    halves = [slot.image, slot.audio]
    now = ctx.clock()
    deadline = now + timedelta(seconds=ctx.settings.max_pair_wait_seconds)
    task_id = _task_id_for(ctx, slot)
    working_on(slot.job, task_id)
    if task_id is None:
        ctx.update_slot(slot.job, lambda current: consume(current, halves, now, deadline) if current else None)
        logger.info("these files already made a task; nothing new to submit", extra={"job": slot.job})
        return UploadOutcome("duplicate", job=slot.job)
    try:
        task = _task_for_pair(ctx, slot, task_id, now=now)
    except InputGoneError as error:
        if not last_chance:
            # Overwritten (its newer version's event will complete the pair) or deleted (the poller decides at
            # the pairing deadline): no task from bytes that are no longer there.
            logger.info("an input changed before it could be checked; waiting", extra={"job": slot.job})
            return UploadOutcome("waiting", job=slot.job)
        task = _gone_task(ctx, slot, task_id, str(error), now)
    consumed = consume(slot, halves, now, deadline)
    assert consumed is not None
    try:
        created = ctx.tasks.save_slot_and_create(consumed, expected=slot, task=task)
    except ConflictError:
        # Another invocation changed the slot since we read it: it cut this pair, or a newer upload replaced a half
        # (then the newer pair is cut by whoever completes it).
        logger.info("the slot changed meanwhile; leaving the pair to its newer state", extra={"job": slot.job})
        return UploadOutcome("duplicate", job=slot.job)
    if not created:
        ctx.update_slot(slot.job, lambda current: consume(current, halves, now, deadline) if current else None)
        return UploadOutcome("duplicate", job=task.job, task_id=task.task_id)
    if task.status is TaskStatus.REJECTED:
        logger.warning("pair rejected", extra={"task_id": task.task_id, "reason": task.reason})
        return UploadOutcome("rejected", job=task.job, task_id=task.task_id)
    logger.info("queued", extra={"task_id": task.task_id, "reason": task.reason})
    return UploadOutcome("queued", job=task.job, task_id=task.task_id)


def _task_id_for(ctx: PipelineContext, slot: PairSlot) -> str | None:
    """The id of the task this pair should become, or None when it must not become one."""
    assert slot.image is not None
    assert slot.audio is not None
    task_id = content_id(slot.job, slot.image, slot.audio)
    existing = ctx.tasks.get(task_id)
    if existing is None:
        return task_id
    retryable = existing.status.is_terminal and existing.status is not TaskStatus.COMPLETED
    if not retryable or not (slot.image.sequencer and slot.audio.sequencer):
        return None  # in flight, done, or no way to tell a new upload from a repeated event
    occasion = f"{slot.image.sequencer}/{slot.audio.sequencer}"
    retry_id = content_id(slot.job, slot.image, slot.audio, occasion=occasion)
    return None if ctx.tasks.get(retry_id) else retry_id


def _reject_alone(ctx: PipelineContext, job: str, upload: S3Object, reason: str, now: datetime) -> UploadOutcome:
    waiting = begin(
        content_id(job, upload),
        job,
        since=now,
        arrived=upload.key,
        now=now,
        provider=ctx.settings.default_provider,
        model=ctx.settings.default_model,
    )
    task = end(waiting, TaskStatus.REJECTED, why=reason, now=now)
    if not ctx.tasks.create(task):
        return UploadOutcome("duplicate", job=job, task_id=task.task_id)
    logger.warning("upload rejected", extra={"task_id": task.task_id, "reason": reason})
    return UploadOutcome("rejected", job=job, task_id=task.task_id)


def _read_options(ctx: PipelineContext, job: str) -> tuple[JobOptions | None, str | None]:
    """The job's options (None when it has no job.json) and, when job.json is unusable, why."""
    key = options_key(job)
    try:
        raw = ctx.media.read_small_object(ctx.settings.media_bucket, key, MAX_OPTIONS_BYTES)
    except ValueError as error:
        return None, f"job.json: {error}"
    if raw is None:
        return None, None
    try:
        return JobOptions.model_validate(json.loads(raw)), None
    except ValidationError as error:
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg']}" for e in error.errors())
        return None, f"job.json is not valid: {details}"
    except ValueError as error:
        return None, f"job.json is not valid JSON: {error}"
    except RecursionError:
        # Thousands of nested brackets fit in the size cap; the parser gives up rather than the pair being stuck.
        return None, "job.json is nested too deeply to read (it must be one flat JSON object)"


def _task_for_pair(ctx: PipelineContext, slot: PairSlot, task_id: str, *, now: datetime) -> Task:
    assert slot.image is not None
    assert slot.audio is not None
    image, audio = slot.image, slot.audio
    # job.json belongs to folder-style jobs; a same-stem pair (inbox/alice.jpg + inbox/alice.mp3) has none.
    in_folder = any((entry := parse_inbox_key(obj.key)) is not None and entry.in_folder for obj in (image, audio))
    found, options_problem = _read_options(ctx, slot.job) if in_folder else (None, None)
    options = found or JobOptions()
    preference = options.preference or (ctx.settings.default_provider,)
    provider = preference[0]
    waiting = begin(
        task_id,
        slot.job,
        since=slot.waiting_since or now,
        arrived="the pair's first file",
        now=now,
        provider=provider,
        model=choose_model(options, ctx.settings.default_model, provider),
        options=options.options,
        prompt=options.prompt,
        metadata=options.metadata,
        image=image,
        audio=audio,
    )
    problems = [options_problem] if options_problem else []
    # Nothing beyond what the operator allows: such a pair is never checked, sent nor paid for.
    refused = _not_allowed(ctx.settings, options, waiting)
    # Checked before anything is paid: where the video will go (S3 would refuse a longer key).
    video_key = render(options.output_path or ctx.settings.output_path_template, waiting) if not refused else ""
    problems += key_problems(video_key) if video_key else []
    if refused:
        return end(waiting, TaskStatus.REJECTED, why="; ".join(problems + refused), now=now)
    # Loaded once a pair is complete: a cold start on a pair's first half never loads Pillow and mutagen.
    from avatar_pipeline.domain.validation import validate_pair

    report = validate_pair(
        ctx.media.source(image), image, ctx.media.source(audio), audio, provider, waiting.model, waiting.options
    )
    logger.info(
        "inputs checked",
        extra={"image_bytes_read": report.image_bytes_read, "audio_bytes_read": report.audio_bytes_read},
    )
    mask, mask_problems = _checked_mask(ctx, waiting)
    problems += report.problems + mask_problems
    if problems:
        return end(waiting, TaskStatus.REJECTED, why="; ".join(problems), now=now)
    assert report.audio is not None  # accepted, so it was read
    seconds = report.audio.duration_seconds
    cost = estimate_cost(provider, waiting.model, seconds, ctx.settings, waiting.options)
    if not ctx.settings.within_cost_limit(cost):
        why = (
            f"its estimated cost of ${cost} is more than the per-pair cost limit of"
            f" ${ctx.settings.max_cost_per_pair_usd} (MaxCostPerPairUsd)"
        )
        return end(waiting, TaskStatus.REJECTED, why=why, now=now)
    limit = ctx.settings.daily_spend_limit_usd
    if limit and cost > limit:
        why = f"its estimated cost of ${cost} is more than the daily spend limit of ${limit}, so it could never be sent"
        return end(waiting, TaskStatus.REJECTED, why=why, now=now)
    targets, passed_over = _failover_targets(ctx, options, waiting, report, seconds)
    paired = f"paired {image.key} with {audio.key}" + (
        "" if found or not in_folder else f" (no {options_key(slot.job)}: default options)"
    )
    place = line_note(ctx, provider, ctx.tasks.queue_length(provider), now)
    notes = [paired, f"{describe_model(provider, waiting.model, waiting.options)}, {place}", *passed_over]
    if left_out := prompt_left_out(waiting, provider):
        notes.append(left_out)
    return join_line(
        waiting,
        why="; ".join(notes),
        now=now,
        audio_ms=round(seconds * 1000),
        failover_targets=targets,
        estimated_cost_usd=cost,
        mask=mask,
        output_key=video_key,
    )


def _checked_mask(ctx: PipelineContext, task: Task) -> tuple[S3Object | None, list[str]]:
    """The mask image the job's options name (for a model with a mask option), checked as the image is; and why it
    cannot be used. (None, []) when the job names none."""
    model = PROVIDERS.model(task.provider, task.model)
    option = next((o.name for o in model.options if o.kind == "mask" and o.name in task.options), None)
    if option is None:
        return None, []
    file_name = str(task.options[option])
    key = f"{INBOX_PREFIX}{task.job}/{file_name}"
    entry = parse_inbox_key(key)
    if entry is None or entry.kind != "mask":
        return None, [f'options.{option} is "{file_name}": {MASK_NAMING}']
    mask = ctx.media.describe(ctx.settings.media_bucket, key)
    if mask is None:
        return None, [f"options.{option} names {key}, which is not there: upload the mask before the pair"]
    from avatar_pipeline.domain.validation import validate_mask

    return mask, validate_mask(ctx.media.source(mask), mask, task.provider, task.model, task.options)


def _failover_targets(
    ctx: PipelineContext, options: JobOptions, task: Task, report: PairReport, seconds: float
) -> tuple[tuple[ProviderName, ...], list[str]]:
    """Where the task may move when its provider provably does not take it, in the order tried: the rest of the job's
    list of providers, or (when failover is on) every other provider offering its model; each one the operator
    allows, that runs the model with the job's options, takes these very files, within the per-pair cost limit.
    Also why a provider the job listed is passed over."""
    from avatar_pipeline.domain.validation import fits

    assert task.image is not None
    assert task.audio is not None
    settings = ctx.settings
    preference = options.preference or ()
    listed = len(preference) > 1
    wants_failover = settings.allow_failover if options.failover is None else options.failover
    candidates = preference[1:] if listed else PROVIDERS.others(task.provider, task.model)
    targets: list[ProviderName] = []
    passed_over: list[str] = []
    for other in candidates if wants_failover or listed else ():
        why_not: str | None = None
        if not settings.may_fail_over_to(other):
            why_not = "the stack does not allow it"
        elif cannot := unrunnable(other, task.model, task.options):
            why_not = "; ".join(cannot)
        elif not fits(report, task.image, task.audio, other, task.model, task.options):
            why_not = "its limits do not fit these files"
        elif not settings.within_cost_limit(estimate_cost(other, task.model, seconds, settings, task.options)):
            why_not = "it would cost more than the per-pair cost limit"
        if why_not is None:
            targets.append(other)
        elif listed or options.failover:
            # Named by the job (in its list, or by asking for failover): it is told where the task will never go.
            passed_over.append(f"never moves to {display_name(other)}: {why_not}")
    return tuple(targets), passed_over


def _not_allowed(settings: Settings, options: JobOptions, task: Task) -> list[str]:
    """What job.json asks for that the operator does not allow (each naming the stack parameter and what it allows),
    or that its provider cannot run (each naming the model)."""
    refused = unrunnable(task.provider, task.model, task.options)
    if refused and options.model is None:
        chosen = f"job.json's mode {options.mode!r} means" if options.mode else "the default model (DefaultModel) is"
        refused = [f"{chosen} {task.model}: {refused[0]}", *refused[1:]]
    if not refused and task.model not in settings.allowed_models:
        # Asked for, or the provider's Kling of the default model's tier (fal runs no Kling v1).
        chosen = (
            f'job.json asks for model "{task.model}"'
            if options.model or options.mode
            else f'{display_name(task.provider)} runs the default model {settings.default_model} as "{task.model}" only'
        )
        refused.append(
            f"{chosen}, which this stack does not allow (AllowedModels: {', '.join(settings.allowed_models)})"
        )
    if options.output_path is not None and (wrong := template_problems(options.output_path)):
        refused.append(f"job.json's output_path {options.output_path!r} cannot be used: {'; '.join(wrong)}")
    for provider in options.preference or ():
        if provider not in settings.allowed_providers:
            refused.append(
                f'job.json asks for provider "{provider}", which this stack does not allow'
                f" (AllowedProviders: {', '.join(settings.allowed_providers)})"
            )
    return refused + _failover_refused(settings, options, task)


def _failover_refused(settings: Settings, options: JobOptions, task: Task) -> list[str]:
    listed = len(options.preference or ()) > 1
    if not (options.failover or listed):
        return []
    if not settings.allow_failover:
        asks = "several providers" if listed else "failover"
        return [f"job.json asks for {asks}, which this stack does not allow (AllowFailover: false)"]
    if listed:
        return []
    others = PROVIDERS.others(task.provider, task.model)
    if any(other in settings.allowed_providers for other in others):
        return []
    which = (
        f"no other provider offers {task.model}"
        if not others
        else f"none of the other providers offering {task.model} ({', '.join(others)}) is allowed"
    )
    return [f"job.json asks for failover, but {which} (AllowedProviders: {', '.join(settings.allowed_providers)})"]


def _gone_task(ctx: PipelineContext, slot: PairSlot, task_id: str, why: str, now: datetime) -> Task:
    """The pair's REJECTED task when one of its files is gone for good (deleted, never replaced)."""
    waiting = begin(
        task_id,
        slot.job,
        since=slot.waiting_since or now,
        arrived="the pair's first file",
        now=now,
        provider=ctx.settings.default_provider,
        model=ctx.settings.default_model,
        image=slot.image,
        audio=slot.audio,
    )
    return end(waiting, TaskStatus.REJECTED, why=why, now=now)
