"""What a video costs at the provider, estimated before it is made: each model has its billing rule (per second or
per started 5 s, a minimum, a cap) and its price per step, which may depend on the resolution; the video lasts as
long as the voice clip."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal

from avatar_pipeline.config import Settings
from avatar_pipeline.providers.registry import PROVIDERS
from avatar_pipeline.providers.spec import OptionValue


def estimate_cost(
    provider: str, model: str, audio_seconds: float, settings: Settings, options: Mapping[str, OptionValue]
) -> Decimal:
    spec = PROVIDERS.model(provider, model)
    price = spec.price_for(options, settings.provider(provider).price_per_step(spec))
    # Rounded up to the cent: an estimate (and the spend limits counting it) may say too much, never too little.
    return (price * spec.billing.steps(audio_seconds)).quantize(Decimal("0.01"), rounding=ROUND_CEILING)
