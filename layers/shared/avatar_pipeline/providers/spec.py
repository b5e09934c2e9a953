"""What the pipeline knows about a provider and its models, as data: one `ProviderSpec` per provider, in its folder.

Nothing here talks to a provider: the spec says what its models are called, what they cost, which files they
accept, how long the provider keeps a video, which settings it reads, and how its adapter is built (the adapter is
imported only then, so the domain never loads HTTP code to look up a price).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import httpx

    from avatar_pipeline.ports import VideoProvider


MIB = 1024 * 1024


@dataclass(frozen=True)
class InputLimits:
    """The files a model accepts, checked before anything is paid. The defaults are Kling's published limits for its
    avatar model (each side >= 300 px, aspect between 1:2.5 and 2.5:1, JPG/PNG; MP3/WAV/M4A/AAC lasting 2-300 s)."""

    max_image_bytes: int
    max_audio_bytes: int
    min_image_side: int = 300  # pixels, each side, as displayed (after the EXIF orientation)
    max_aspect_ratio: float = 2.5  # longer side / shorter side: between 1:2.5 and 2.5:1
    min_audio_seconds: float = 2.0
    max_audio_seconds: float = 300.0
    image_formats: tuple[str, ...] = ("JPEG", "PNG")  # as named by media_checks, from the content
    audio_formats: tuple[str, ...] = ("MP3", "WAV", "M4A", "AAC")


@dataclass(frozen=True)
class ModelSpec:
    """One of a provider's video models, as a job chooses it (by `mode`)."""

    mode: str
    # The provider's name for the model, as its API addresses it (the adapter builds the request from it).
    model_id: str
    title: str
    limits: InputLimits
    # USD per started billing step of video; None when the provider publishes no price (the operator's settings
    # give it: `ProviderSettings.price_per_step`).
    price_per_step: Decimal | None
    billing_step_seconds: int = 5


def models_by_mode(
    table: Mapping[str, tuple[str, str, Decimal | None]],
    title: str,
    limits: InputLimits,
    billing_step_seconds: int = 5,
) -> dict[str, ModelSpec]:
    """A provider's models from a table of mode → (its model id, the mode's word in `title`'s `{kind}`, price per
    billing step or None), all taking the same files."""
    return {
        mode: ModelSpec(
            mode=mode,
            model_id=model_id,
            title=title.format(kind=kind),
            limits=limits,
            price_per_step=price,
            billing_step_seconds=billing_step_seconds,
        )
        for mode, (model_id, kind, price) in table.items()
    }


def env_prefixed(prefix: str) -> Callable[[str], str]:
    """Field name → environment variable: `base_url` → `<PREFIX>BASE_URL`."""
    return lambda field: f"{prefix}{field.upper()}"


class ProviderSettings(BaseModel):
    """A provider's settings, read from the function's environment under its own prefix (a subclass per provider
    sets `model_config`'s alias generator to `env_prefixed("<NAME>_")`)."""

    model_config = ConfigDict(frozen=True)

    base_url: str
    # Name or ARN of a Secrets Manager secret holding {"api_key": ...}: only the functions that call the API.
    secret_id: str = ""
    # The provider account's quota. WaveSpeed's defaults are its default account level; others publish none.
    submissions_per_minute: int = Field(default=5, gt=0)
    renders_at_once: int = Field(default=3, gt=0)

    @property
    def configured(self) -> bool:
        """Whether this function was given a secret of this provider's (else it has no adapter for it)."""
        return bool(self.secret_id)

    def price_per_step(self, model: ModelSpec) -> Decimal:
        """USD per billing step of `model`: its published price (a provider without one overrides this)."""
        if model.price_per_step is None:
            raise ValueError(f"{model.title} has no published price and the settings give none")
        return model.price_per_step


def split_secrets(value: str) -> list[str]:
    """Several webhook secrets or callback keys may be valid at once (rotation): separated by commas or whitespace."""
    return [part for part in re.split(r"[\s,]+", value) if part]


# Reads one field of a JSON secret: (secret id, field) → its text; "" when the id is empty or the field absent.
SecretField = Callable[[str, str], str]
# Builds the provider's adapter from its settings and secrets; None when its secrets hold nothing usable.
AdapterFactory = Callable[[Any, SecretField, "httpx.Client"], "VideoProvider | None"]


@dataclass(frozen=True)
class ProviderSpec:
    name: str  # as jobs, settings and task records name it
    display_name: str  # as people read it
    models: Mapping[str, ModelSpec]  # by mode
    settings: type[ProviderSettings]
    # How long the provider keeps a finished video: copies are retried, and late videos watched for, until then.
    output_retention: timedelta
    # Hosts its videos are downloaded from (names, or `*.suffix` wildcards): the default of ALLOWED_OUTPUT_HOSTS.
    output_hosts: tuple[str, ...]
    build: AdapterFactory

    def model(self, mode: str) -> ModelSpec:
        try:
            return self.models[mode]
        except KeyError:
            raise ValueError(f"{self.display_name} has no model for mode {mode!r}") from None
