"""Which model a job gets, whether a provider can run it as the job asks, and what is sent for it."""

from __future__ import annotations

from collections.abc import Mapping

from avatar_pipeline.domain.models import JobOptions, ModelOptions
from avatar_pipeline.providers.registry import PROVIDERS, display_name
from avatar_pipeline.providers.spec import ModelSpec, OptionValue

KLING_PREFIX = "kling-"


def choose_model(options: JobOptions, default_model: str, provider: str) -> str:
    """The model the job asks for: its `model`; for `mode` alone (Kling's short form), the Kling model of that tier
    that `provider` offers, of the default model's Kling version first; else the default model."""
    if options.model is not None:
        return options.model
    if options.mode is None:
        return default_model
    default_version = (
        default_model.removeprefix(KLING_PREFIX).split("-")[0] if default_model.startswith(KLING_PREFIX) else ""
    )
    versions = dict.fromkeys(version for version in (default_version, "v1", "v2") if version)
    candidates = [f"{KLING_PREFIX}{version}-{options.mode}" for version in versions]
    offered = PROVIDERS[provider].models
    return next((name for name in candidates if name in offered), candidates[0])


def unrunnable(provider: str, model: str, options: Mapping[str, OptionValue]) -> list[str]:
    """Why `provider` cannot run `model` with these options (it does not offer it; an option it does not take),
    each naming the model; empty when it can."""
    offered = PROVIDERS[provider].models
    spec = offered.get(model)
    if spec is None:
        return [f"{display_name(provider)} does not offer the model {model} (its models: {', '.join(offered)})"]
    return [f"{problem} on {display_name(provider)}" for problem in spec.option_problems(options)]


def request_fields(spec: ModelSpec, options: Mapping[str, OptionValue], audio_seconds: float) -> ModelOptions:
    """The model's own fields of a submission: its fixed ones, the job's options, and its frame count where it has
    one (as long as the voice clip)."""
    fields: ModelOptions = {**spec.request_fields, **options}
    if spec.frame_count is not None:
        fields[spec.frame_count.field] = spec.frame_count.for_seconds(audio_seconds)
    return fields
