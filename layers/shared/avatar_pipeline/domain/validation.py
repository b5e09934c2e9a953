"""Checks that run before any money is spent: a failing pair is REJECTED and never reaches a provider.

Two stages, cheapest first:
1. sizes from the S3 event (`check_size`): no byte of the files is read;
2. content (`validate_pair`): each file that passed its size check is inspected by `media_checks` (format from the
   bytes, header-only parses, a tail check) and its facts are held against the provider's limits
   (`check_image`, `check_audio`).
Every reason names the file, what was measured and the limit, so the user can fix the upload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import TypeVar

from avatar_pipeline.domain.media_checks import (
    AudioFacts,
    ImageFacts,
    RandomAccessSource,
    RangeReader,
    inspect_audio,
    inspect_image,
)
from avatar_pipeline.domain.models import ModelOptions, ProviderName, S3Object
from avatar_pipeline.providers.registry import PROVIDERS, describe_model, display_name
from avatar_pipeline.providers.spec import MIB, InputLimits

Facts = TypeVar("Facts", ImageFacts, AudioFacts)
TIMES = "\N{MULTIPLICATION SIGN}"


def fits(
    report: PairReport, image: S3Object, audio: S3Object, provider: ProviderName, model: str, options: ModelOptions
) -> bool:
    """Would the pair that `report` describes also be accepted by `provider`'s `model` with these options? (From
    what was read: no new reads.)"""
    if report.image is None or report.audio is None:
        return False
    limits = PROVIDERS.model(provider, model).limits_for(options)
    sizes_ok = (
        check_size(image, limits.max_image_bytes, provider) is None
        and check_size(audio, limits.max_audio_bytes, provider) is None
    )
    return (
        sizes_ok
        and not check_image(report.image, image.file_name, limits)
        and not check_audio(report.audio, audio.file_name, limits, provider)
    )


@dataclass(frozen=True)
class PairReport:
    """Everything validation learnt about one pair; `problems` empty means it may be submitted."""

    problems: list[str]
    image: ImageFacts | None  # None when not read (its size ruled it out) or unusable
    audio: AudioFacts | None
    image_bytes_read: int
    audio_bytes_read: int

    @property
    def accepted(self) -> bool:
        return not self.problems


# ----------------------------------------------------------------------------------------------- stage 1: sizes


def _format_bytes(size: int) -> str:
    return f"{size / MIB:.2f} MiB" if size >= MIB / 10 else f"{size:,} bytes"


def _format_pair(measured: int, limit: int) -> tuple[str, str]:
    """Both sizes, exact to the byte when rounding would make them read the same."""
    shown = _format_bytes(measured), _format_bytes(limit)
    if shown[0] == shown[1]:
        return f"{shown[0]} ({measured:,} bytes)", f"{shown[1]} ({limit:,} bytes)"
    return shown


def check_size(obj: S3Object, max_bytes: int, who: str) -> str | None:
    """Why the object's size (from its S3 event, nothing read) rules it out for `who` (the model, or the provider,
    whose limit it is); None when it does not."""
    if obj.size == 0:
        return f"{obj.file_name} is empty (0 bytes)"
    if obj.size > max_bytes:
        measured, allowed = _format_pair(obj.size, max_bytes)
        return f"{obj.file_name} is {measured}; the limit is {allowed} for {who}"
    return None


def _shown(value: float, limit: float) -> str:
    """`value` to one decimal, or to as many more as it takes to show which side of `limit` it is on."""
    for places in range(1, 7):
        text = f"{value:.{places}f}"
        if (float(text) > limit, float(text) < limit) == (value > limit, value < limit):
            return text
    return repr(value)


def _or_list(items: tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def check_image(facts: ImageFacts, file_name: str, limits: InputLimits) -> list[str]:
    """Why an inspected image breaks `limits`; empty when it does not."""
    problems = []
    if facts.format not in limits.image_formats:
        problems.append(f"{file_name} is a {facts.format} image; use {_or_list(limits.image_formats)}")
    width, height = facts.width, facts.height
    if min(width, height) < limits.min_image_side:
        problems.append(
            f"{file_name} is {width}{TIMES}{height} px; each side must be at least {limits.min_image_side} px"
        )
    long_side, short_side = max(width, height), min(width, height)
    if short_side > 0 and Fraction(long_side, short_side) > Fraction(str(limits.max_aspect_ratio)):
        ratio = _shown(long_side / short_side, limits.max_aspect_ratio)
        shape = f"1:{ratio}" if height > width else f"{ratio}:1"
        bound = f"{limits.max_aspect_ratio:g}"
        problems.append(f"{file_name} has an aspect ratio of {shape}; it must be between 1:{bound} and {bound}:1")
    return problems


def check_audio(facts: AudioFacts, file_name: str, limits: InputLimits, who: str) -> list[str]:
    """Why an inspected audio clip breaks `limits` (those of `who`: the model, or the provider); empty when it does
    not."""
    problems = []
    if facts.format not in limits.audio_formats:
        problems.append(f"{file_name} is {facts.format} audio; use {_or_list(limits.audio_formats)}")
    seconds = facts.duration_seconds
    if seconds < limits.min_audio_seconds:
        shown = _shown(seconds, limits.min_audio_seconds)
        problems.append(f"{file_name} lasts {shown} s; it must last at least {limits.min_audio_seconds:g} s")
    elif seconds > limits.max_audio_seconds:
        shown = _shown(seconds, limits.max_audio_seconds)
        problems.append(f"{file_name} lasts {shown} s; the limit is {limits.max_audio_seconds:g} s for {who}")
    return problems


def validate_pair(
    image_source: RandomAccessSource,
    image: S3Object,
    audio_source: RandomAccessSource,
    audio: S3Object,
    provider: ProviderName,
    model: str,
    options: ModelOptions,
) -> PairReport:
    """Every reason the pair cannot go to `provider`'s `model` with these options, reading only what is needed.

    A file whose event size already rules it out is not read at all. The other is still inspected, so the user
    learns about both files at once. Errors of the sources themselves (network, permissions) propagate: they
    say nothing about the upload and must not reject it.
    """
    limits = PROVIDERS.model(provider, model).limits_for(options)
    # Limits are named by whose they are: "InfiniteTalk at 720p on fal.ai".
    who = f"{describe_model(provider, model, options)} on {display_name(provider)}"
    image_problems, image_facts, image_bytes = _stage(
        image_source,
        image,
        limits.max_image_bytes,
        who,
        inspect_image,
        lambda facts, name: check_image(facts, name, limits),
    )
    audio_problems, audio_facts, audio_bytes = _stage(
        audio_source,
        audio,
        limits.max_audio_bytes,
        who,
        inspect_audio,
        lambda facts, name: check_audio(facts, name, limits, who),
    )
    return PairReport(image_problems + audio_problems, image_facts, audio_facts, image_bytes, audio_bytes)


def validate_mask(
    source: RandomAccessSource, mask: S3Object, provider: ProviderName, model: str, options: ModelOptions
) -> list[str]:
    """Why a mask image cannot go to `provider`'s `model` with the pair: the image rules apply to it too (it covers
    the portrait). Empty when it can."""
    limits = PROVIDERS.model(provider, model).limits_for(options)
    who = f"{describe_model(provider, model, options)} on {display_name(provider)}"
    problems, _, _ = _stage(
        source, mask, limits.max_image_bytes, who, inspect_image, lambda facts, name: check_image(facts, name, limits)
    )
    return [f"the mask: {problem}" for problem in problems]


def _stage(
    source: RandomAccessSource,
    obj: S3Object,
    max_bytes: int,
    who: str,
    inspect: Callable[[RangeReader, str], Facts | str],
    check: Callable[[Facts, str], list[str]],
) -> tuple[list[str], Facts | None, int]:
    """One file: its size from the event (nothing read), then its content, then the provider's limits."""
    size_problem = check_size(obj, max_bytes, who)
    if size_problem:
        return [size_problem], None, 0
    reader = RangeReader(source, name=obj.file_name)
    inspected = inspect(reader, obj.file_name)
    if isinstance(inspected, str):
        return [inspected], None, reader.bytes_fetched
    return check(inspected, obj.file_name), inspected, reader.bytes_fetched
