"""Tier 2 fixtures (see tests/support/harness.py)."""

from support.harness import harness_fixture

__all__ = ["harness_fixture"]
