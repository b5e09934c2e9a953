from __future__ import annotations

import os

import pytest
from support.aws import REGION

# Handler modules build their Powertools objects at import, which happens at collection: set these first.
os.environ.update(
    {
        "POWERTOOLS_SERVICE_NAME": "avatar-pipeline",
        "POWERTOOLS_METRICS_NAMESPACE": "AvatarPipelineTests",
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
