"""What a video costs at the provider, estimated before it is made: providers bill per started billing step of video
(5 s for every model so far), and the video lasts as long as the voice clip."""

from __future__ import annotations

import math
from decimal import Decimal

from avatar_pipeline.config import Settings
from avatar_pipeline.providers.registry import PROVIDERS


def estimate_cost(provider: str, mode: str, audio_seconds: float, settings: Settings) -> Decimal:
    model = PROVIDERS.model(provider, mode)
    steps = max(1, math.ceil(round(audio_seconds, 3) / model.billing_step_seconds))
    return (settings.provider(provider).price_per_step(model) * steps).quantize(Decimal("0.01"))
