"""The `stack` fixture: the pipeline's AWS resources in moto, for the tests that run code against AWS's APIs.

Imported (as `moto_stack`, registered under the name `stack`) by the conftest of the tier that uses it, tests/handlers,
and by the one module elsewhere that does; so tests/unit's conftest chain loads none of the local twin's moto patches.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from moto import mock_aws

from avatar_local.twin.moto_dynamodb import faithful_dynamodb_writes
from support.aws import Stack, create_stack


@pytest.fixture(name="stack")
def moto_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The pipeline's AWS resources in moto, with the functions' environment pointing at them."""
    from avatar_pipeline import wiring

    with mock_aws(), faithful_dynamodb_writes():
        created = create_stack()
        for name, value in created.environment().items():
            monkeypatch.setenv(name, value)
        wiring.pipeline.cache_clear()
        yield created
        wiring.pipeline.cache_clear()
