"""Which model a job gets, whether a provider can run it as the job asks, and what is sent for it."""

from __future__ import annotations

from collections.abc import Mapping

from avatar_pipeline.domain.models import JobOptions, ModelOptions, Task
from avatar_pipeline.providers.registry import PROVIDERS, display_name
from avatar_pipeline.providers.spec import ModelSpec, OptionValue

KLING_PREFIX = "kling-"


def choose_model(options: JobOptions, default_model: str, provider: str) -> str:
    """The model the job asks for: its `model`; for `mode` alone (Kling's short form), the Kling model of that tier
    that `provider` offers, of the default model's Kling version first; else the default model — or, when it is a
    Kling model `provider` does not offer, its Kling model of the same tier (fal runs Kling v2 only)."""
    if options.model is not None:
        return options.model
    offered = PROVIDERS[provider].models
    default_version, default_tier = _kling_version_and_tier(default_model)
    tier = options.mode or (default_tier if default_model not in offered else None)
    if tier is None:
        return default_model
    versions = dict.fromkeys(version for version in (default_version, "v1", "v2") if version)
    candidates = [f"{KLING_PREFIX}{version}-{tier}" for version in versions]
    return next((name for name in candidates if name in offered), candidates[0])


def _kling_version_and_tier(model: str) -> tuple[str, str | None]:
    """("v2", "pro") for "kling-v2-pro"; ("", None) for a model that is not Kling's."""
    if not model.startswith(KLING_PREFIX):
        return "", None
    version, _, tier = model.removeprefix(KLING_PREFIX).partition("-")
    return version, tier or None


def unrunnable(provider: str, model: str, options: Mapping[str, OptionValue]) -> list[str]:
    """Why `provider` cannot run `model` with these options (it does not offer it; an option it does not take),
    each naming the model; empty when it can."""
    offered = PROVIDERS[provider].models
    spec = offered.get(model)
    if spec is None:
        return [f"{display_name(provider)} does not offer the model {model} (its models: {', '.join(offered)})"]
    return [f"{display_name(provider)}'s {problem}" for problem in spec.option_problems(options)]


def prompt_left_out(task: Task, provider: str) -> str | None:
    """What the task's reason says when `provider`'s model of the task takes no prompt but the job gave one."""
    model = PROVIDERS[provider].models.get(task.model)
    if task.prompt and model is not None and not model.takes_prompt:
        return f"its prompt is not sent: {model.title} on {display_name(provider)} takes none"
    return None


def request_fields(spec: ModelSpec, options: Mapping[str, OptionValue], audio_seconds: float) -> ModelOptions:
    """The model's own fields of a submission: its fixed ones, the job's options (but a mask, whose link goes as the
    request's `mask_url`), and its frame count where it has one (as long as the voice clip)."""
    masks = {option.name for option in spec.options if option.kind == "mask"}
    fields: ModelOptions = {**spec.request_fields, **{k: v for k, v in options.items() if k not in masks}}
    if spec.frame_count is not None:
        fields[spec.frame_count.field] = spec.frame_count.for_seconds(audio_seconds)
    return fields
