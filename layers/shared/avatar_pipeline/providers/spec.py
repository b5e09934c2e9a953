"""What the pipeline knows about a provider and its models, as data: one `ProviderSpec` per provider, in its folder.

Nothing here talks to a provider: the spec says what its models are called, what they cost, which files they
accept, how long the provider keeps a video, which settings it reads, and how its adapter is built (the adapter is
imported only then, so the domain never loads HTTP code to look up a price).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

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
class BillingRule:
    """How a provider bills a video from its length: per started `step_seconds`, counting at least `minimum_seconds`
    and at most `cap_seconds` (video seconds are rounded up to whole seconds first)."""

    step_seconds: int = 5
    minimum_seconds: int = 1
    cap_seconds: int | None = None

    def steps(self, seconds: float) -> int:
        billed = max(math.ceil(round(seconds, 3)), self.minimum_seconds, 1)
        if self.cap_seconds is not None:
            billed = min(billed, self.cap_seconds)
        return math.ceil(billed / self.step_seconds)

    def describe(self) -> str:
        unit = "per second" if self.step_seconds == 1 else f"per started {self.step_seconds} s"
        bounds = [f"at least {self.minimum_seconds} s"] if self.minimum_seconds > 1 else []
        bounds += [f"at most {self.cap_seconds} s"] if self.cap_seconds is not None else []
        return ", ".join([unit, *bounds])


OptionValue = str | int | bool
OptionKind = Literal["choice", "integer", "boolean", "mask"]


@dataclass(frozen=True)
class ModelOption:
    """A setting of a model that a job may give in job.json's `options`, sent as the request field of that name."""

    name: str
    kind: OptionKind
    choices: tuple[str, ...] = ()  # a "choice": one of these
    minimum: int | None = None  # an "integer": within these
    maximum: int | None = None
    # What the provider uses when the job gives none (the price and the limits follow it).
    default: OptionValue | None = None

    def problem(self, value: object) -> str | None:
        """Why `value` is not one this option takes; None when it is."""
        if self.kind == "choice":
            return None if value in self.choices else f"must be one of {', '.join(map(repr, self.choices))}"
        if self.kind == "boolean":
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind == "mask":
            # The file itself is checked (it exists, it is an image) when the pair is.
            return (
                None
                if isinstance(value, str) and value and "/" not in value
                else "must name a file in the job's folder"
            )
        if not isinstance(value, int) or isinstance(value, bool):
            return "must be a whole number"
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            return f"must be from {self.minimum} to {self.maximum}"
        return None


@dataclass(frozen=True)
class FrameCount:
    """A request field giving the video's length in frames, where a model makes only as many as it is told (and
    so would cut the voice short): sent as the clip's length at `frames_per_second`, within the model's range."""

    field: str
    frames_per_second: int
    minimum: int
    maximum: int

    def for_seconds(self, seconds: float) -> int:
        return min(self.maximum, max(self.minimum, math.ceil(round(seconds, 3) * self.frames_per_second)))

    @property
    def max_seconds(self) -> float:
        return self.maximum / self.frames_per_second


@dataclass(frozen=True)
class ModelSpec:
    """One of a provider's video models, as a job names it (`name`, the same on every provider offering it)."""

    name: str
    # The provider's name for the model, as its API addresses it (the adapter builds the request from it).
    model_id: str
    title: str
    limits: InputLimits
    # USD per billing step (at the default resolution, where prices differ by resolution); None when the provider
    # publishes no price (the operator's settings give it: `ProviderSettings.price_per_step`).
    price_per_step: Decimal | None
    # Expected wall-clock seconds of rendering per second of video: a task's render clock allows for it.
    render_seconds_per_second: float
    billing: BillingRule = BillingRule()
    # USD per billing step at the other resolutions.
    prices_by_resolution: Mapping[str, Decimal] = field(default_factory=dict)
    # Stricter limits at some resolutions (OmniHuman on fal renders shorter clips at 1080p).
    limits_by_resolution: Mapping[str, InputLimits] = field(default_factory=dict)
    options: tuple[ModelOption, ...] = ()
    # A model without a prompt field is sent none (a job's prompt is then left out, and the task says so).
    takes_prompt: bool = True
    # Sent with every request of this model (CometAPI's `mode`, which names the model at its shared endpoint).
    request_fields: Mapping[str, OptionValue] = field(default_factory=dict)
    frame_count: FrameCount | None = None

    def option(self, name: str) -> ModelOption | None:
        return next((option for option in self.options if option.name == name), None)

    def resolution(self, options: Mapping[str, OptionValue]) -> str | None:
        chosen = options.get("resolution")
        default = self.option("resolution")
        return str(chosen) if chosen is not None else (str(default.default) if default and default.default else None)

    def limits_for(self, options: Mapping[str, OptionValue]) -> InputLimits:
        return self.limits_by_resolution.get(self.resolution(options) or "", self.limits)

    def price_for(self, options: Mapping[str, OptionValue], default: Decimal) -> Decimal:
        """USD per billing step with these options (`default`: the price at the default resolution)."""
        return self.prices_by_resolution.get(self.resolution(options) or "", default)

    def option_problems(self, options: Mapping[str, OptionValue]) -> list[str]:
        """Why `options` are not ones this model takes, each naming the model and the option; empty when they are."""
        problems = []
        for name, value in options.items():
            option = self.option(name)
            if option is None:
                takes = ", ".join(o.name for o in self.options) or "none"
                problems.append(f'{self.title} has no option "{name}" (its options: {takes})')
            elif problem := option.problem(value):
                problems.append(f'{self.title}: option "{name}" {problem}')
        return problems


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
    models: Mapping[str, ModelSpec]  # by name
    settings: type[ProviderSettings]
    # How long the provider keeps a finished video: copies are retried, and late videos watched for, until then.
    output_retention: timedelta
    # Hosts its videos are downloaded from (names, or `*.suffix` wildcards): the default of ALLOWED_OUTPUT_HOSTS.
    output_hosts: tuple[str, ...]
    build: AdapterFactory

    def model(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise ValueError(f"{self.display_name} has no model {name!r}") from None


def catalog(*models: ModelSpec) -> dict[str, ModelSpec]:
    """A provider's models by name (each name once)."""
    by_name = {model.name: model for model in models}
    if len(by_name) != len(models):
        raise ValueError("a provider offers each model once")
    return by_name
