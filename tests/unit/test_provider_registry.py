"""The provider registry: every part of the pipeline reads the providers, their models and their facts from it."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal

import pytest

from avatar_pipeline.config import Settings
from avatar_pipeline.domain.models import JobOptions
from avatar_pipeline.domain.pricing import estimate_cost
from avatar_pipeline.providers.registry import PROVIDERS, ProviderRegistry, display_name
from avatar_pipeline.providers.spec import BillingRule, ModelSpec

REQUIRED = {"TASK_TABLE_NAME": "t", "MEDIA_BUCKET": "b", "TOPIC_ARN": "arn:t"}


def test_the_registry_holds_wavespeed_cometapi_and_fal_with_their_models() -> None:
    assert list(PROVIDERS) == ["wavespeed", "cometapi", "fal"]
    assert {name: list(spec.models) for name, spec in PROVIDERS.items()} == {
        "wavespeed": [
            "kling-v1-std",
            "kling-v1-pro",
            "kling-v2-std",
            "kling-v2-pro",
            "omnihuman-1.5",
            "infinitetalk",
            "infinitetalk-fast",
            "wan-2.2-s2v",
        ],
        "cometapi": ["kling-v1-std", "kling-v1-pro"],
        "fal": ["kling-v2-std", "kling-v2-pro", "omnihuman-1.5", "infinitetalk"],
    }
    assert PROVIDERS.model("wavespeed", "kling-v1-pro").model_id == "kwaivgi/kling-v1-ai-avatar-pro"
    assert PROVIDERS.offering("omnihuman-1.5") == ("wavespeed", "fal")
    assert (display_name("cometapi"), display_name("someone-else")) == ("CometAPI", "someone-else")


def test_a_name_registered_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered already"):
        ProviderRegistry(PROVIDERS["wavespeed"], PROVIDERS["wavespeed"])


def test_a_replaced_spec_holds_only_within_its_block() -> None:
    original = PROVIDERS["wavespeed"]
    with PROVIDERS.registered(dataclasses.replace(original, output_retention=timedelta(days=1)), replacing=True):
        assert PROVIDERS["wavespeed"].output_retention == timedelta(days=1)
    assert PROVIDERS["wavespeed"] is original
    assert list(PROVIDERS) == ["wavespeed", "cometapi", "fal"]


def test_the_others_are_tried_in_registration_order_and_only_those_offering_the_model() -> None:
    # Given a fourth provider offering only a model of its own
    only_ultra = dataclasses.replace(
        PROVIDERS["cometapi"],
        name="fourth",
        models={"ultra": dataclasses.replace(PROVIDERS.model("cometapi", "kling-v1-std"), name="ultra")},
    )
    with PROVIDERS.registered(only_ultra):
        # Then it follows the others, and is no failover target for another model's task
        assert PROVIDERS.others("wavespeed") == ("cometapi", "fal", "fourth")
        assert PROVIDERS.others("wavespeed", "kling-v1-std") == ("cometapi",)
        assert PROVIDERS.others("wavespeed", "kling-v2-pro") == ("fal",)
        assert PROVIDERS.others("fourth", "ultra") == ()


def test_a_provider_or_model_no_registered_provider_has_is_refused_as_a_literal_of_the_known_ones_would_be() -> None:
    with pytest.raises(ValueError, match=r"provider\n  Input should be 'wavespeed', 'cometapi' or 'fal'"):
        JobOptions(provider="openai")
    with pytest.raises(
        ValueError, match=r"model\n  Input should be 'kling-v1-std', 'kling-v1-pro', .* or 'wan-2.2-s2v'"
    ):
        JobOptions(model="ultra")
    with pytest.raises(ValueError, match=r"mode\n  Input should be 'std' or 'pro'"):
        JobOptions.model_validate({"mode": 5})


def test_the_cost_follows_the_models_billing_step_and_the_providers_price_setting() -> None:
    settings = Settings.from_env({**REQUIRED, "COMETAPI_PRICE_PRO_PER_5S": "0.90"})
    # WaveSpeed's published price per started 5 s; CometAPI's from the operator's setting
    assert estimate_cost("wavespeed", "kling-v1-std", 5.1, settings, {}) == Decimal("0.50")
    assert estimate_cost("cometapi", "kling-v1-pro", 5.1, settings, {}) == Decimal("1.80")
    # A model billed per started 2 s
    two_second = dataclasses.replace(PROVIDERS.model("wavespeed", "kling-v1-std"), billing=BillingRule(step_seconds=2))
    spec = dataclasses.replace(PROVIDERS["wavespeed"], models={"kling-v1-std": two_second})
    with PROVIDERS.registered(spec, replacing=True):
        assert estimate_cost("wavespeed", "kling-v1-std", 5.1, settings, {}) == Decimal("0.75")


def test_a_model_without_a_published_price_needs_its_provider_to_set_one() -> None:
    kling = PROVIDERS.model("wavespeed", "kling-v1-std")
    unpriced = ModelSpec(name="kling-v1-std", model_id="m", title="Unpriced", limits=kling.limits, price_per_step=None,
                         render_seconds_per_second=1.0)  # fmt: skip
    spec = dataclasses.replace(PROVIDERS["wavespeed"], models={"kling-v1-std": unpriced})
    with PROVIDERS.registered(spec, replacing=True), pytest.raises(ValueError, match="no published price"):
        estimate_cost("wavespeed", "kling-v1-std", 3.0, Settings.from_env(REQUIRED), {})


def test_each_providers_settings_survive_a_dump_and_ignore_variables_without_its_prefix() -> None:
    # Given the environment sets CometAPI's pro price, and variables named like settings fields but unprefixed
    env = {**REQUIRED, "COMETAPI_PRICE_PRO_PER_5S": "0.90", "secret_id": "oops", "renders_at_once": "9"}
    settings = Settings.from_env(env)
    # Then no provider took the unprefixed ones
    assert [(s.secret_id, s.renders_at_once) for s in settings.providers.values()] == [("", 3), ("", 3), ("", 2)]
    # And settings read back from their dump keep each provider's own settings (its price among them)
    again = Settings.model_validate(settings.model_dump(by_alias=True))
    assert again.providers == settings.providers
    assert estimate_cost("cometapi", "kling-v1-pro", 5.0, again, {}) == Decimal("0.90")
