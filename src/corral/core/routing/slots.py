"""Slot routing (``--routing slots``): most free slots first.

Theory of operation
-------------------
Filters only: the model pool, then the fleet's index of backends with a free slot
(most free first, ties in rotating order), or, when no backend has the model loaded,
the backends that can load it (router mode), then the pin, the adapter, then each
:class:`Rule`. The first candidate no filter vetoes wins; for a request naming a LoRA
adapter, of the first ``breadth`` such candidates the one with the best adapter
affinity wins (:func:`~corral.core.routing.scorers.adapter_affinity`: a server already
running that adapter, then an idle one), ties to the one with more free slots.
Cost does not grow with the fleet: the index is bucketed by free slots. Nothing of
the request's body is read.
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.core.fleet import Backend, Fleet
from corral.core.routing.decision import Decision, Dispatch, Wait
from corral.core.routing.filters import (
    Rule,
    answers,
    has_adapter,
    loaders,
    pinned,
    resolve_pools,
    with_free_slot,
)
from corral.core.routing.request import RequestInfo
from corral.core.routing.scorers import adapter_affinity


class SlotPolicy:
    """Most free slots first, with optional rules. See the module docstring."""

    name = "slots"
    needs_prompt = False
    """Whether the proxy must give it the request's canonical text (``RequestInfo.prompt``)."""
    observe = None
    """No view of its own: the fleet's events are not needed (and not built)."""
    affinity = None
    """No preference among waiting requests for a freed slot: the buffer's order holds."""
    waiter_keys = None
    held_keys = None

    def __init__(self, rules: Sequence[Rule] = (), breadth: int = 8) -> None:
        self.rules = tuple(rules)
        self.breadth = breadth
        """Candidates weighed by adapter affinity, at most (requests naming an adapter)."""

    def pick(self, fleet: Fleet, request: RequestInfo) -> Decision:
        pools = resolve_pools(fleet, request)
        if not isinstance(pools, list):
            return pools
        best, best_affinity, seen = None, -1, 0
        for backend in pinned(with_free_slot(fleet, pools), request):
            if not self._accepts(backend, request):
                continue
            if request.adapter is None:
                best = backend
                break
            affinity = adapter_affinity(backend, request.adapter)
            if affinity > best_affinity:  # ties: the earlier (more free slots)
                best, best_affinity = backend, affinity
            seen += 1
            if affinity == 2 or seen >= self.breadth:
                break
        if best is not None:
            if request.backend_id:
                request.note.reason = "pinned"
            else:
                request.note.reason = "adapter" if best_affinity == 2 else "slots"
            return Dispatch(best.id)
        for backend in pinned(loaders(fleet, pools), request):
            if self._accepts(backend, request):
                request.note.reason = "load"
                return Dispatch(backend.id)
        return Wait("no free slot")

    def _accepts(self, backend: Backend, request: RequestInfo) -> bool:
        return (
            answers(backend, request)
            and has_adapter(backend, request)
            and all(rule.accepts(backend, request) for rule in self.rules)
        )

    def __repr__(self) -> str:
        return f"<Policy most-free-slots rules={list(self.rules)}>"
