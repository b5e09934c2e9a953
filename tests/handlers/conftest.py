from __future__ import annotations

from collections.abc import Iterator

import pytest
import respx
from support.aws import WAVESPEED_BASE_URL


@pytest.fixture
def provider_http() -> Iterator[respx.MockRouter]:
    """Every HTTP call the functions make goes to this router; an unmatched call fails the test."""
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        router.route(host="presigned.invalid").pass_through(False)
        yield router


@pytest.fixture
def wavespeed_base() -> str:
    return WAVESPEED_BASE_URL
