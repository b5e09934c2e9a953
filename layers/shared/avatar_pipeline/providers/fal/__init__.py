"""fal.ai: Kling AI Avatar v2, OmniHuman 1.5 and InfiniteTalk through its queue API; webhooks signed with Ed25519."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from pydantic import ConfigDict

from avatar_pipeline.providers.spec import (
    MIB,
    BillingRule,
    FrameCount,
    InputLimits,
    ModelOption,
    ModelSpec,
    ProviderSettings,
    ProviderSpec,
    SecretField,
    catalog,
    env_prefixed,
)

if TYPE_CHECKING:
    import httpx

    from avatar_pipeline.providers.fal.adapter import FalProvider

# fal's playground takes more formats (webp, gif, avif; ogg) than these, which are what media_checks names and Kling
# takes everywhere; clips of 2-60 s under 5 MB [inferred: a third party's integration notes].
KLING_V2_LIMITS = InputLimits(max_image_bytes=10 * MIB, max_audio_bytes=5 * MIB, max_audio_seconds=60.0)
# fal bills its avatar models per second of video (its model pages) [inferred: whole seconds, rounded up].
PER_SECOND = BillingRule(step_seconds=1)
# InfiniteTalk makes as many frames as it is told (41-721, at 25 a second [inferred]): clips up to 28.8 s.
INFINITALK_FRAMES = FrameCount("num_frames", frames_per_second=25, minimum=41, maximum=721)


def _kling_v2(tier: str, fal_tier: str, price: str) -> ModelSpec:
    return ModelSpec(
        name=f"kling-v2-{tier}",
        model_id=f"fal-ai/kling-video/ai-avatar/v2/{fal_tier}",
        title=f"Kling AI Avatar v2 ({fal_tier})",
        limits=KLING_V2_LIMITS,
        price_per_step=Decimal(price),
        billing=PER_SECOND,
        # As on WaveSpeed, which runs the same Kling model [inferred].
        render_seconds_per_second=20.0,
    )


MODELS = catalog(
    _kling_v2("std", "standard", "0.0562"),
    _kling_v2("pro", "pro", "0.115"),
    ModelSpec(
        name="omnihuman-1.5",
        model_id="fal-ai/bytedance/omnihuman/v1.5",
        title="OmniHuman 1.5",
        # Clips under 60 s at 720p, under 30 s at 1080p (its default): fal's model page.
        limits=replace(KLING_V2_LIMITS, max_audio_seconds=30.0),
        limits_by_resolution={"720p": KLING_V2_LIMITS},
        price_per_step=Decimal("0.16"),
        billing=PER_SECOND,
        render_seconds_per_second=20.0,  # [inferred]: as on WaveSpeed
        options=(
            ModelOption("resolution", "choice", choices=("720p", "1080p"), default="1080p"),
            ModelOption("turbo_mode", "boolean", default=False),
        ),
    ),
    ModelSpec(
        name="infinitetalk",
        model_id="fal-ai/infinitalk",
        title="InfiniteTalk",
        limits=replace(KLING_V2_LIMITS, max_audio_seconds=INFINITALK_FRAMES.max_seconds),
        price_per_step=Decimal("0.2"),
        prices_by_resolution={"720p": Decimal("0.4")},
        billing=PER_SECOND,
        render_seconds_per_second=30.0,  # [inferred]: as on WaveSpeed
        options=(
            ModelOption("resolution", "choice", choices=("480p", "720p"), default="480p"),
            # fal gives no range (its default is 42) [inferred: any non-negative 32-bit number].
            ModelOption("seed", "integer", minimum=0, maximum=2_147_483_647, default=42),
            ModelOption("acceleration", "choice", choices=("none", "regular", "high"), default="regular"),
        ),
        frame_count=INFINITALK_FRAMES,
    ),
)


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
    models=MODELS,
    settings=FalSettings,
    # The result is kept an hour (6 min once over 10 KB) and the video by the CDN's lifecycle: copy at once. A day is
    # how long copies are retried and late videos watched for [inferred: fal documents no fixed CDN lifetime].
    output_retention=timedelta(days=1),
    output_hosts=("*.fal.media",),
    build=build,
)
