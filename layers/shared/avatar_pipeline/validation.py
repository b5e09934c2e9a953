"""Checks that run before any money is spent: a failing pair is REJECTED and never reaches a provider."""

from __future__ import annotations

from dataclasses import dataclass

from avatar_pipeline.models import ProviderName, S3Object

MIB = 1024 * 1024


@dataclass(frozen=True)
class InputLimits:
    max_image_bytes: int
    max_audio_bytes: int


# One row per provider. WaveSpeed proxies Kling, so Kling's published input limits apply to it.
INPUT_LIMITS: dict[ProviderName, InputLimits] = {
    "wavespeed": InputLimits(max_image_bytes=10 * MIB, max_audio_bytes=5 * MIB),
}


def _format_bytes(size: int) -> str:
    return f"{size / MIB:.2f} MiB" if size >= MIB / 10 else f"{size:,} bytes"


def _format_pair(measured: int, limit: int) -> tuple[str, str]:
    """Both sizes, exact to the byte when rounding would make them read the same."""
    shown = _format_bytes(measured), _format_bytes(limit)
    if shown[0] == shown[1]:
        return f"{shown[0]} ({measured:,} bytes)", f"{shown[1]} ({limit:,} bytes)"
    return shown


def problems_with_pair(image: S3Object, audio: S3Object, provider: ProviderName) -> list[str]:
    """Human-readable reasons the pair cannot be sent to `provider`; empty when it can."""
    limits = INPUT_LIMITS[provider]
    problems = []
    for obj, limit in ((image, limits.max_image_bytes), (audio, limits.max_audio_bytes)):
        if obj.size == 0:
            problems.append(f"{obj.file_name} is empty (0 bytes)")
        elif obj.size > limit:
            measured, allowed = _format_pair(obj.size, limit)
            problems.append(f"{obj.file_name} is {measured}; the limit is {allowed} for {provider}")
    return problems
