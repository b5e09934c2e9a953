"""The template's provider and mode parameters follow the provider registry."""

from __future__ import annotations

import re

from support.aws import template

from avatar_pipeline.providers.registry import PROVIDERS


def test_the_template_offers_exactly_the_registered_providers_and_modes() -> None:
    """Given the template's parameters list providers and modes for the operator to choose, then they are the
    registry's: a provider or model added to the registry alone (recipe step 4 forgotten) fails here."""
    parameters = template()["Parameters"]
    modes = sorted({mode for spec in PROVIDERS.values() for mode in spec.models})
    assert sorted(parameters["DefaultProvider"]["AllowedValues"]) == sorted(PROVIDERS)
    assert sorted(parameters["DefaultMode"]["AllowedValues"]) == modes
    for parameter, names in (("AllowedProviders", list(PROVIDERS)), ("AllowedModes", modes)):
        pattern = parameters[parameter]["AllowedPattern"]
        assert re.fullmatch(pattern, " ".join(names)), parameter
        assert not re.fullmatch(pattern, "someone-else"), parameter
