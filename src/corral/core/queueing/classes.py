"""Priority classes and tenants: what the queue disciplines know of who asks.

Theory of operation
-------------------
A request has one :class:`Priority` (``batch`` < ``interactive`` < ``high``) and one
tenant name. Both come from the API key that authenticated it (a keys file names
its tenants, :mod:`corral.config.keys`) and, for the class, from the request's
``X-Corral-Priority`` header, capped at what the key allows
(:meth:`Tenant.priority_for`). A :class:`Tenant` carries the limits the scheduler
enforces: at most ``max_concurrent`` requests in flight, a ``weight`` in the fair
share (``--queue fair``), and at most ``max_buffered`` requests waiting (by default
its weight's share of ``--max-buffered-requests``).

Tenant names appear in metrics and logs; keys never do. The names come from the
operator's file, so their number is bounded; requests without a named key all
belong to :data:`DEFAULT_TENANT`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

DEFAULT_TENANT = "default"
"""The tenant of requests whose key names none (or when no key is required)."""


class Priority(enum.IntEnum):
    """A request's class: higher is served first. ``batch`` uses idle capacity only."""

    BATCH = 0
    INTERACTIVE = 1
    HIGH = 2

    @property
    def label(self) -> str:
        """The class's name as configured and as metrics and logs say it."""
        return self.name.lower()


def parse_priority(text: str) -> Priority:
    """``batch``, ``interactive`` or ``high`` (any case) to a :class:`Priority`.

    Raises:
        ValueError: for any other text.
    """
    try:
        return Priority[text.strip().upper()]
    except KeyError:
        names = ", ".join(p.label for p in Priority)
        raise ValueError(f"unknown priority class {text!r}; use one of {names}") from None


@dataclass(frozen=True, slots=True)
class Tenant:
    """One tenant's class and limits (from the keys file; see docs/tenants.md).

    Attributes:
        name: shown in metrics and logs (never the key).
        priority: the class of its requests when they ask for none.
        max_priority: the highest class its requests may ask for with
            ``X-Corral-Priority`` (a request may always ask for a lower one).
        max_concurrent: requests in flight at once; more wait (None: no limit).
        weight: its share in ``--queue fair`` (relative to other tenants'; > 0).
        max_buffered: requests it may have waiting; more get 429 (None: its
            weight's share of the buffer, see :meth:`buffer_share`).
    """

    name: str = DEFAULT_TENANT
    priority: Priority = Priority.INTERACTIVE
    max_priority: Priority | None = None
    max_concurrent: int | None = None
    weight: float = 1.0
    max_buffered: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a tenant needs a name")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"tenant {self.name!r}: weight must be a positive number")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"tenant {self.name!r}: max_concurrent must be at least 1")
        if self.max_buffered is not None and self.max_buffered < 0:
            raise ValueError(f"tenant {self.name!r}: max_buffered cannot be negative")
        if self.max_priority is not None and self.max_priority < self.priority:
            raise ValueError(f"tenant {self.name!r}: max_class is below its class")

    @property
    def cap(self) -> Priority:
        """The highest class this tenant's requests may ask for."""
        return self.max_priority if self.max_priority is not None else self.priority

    def priority_for(self, asked: str | None) -> Priority:
        """The class of a request that asked for ``asked`` (the header, or None).

        A class above :attr:`cap` is lowered to it; an unknown name is ignored (the
        tenant's own class), so a typo never raises a request's class.
        """
        if asked is None:
            return self.priority
        try:
            wanted = parse_priority(asked)
        except ValueError:
            return self.priority
        return min(wanted, self.cap)

    def buffer_share(self, capacity: int, total_weight: float) -> int:
        """Requests this tenant may have waiting in a buffer of ``capacity``:
        ``max_buffered``, or its weight's share (at least one)."""
        if self.max_buffered is not None:
            return min(self.max_buffered, capacity)
        return max(1, math.ceil(capacity * self.weight / total_weight))
