"""The template's provider and model parameters follow the provider registry."""

from __future__ import annotations

import re

from support.aws import template

from avatar_pipeline.providers.registry import PROVIDERS


def test_the_template_offers_exactly_the_registered_providers_and_models() -> None:
    """Given the template's parameters list providers and models for the operator to choose, then they are the
    registry's: a provider or model added to the registry alone (recipe step 4 forgotten) fails here."""
    parameters = template()["Parameters"]
    models = list(PROVIDERS.model_names())
    assert sorted(parameters["DefaultProvider"]["AllowedValues"]) == sorted(PROVIDERS)
    assert parameters["DefaultModel"]["AllowedValues"] == models
    assert parameters["AllowedModels"]["Default"] == " ".join(models)
    for parameter, names in (("AllowedProviders", list(PROVIDERS)), ("AllowedModels", models)):
        pattern = parameters[parameter]["AllowedPattern"]
        assert re.fullmatch(pattern, " ".join(names)), parameter
        assert all(re.fullmatch(pattern, name) for name in names), parameter
        assert not re.fullmatch(pattern, "someone-else"), parameter
