"""Routing policies by name, as ``--routing`` chooses them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from corral.core.events import FleetEvent
from corral.core.fleet import Fleet
from corral.core.routing.decision import Decision
from corral.core.routing.prefix import PrefixPolicy
from corral.core.routing.request import RequestInfo
from corral.core.routing.slots import SlotPolicy


class RoutingPolicy(Protocol):
    """What the scheduler calls. ``observe``, when not None, is subscribed to the
    fleet's events; ``needs_prompt`` tells the proxy to give ``RequestInfo.prompt``;
    ``affinity``, when not None, says how many prompt tokens of a request a backend
    probably holds (the scheduler gives a freed slot to the waiting request it suits
    best, within bounds: :meth:`~corral.core.scheduler.Scheduler.assign`);
    ``waiter_keys`` and ``held_keys``, with it, let the scheduler find waiting requests
    a backend suits beyond the window it weighs (keys a request is found by; keys of
    what a backend holds, deepest first)."""

    name: str
    needs_prompt: bool

    def pick(self, fleet: Fleet, request: RequestInfo) -> Decision: ...

    @property
    def observe(self) -> Callable[[FleetEvent], None] | None: ...

    @property
    def affinity(self) -> Callable[[str, RequestInfo], int] | None: ...

    @property
    def waiter_keys(self) -> Callable[[RequestInfo], list[int]] | None: ...

    @property
    def held_keys(self) -> Callable[[str], list[int]] | None: ...


@dataclass(frozen=True, slots=True)
class RoutingOptions:
    """The settings a policy may read (see ``config/tables.py``)."""

    prefix_max_wait: float = 10.0
    prefix_imbalance: int = 2


def _slots(options: RoutingOptions, clock: Callable[[], float] | None) -> RoutingPolicy:
    return SlotPolicy()


def _prefix(options: RoutingOptions, clock: Callable[[], float] | None) -> RoutingPolicy:
    return PrefixPolicy(
        max_wait=options.prefix_max_wait, imbalance=options.prefix_imbalance, clock=clock
    )


POLICIES: dict[str, Callable[[RoutingOptions, Callable[[], float] | None], RoutingPolicy]] = {
    "slots": _slots,
    "prefix": _prefix,
}
"""Name -> factory. A new policy is a module in this package and a line here."""


def make_policy(
    name: str,
    options: RoutingOptions | None = None,
    clock: Callable[[], float] | None = None,
) -> RoutingPolicy:
    """The policy called ``name``. Raises ValueError for an unknown name."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(POLICIES)}") from None
    return factory(options or RoutingOptions(), clock)
