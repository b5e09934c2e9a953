"""WaveSpeedAI: Kling v1 AI Avatar, standard and pro."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from pydantic import ConfigDict

from avatar_pipeline.providers.spec import (
    MIB,
    InputLimits,
    ProviderSettings,
    ProviderSpec,
    SecretField,
    env_prefixed,
    models_by_mode,
    split_secrets,
)

if TYPE_CHECKING:
    import httpx

    from avatar_pipeline.providers.wavespeed.adapter import WaveSpeedProvider

# WaveSpeed documents no input limits for the Kling avatar model beyond advice (a portrait of at least 512 px, a
# clean voice at 16-48 kHz); it proxies Kling, so Kling's published limits apply [inferred]: the defaults, with
# image <= 10 MB and audio <= 5 MB ("MB" read as MiB).
KLING_V1_AVATAR_LIMITS = InputLimits(max_image_bytes=10 * MIB, max_audio_bytes=5 * MIB)
# WaveSpeed's model ids and published prices (per started 5 s of video) for Kling v1 AI Avatar, by mode.
KLING_V1_AVATAR = {
    "std": ("kwaivgi/kling-v1-ai-avatar-standard", "standard", Decimal("0.25")),
    "pro": ("kwaivgi/kling-v1-ai-avatar-pro", "pro", Decimal("0.50")),
}


DEFAULT_BASE_URL = "https://api.wavespeed.ai"


class WaveSpeedSettings(ProviderSettings):
    model_config = ConfigDict(alias_generator=env_prefixed("WAVESPEED_"))

    base_url: str = DEFAULT_BASE_URL
    # Name or ARN of a Secrets Manager secret holding {"webhook_secret": ...}: only the webhook function, which so
    # never holds the paid API key.
    webhook_secret_id: str = ""

    @property
    def configured(self) -> bool:
        return bool(self.secret_id or self.webhook_secret_id)


def build(settings: WaveSpeedSettings, secret: SecretField, http: httpx.Client) -> WaveSpeedProvider | None:
    """The adapter with what this function holds: the API key, or (the webhook) the webhook secrets alone."""
    from avatar_pipeline.providers.wavespeed.adapter import WaveSpeedProvider

    api_key = secret(settings.secret_id, "api_key")
    webhook_secrets = split_secrets(secret(settings.webhook_secret_id, "webhook_secret"))
    if not (api_key or webhook_secrets):
        return None
    return WaveSpeedProvider(api_key=api_key, webhook_secrets=webhook_secrets, base_url=settings.base_url, client=http)


SPEC = ProviderSpec(
    name="wavespeed",
    display_name="WaveSpeed",
    models=models_by_mode(KLING_V1_AVATAR, "Kling v1 AI Avatar ({kind})", KLING_V1_AVATAR_LIMITS),
    settings=WaveSpeedSettings,
    # WaveSpeed deletes predictions and their outputs after 7 days.
    output_retention=timedelta(days=7),
    # Its CloudFront distribution (https://<id>.cloudfront.net/output/...), and its own domain should it move.
    output_hosts=("*.cloudfront.net", "*.wavespeed.ai"),
    build=build,
)
