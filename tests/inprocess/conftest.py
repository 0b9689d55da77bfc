"""Tier 2 fixtures (see tests/support/harness.py)."""

from collections.abc import AsyncIterator

import pytest
from support.harness import Harness


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        await h.close()
