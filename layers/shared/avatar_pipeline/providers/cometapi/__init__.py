"""CometAPI: Kling's avatar image-to-video API through CometAPI's gateway, std and pro."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from pydantic import ConfigDict, Field

from avatar_pipeline.providers.spec import (
    MIB,
    BillingRule,
    InputLimits,
    ModelSpec,
    ProviderSettings,
    ProviderSpec,
    SecretField,
    catalog,
    env_prefixed,
)

if TYPE_CHECKING:
    import httpx

    from avatar_pipeline.providers.cometapi.adapter import CometApiProvider

# Kling's published limits (the defaults), except the voice clip: CometAPI documents 2-60 s, stricter than Kling's
# own 300 s.
KLING_AVATAR_LIMITS = InputLimits(max_image_bytes=10 * MIB, max_audio_bytes=5 * MIB, max_audio_seconds=60.0)
# Its create endpoint: the model is that endpoint and the mode sent with it.
KLING_AVATAR = "kling/v1/videos/avatar/image2video"


DEFAULT_BASE_URL = "https://api.cometapi.com"
DEFAULT_PROMPT = "A person talking naturally to the camera."


class CometApiSettings(ProviderSettings):
    model_config = ConfigDict(alias_generator=env_prefixed("COMETAPI_"))

    base_url: str = DEFAULT_BASE_URL
    default_prompt: str = Field(default=DEFAULT_PROMPT, max_length=2500)
    # USD per started 5 s of video; CometAPI publishes no fixed price, so set what your account pays.
    price_std_per_5s: Decimal = Field(default=Decimal("0.30"), ge=0)
    price_pro_per_5s: Decimal = Field(default=Decimal("0.60"), ge=0)

    def price_per_step(self, model: ModelSpec) -> Decimal:
        return self.price_pro_per_5s if model.request_fields["mode"] == "pro" else self.price_std_per_5s


def build(settings: CometApiSettings, secret: SecretField, http: httpx.Client) -> CometApiProvider | None:
    from avatar_pipeline.providers.cometapi.adapter import CometApiProvider

    api_key = secret(settings.secret_id, "api_key")
    if not api_key:
        return None
    return CometApiProvider(
        api_key=api_key, base_url=settings.base_url, client=http, default_prompt=settings.default_prompt
    )


SPEC = ProviderSpec(
    name="cometapi",
    display_name="CometAPI",
    # One endpoint, the mode sent with it; no published price (the operator's settings give it).
    models=catalog(
        *(
            ModelSpec(
                name=f"kling-v1-{mode}",
                model_id=KLING_AVATAR,
                title=f"Kling AI Avatar ({mode})",
                limits=KLING_AVATAR_LIMITS,
                price_per_step=None,
                billing=BillingRule(step_seconds=5, minimum_seconds=5),
                # As on WaveSpeed, which runs the same Kling model [inferred].
                render_seconds_per_second=20.0,
                request_fields={"mode": mode},
            )
            for mode in ("std", "pro")
        )
    ),
    settings=CometApiSettings,
    # CometAPI's Kling CDN links last 30 days.
    output_retention=timedelta(days=30),
    # The Kling CDN, and CometAPI's own domain should it serve them.
    output_hosts=("*.klingai.com", "*.cometapi.com"),
    build=build,
)
