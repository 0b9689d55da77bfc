"""Time, passed in.

Everything in ``corral.core`` takes ``now`` as an argument; the async layers read it
from a :class:`Clock`. Tests use :class:`ManualClock` and never sleep for a timeout.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences are meaningful)."""
        ...


class MonotonicClock:
    """The real clock: :func:`time.monotonic`."""

    def now(self) -> float:
        return time.monotonic()

    def __repr__(self) -> str:
        return "<MonotonicClock>"


class ManualClock:
    """A clock that moves only when told to; for tests."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds

    def __repr__(self) -> str:
        return f"<ManualClock t={self._now:.3f}>"
