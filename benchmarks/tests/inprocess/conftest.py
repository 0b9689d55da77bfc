"""Tier 2 fixtures for the comparison harness: Corral's own (tests/support/harness.py)."""

from support.harness import harness_fixture

__all__ = ["harness_fixture"]
