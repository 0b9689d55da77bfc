"""Slot routing (``--routing slots``): most free slots first.

Theory of operation
-------------------
Filters only: the model pool, then the fleet's index of backends with a free slot
(most free first, ties in rotating order), or, when no backend has the model loaded,
the backends that can load it (router mode), then the pin, then each :class:`Rule`.
The first candidate no filter vetoes wins. Cost does not grow with the fleet: the
index is bucketed by free slots. Nothing of the request's body is read.
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.core.fleet import Fleet
from corral.core.routing.decision import Decision, Dispatch, Wait
from corral.core.routing.filters import (
    Rule,
    answers,
    loaders,
    pinned,
    resolve_pools,
    with_free_slot,
)
from corral.core.routing.request import RequestInfo


class SlotPolicy:
    """Most free slots first, with optional rules. See the module docstring."""

    name = "slots"
    needs_prompt = False
    """Whether the proxy must give it the request's canonical text (``RequestInfo.prompt``)."""
    observe = None
    """No view of its own: the fleet's events are not needed (and not built)."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self.rules = tuple(rules)

    def pick(self, fleet: Fleet, request: RequestInfo) -> Decision:
        pools = resolve_pools(fleet, request)
        if not isinstance(pools, list):
            return pools
        for backend in pinned(with_free_slot(fleet, pools), request):
            if answers(backend, request) and all(
                rule.accepts(backend, request) for rule in self.rules
            ):
                request.note.reason = "pinned" if request.backend_id else "slots"
                return Dispatch(backend.id)
        for backend in pinned(loaders(fleet, pools), request):
            if answers(backend, request) and all(
                rule.accepts(backend, request) for rule in self.rules
            ):
                request.note.reason = "load"
                return Dispatch(backend.id)
        return Wait("no free slot")

    def __repr__(self) -> str:
        return f"<Policy most-free-slots rules={list(self.rules)}>"
