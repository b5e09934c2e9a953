from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from moto import mock_aws
from support.aws import REGION, Stack, create_stack

from avatar_local.twin.moto_dynamodb import faithful_dynamodb_writes

# Handler modules build their Powertools objects at import, which happens at collection: set these first.
os.environ.update(
    {
        "POWERTOOLS_SERVICE_NAME": "avatar-pipeline",
        "POWERTOOLS_METRICS_NAMESPACE": "AvatarPipelineTests",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
)


@pytest.fixture(autouse=True)
def _offline_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test can reach real AWS: fake credentials, a fixed region, no profile."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The pipeline's AWS resources in moto, with the functions' environment pointing at them."""
    from avatar_pipeline import wiring

    with mock_aws(), faithful_dynamodb_writes():
        created = create_stack()
        for name, value in created.environment().items():
            monkeypatch.setenv(name, value)
        wiring.pipeline.cache_clear()
        yield created
        wiring.pipeline.cache_clear()
