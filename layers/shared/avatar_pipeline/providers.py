"""Facts about the providers that the domain needs, kept in one place."""

from __future__ import annotations

from avatar_pipeline.models import ProviderJob, ProviderName

DISPLAY_NAMES: dict[ProviderName, str] = {"wavespeed": "WaveSpeed", "cometapi": "CometAPI"}


def alternative(provider: ProviderName) -> ProviderName:
    """The provider a task may fail over to."""
    return "cometapi" if provider == "wavespeed" else "wavespeed"


def display_name(provider: str) -> str:
    return DISPLAY_NAMES.get(provider, provider)  # type: ignore[call-overload]


def describe_failure(provider: str, job: ProviderJob) -> str:
    code = f" (code {job.error_code})" if job.error_code else ""
    message = job.error_message or "no reason given"
    return f"{display_name(provider)} could not make the video{code}: {message}"
