"""What a video costs at the provider, estimated before it is made: providers bill per started 5 s of video, and the
video lasts as long as the voice clip."""

from __future__ import annotations

import math
from decimal import Decimal

from avatar_pipeline.config import Settings
from avatar_pipeline.models import Mode, ProviderName

BILLING_STEP_SECONDS = 5
# WaveSpeed's published prices for Kling v1 AI Avatar, per 5 s of video.
WAVESPEED_PRICES: dict[Mode, Decimal] = {"std": Decimal("0.25"), "pro": Decimal("0.50")}


def price_per_step(provider: ProviderName, mode: Mode, settings: Settings) -> Decimal:
    if provider == "wavespeed":
        return WAVESPEED_PRICES[mode]
    return settings.cometapi_price_pro if mode == "pro" else settings.cometapi_price_std


def estimate_cost(provider: ProviderName, mode: Mode, audio_seconds: float, settings: Settings) -> Decimal:
    steps = max(1, math.ceil(round(audio_seconds, 3) / BILLING_STEP_SECONDS))
    return (price_per_step(provider, mode, settings) * steps).quantize(Decimal("0.01"))
