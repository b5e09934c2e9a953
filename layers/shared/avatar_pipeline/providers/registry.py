"""Facts about the providers that the domain needs, kept in one place."""

from __future__ import annotations

from datetime import timedelta

from avatar_pipeline.models import ProviderJob, ProviderName
from avatar_pipeline.redaction import mask_secrets

DISPLAY_NAMES: dict[str, str] = {"wavespeed": "WaveSpeed", "cometapi": "CometAPI"}
PROVIDER_NAMES: tuple[ProviderName, ...] = ("wavespeed", "cometapi")
# How long each provider keeps a finished video (WaveSpeed deletes predictions and outputs after 7 days; CometAPI's
# Kling CDN links last 30 days): copies are retried, and late videos watched for, until then.
OUTPUT_RETENTION: dict[ProviderName, timedelta] = {"wavespeed": timedelta(days=7), "cometapi": timedelta(days=30)}


def alternative(provider: ProviderName) -> ProviderName:
    """The provider a task may fail over to."""
    return "cometapi" if provider == "wavespeed" else "wavespeed"


def display_name(provider: str) -> str:
    return DISPLAY_NAMES.get(provider, provider)


def describe_failure(provider: str, job: ProviderJob) -> str:
    """A provider-reported failure as a task's reason (and a notification's text): the provider's words, masked,
    since they may echo our signed input URLs or callback token back."""
    code = f" (code {mask_secrets(job.error_code)})" if job.error_code else ""
    message = mask_secrets(job.error_message or "") or "no reason given"
    return f"{display_name(provider)} could not make the video{code}: {message}"
