from __future__ import annotations

from collections.abc import Iterator

import pytest
import respx
from handlers.helpers import TaskStream
from support.aws import WAVESPEED_BASE_URL, Stack, configure_cometapi
from support.moto_stack import moto_stack  # noqa: F401 - the `stack` fixture, for this tier's tests


@pytest.fixture
def provider_http() -> Iterator[respx.MockRouter]:
    """Every HTTP call the functions make goes to this router; an unmatched call fails the test."""
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        router.route(host="presigned.invalid").pass_through(False)
        yield router


@pytest.fixture
def wavespeed_base() -> str:
    return WAVESPEED_BASE_URL


@pytest.fixture
def cometapi(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """CometAPI configured as a second provider: its secret in moto, its secret id and base URL in the environment."""
    from avatar_pipeline import wiring

    for name, value in configure_cometapi().items():
        monkeypatch.setenv(name, value)
    wiring.pipeline.cache_clear()  # built again, from the environment as it is now


@pytest.fixture
def task_stream(stack: Stack) -> TaskStream:
    """The task table's stream, read from its start, for the dispatcher (see TaskStream)."""
    return TaskStream(stack)
