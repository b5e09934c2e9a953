"""fal.ai: Kling's AI Avatar v2 (standard and pro) through fal's queue API, its webhooks signed with Ed25519."""

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
)

if TYPE_CHECKING:
    import httpx

    from avatar_pipeline.providers.fal.adapter import FalProvider

# fal's playground takes more formats (webp, gif, avif; ogg) than these, which are what media_checks names and Kling
# takes everywhere; clips of 2-60 s under 5 MB [inferred: a third party's integration notes].
KLING_V2_AVATAR_LIMITS = InputLimits(max_image_bytes=10 * MIB, max_audio_bytes=5 * MIB, max_audio_seconds=60.0)
# fal's model ids and prices (USD per second of video, fal's llms.txt) for Kling AI Avatar v2, by mode.
KLING_V2_AVATAR = {
    "std": ("fal-ai/kling-video/ai-avatar/v2/standard", "standard", Decimal("0.0562")),
    "pro": ("fal-ai/kling-video/ai-avatar/v2/pro", "pro", Decimal("0.115")),
}


DEFAULT_BASE_URL = "https://queue.fal.run"
DEFAULT_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
# Some fal models refuse a request without a prompt (InfiniTalk).
DEFAULT_PROMPT = "A person talking naturally to the camera."


class FalSettings(ProviderSettings):
    model_config = ConfigDict(alias_generator=env_prefixed("FAL_"))

    base_url: str = DEFAULT_BASE_URL
    # Where fal publishes the public keys its webhooks are signed with.
    jwks_url: str = DEFAULT_JWKS_URL
    # Your fal user id: when set, a webhook naming another user is refused even if validly signed.
    user_id: str = ""
    # The webhook function checks fal's callbacks with fal's public keys alone: it holds no API key of fal's.
    accept_callbacks: bool = False
    # fal limits how many requests of an account run at once (2 for a new account), not how many are sent a minute.
    submissions_per_minute: int = 60
    renders_at_once: int = 2

    @property
    def configured(self) -> bool:
        return bool(self.secret_id or self.accept_callbacks)


def build(settings: FalSettings, secret: SecretField, http: httpx.Client) -> FalProvider | None:
    """The adapter with what this function holds: the API key, or (the webhook) nothing but fal's public keys."""
    from avatar_pipeline.providers.fal.adapter import FalProvider

    api_key = secret(settings.secret_id, "api_key")
    if not (api_key or settings.accept_callbacks):
        return None
    return FalProvider(
        api_key,
        [model.model_id for model in SPEC.models.values()],
        base_url=settings.base_url,
        jwks_url=settings.jwks_url,
        user_id=settings.user_id,
        client=http,
    )


SPEC = ProviderSpec(
    name="fal",
    display_name="fal.ai",
    models=models_by_mode(
        KLING_V2_AVATAR, "Kling AI Avatar v2 ({kind})", KLING_V2_AVATAR_LIMITS, billing_step_seconds=1
    ),
    settings=FalSettings,
    # The result is kept an hour (6 min once over 10 KB) and the video by the CDN's lifecycle: copy at once. A day is
    # how long copies are retried and late videos watched for [inferred: fal documents no fixed CDN lifetime].
    output_retention=timedelta(days=1),
    output_hosts=("*.fal.media",),
    build=build,
)
