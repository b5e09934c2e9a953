"""WaveSpeedAI: its talking-avatar models (Kling v1 and v2 AI Avatar, OmniHuman 1.5, InfiniteTalk, Wan 2.2)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from pydantic import ConfigDict

from avatar_pipeline.providers.spec import (
    MIB,
    BillingRule,
    InputLimits,
    ModelOption,
    ModelSpec,
    ProviderSettings,
    ProviderSpec,
    SecretField,
    catalog,
    env_prefixed,
    split_secrets,
)

if TYPE_CHECKING:
    import httpx

    from avatar_pipeline.providers.wavespeed.adapter import WaveSpeedProvider

# WaveSpeed documents no input limits for the Kling avatar models beyond advice (a portrait of at least 512 px, a
# clean voice at 16-48 kHz); it proxies Kling, so Kling's published limits apply [inferred]: the defaults, with
# image <= 10 MB and audio <= 5 MB ("MB" read as MiB).
KLING_LIMITS = InputLimits(max_image_bytes=10 * MIB, max_audio_bytes=5 * MIB)
# Its own models take clips of up to 10 min, and it documents no file sizes for them: Kling's image limit, and room
# for 10 min of audio at a high bitrate (a reseller of InfiniteTalk states 128 MB) [inferred].
LONG_CLIP_LIMITS = InputLimits(max_image_bytes=10 * MIB, max_audio_bytes=50 * MIB, max_audio_seconds=600.0)
# Third-party runs of Kling's v2 avatar model report 30-50 min for a 124 s clip: about 20 s per second (taken for
# v1 too [inferred]).
KLING_RENDER_SECONDS_PER_SECOND = 20.0
# Per started 5 s of video, the first 5 s always billed (the rule WaveSpeed's "per 5 s" model pages state).
PER_5_SECONDS = BillingRule(step_seconds=5, minimum_seconds=5)
SEED = ModelOption("seed", "integer", minimum=-1, maximum=2_147_483_647, default=-1)
# An image over the portrait, white over the person to animate (a mask over the whole picture gives a black video): a
# file of the job's folder named <any>.mask.png (or .jpg).
MASK = ModelOption("mask_image", "mask")
RESOLUTION_480P_720P = ModelOption("resolution", "choice", choices=("480p", "720p"), default="480p")


def _kling(version: str, tier: str, model_id: str, price: str) -> ModelSpec:
    return ModelSpec(
        name=f"kling-{version}-{tier}",
        model_id=model_id,
        title=f"Kling {version} AI Avatar ({'standard' if tier == 'std' else tier})",
        limits=KLING_LIMITS,
        price_per_step=Decimal(price),
        render_seconds_per_second=KLING_RENDER_SECONDS_PER_SECOND,
        billing=PER_5_SECONDS,
    )


MODELS = catalog(
    # $0.25 and $0.50 per 5 s (WaveSpeed's model pages).
    _kling("v1", "std", "kwaivgi/kling-v1-ai-avatar-standard", "0.25"),
    _kling("v1", "pro", "kwaivgi/kling-v1-ai-avatar-pro", "0.50"),
    # Prices from a third-party catalog (pro matches a third party's bill of $2.93 for 26 s); WaveSpeed's own page
    # for v2 was not found [inferred].
    _kling("v2", "std", "kwaivgi/kling-v2-ai-avatar-standard", "0.28"),
    _kling("v2", "pro", "kwaivgi/kling-v2-ai-avatar-pro", "0.56"),
    ModelSpec(
        name="omnihuman-1.5",
        model_id="bytedance/avatar-omni-human-1.5",
        title="OmniHuman 1.5",
        # WaveSpeed states no longest clip, only that it bills at most 600 s [inferred: the longest it takes].
        limits=LONG_CLIP_LIMITS,
        # $0.16 per second of audio, rounded up, at most 600 s billed (WaveSpeed's model page).
        price_per_step=Decimal("0.16"),
        billing=BillingRule(step_seconds=1, cap_seconds=600),
        render_seconds_per_second=20.0,  # [inferred]: no published figure
        # Its page lists only the image and the audio.
        takes_prompt=False,
    ),
    ModelSpec(
        name="infinitetalk",
        model_id="wavespeed-ai/infinitetalk",
        title="InfiniteTalk",
        limits=LONG_CLIP_LIMITS,
        # $0.15 per 5 s at 480p, $0.30 at 720p: per second, at least 5 s, at most 600 s (WaveSpeed's model page).
        price_per_step=Decimal("0.03"),
        prices_by_resolution={"720p": Decimal("0.06")},
        billing=BillingRule(step_seconds=1, minimum_seconds=5, cap_seconds=600),
        # 10-30 s of rendering per second of video (WaveSpeed's docs): the slow end.
        render_seconds_per_second=30.0,
        options=(RESOLUTION_480P_720P, SEED, MASK),
    ),
    ModelSpec(
        name="infinitetalk-fast",
        model_id="wavespeed-ai/infinitetalk-fast",
        title="InfiniteTalk Fast",
        limits=LONG_CLIP_LIMITS,
        # No page of its own was found: half InfiniteTalk's price (its multi-person form's page says "half the cost")
        # and the same billing and speed [inferred]; the fields third-party callers send.
        price_per_step=Decimal("0.015"),
        billing=BillingRule(step_seconds=1, minimum_seconds=5, cap_seconds=600),
        render_seconds_per_second=30.0,
        options=(SEED, MASK),
    ),
    ModelSpec(
        name="wan-2.2-s2v",
        model_id="wavespeed-ai/wan-2.2/speech-to-video",
        title="Wan 2.2 Speech-to-Video",
        # At most 120 s (its current page; an older copy said 10 min).
        limits=replace(LONG_CLIP_LIMITS, max_audio_seconds=120.0),
        # $0.15 per 5 s at 480p, $0.30 at 720p (its page); per second with 5 s at least, as WaveSpeed's other
        # models [inferred].
        price_per_step=Decimal("0.03"),
        prices_by_resolution={"720p": Decimal("0.06")},
        billing=BillingRule(step_seconds=1, minimum_seconds=5),
        render_seconds_per_second=30.0,  # [inferred]: as InfiniteTalk, which it resembles
        options=(RESOLUTION_480P_720P, SEED),
    ),
)


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
    models=MODELS,
    settings=WaveSpeedSettings,
    # WaveSpeed deletes predictions and their outputs after 7 days.
    output_retention=timedelta(days=7),
    # Its CloudFront distribution (https://<id>.cloudfront.net/output/...), and its own domain should it move.
    output_hosts=("*.cloudfront.net", "*.wavespeed.ai"),
    build=build,
)
