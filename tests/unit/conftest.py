"""Fixtures of the domain's service tests, which run on the in-memory fakes."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from support.fakes import World, make_world


@pytest.fixture
def w() -> World:
    return make_world()


@pytest.fixture
def busy_threads() -> Iterator[None]:
    """Switch threads as often as possible, so racing threads really interleave."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)
