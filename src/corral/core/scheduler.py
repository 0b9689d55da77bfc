"""The scheduler: the policy, the fleet and the buffer working together. Pure logic.

Theory of operation
-------------------
A request arrives: :meth:`Scheduler.submit` asks the policy. A dispatch reserves the
slot right away (before any I/O); a wait puts the request in the buffer (or refuses
it when the buffer is full); a reject goes back to the client.

Whenever the fleet changes in a way that may free capacity (a request finished, an
agent registered or reported, a server came back), the caller runs
:meth:`Scheduler.assign`, which hands free slots to waiting requests, oldest first,
and returns what happened so the async layer can wake exactly those requests. The
buffer is event-driven: nothing polls it. :meth:`Scheduler.expire` removes requests
that waited too long.

Who goes first is the buffer's discipline (:mod:`corral.core.queueing`): it orders
the heads, and the scheduler takes the first one the policy can place. Two rules
are about the fleet, so they are the scheduler's, for every discipline:

- a tenant with ``max_concurrent`` requests in flight gets no slot (its requests
  wait, even when slots are free); :meth:`Scheduler.finished` counts them down;
- a head the discipline says is *idle only* (a ``batch`` request not yet due) takes
  a slot only if the model's free slots stay at least ``reserve`` of its slots
  (rounded down) once it has: ``--interactive-reserve``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from corral.core.fleet import Fleet
from corral.core.queueing import Queue, Waiter
from corral.core.routing import Dispatch, Reject, RequestInfo, RoutingPolicy, Wait


@dataclass(frozen=True, slots=True)
class Assigned:
    """A buffered request got a slot (already reserved) on this backend."""

    waiter: Waiter
    backend_id: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A buffered request can no longer be served (its model is unknown now)."""

    waiter: Waiter
    reject: Reject


class Scheduler:
    def __init__(
        self, fleet: Fleet, policy: RoutingPolicy, buffer: Queue, *, reserve: float = 0.0
    ) -> None:
        """``reserve``: share of each model's slots idle-only requests leave free
        (``--interactive-reserve``, 0 <= reserve < 1)."""
        if not 0.0 <= reserve < 1.0:
            raise ValueError("the interactive reserve is a share: 0 or more, below 1")
        self.fleet = fleet
        self.policy = policy
        self.buffer = buffer
        self.reserve = reserve
        self._running: dict[int, str] = {}  # id(request) -> tenant, while in flight
        self._tenant_running: dict[str, int] = {}
        if policy.observe is not None:  # a policy with its own view of the backends
            fleet.subscribe(policy.observe)

    def submit(
        self, request: RequestInfo, now: float, token: object = None
    ) -> Dispatch | Reject | Waiter:
        """Route a new request. Raises :class:`~corral.core.buffer.BufferFull`.

        A dispatch has its slot reserved already. A :class:`Waiter` is in the buffer.
        """
        if self._at_limit(request):
            return self.buffer.push(request, now, token)
        decision = self.policy.pick(self.fleet, request)
        if isinstance(decision, Dispatch):
            if self._idle_only(request, now) and not self._leaves_reserve(decision.backend_id):
                return self.buffer.push(request, now, token)
            self._start(decision.backend_id, now, request)
            return decision
        if isinstance(decision, Reject):
            return decision
        return self.buffer.push(request, now, token)

    def assign(self, now: float | None = None) -> list[Assigned | Refused]:
        """Give free slots to buffered requests, in the discipline's order."""
        outcomes: list[Assigned | Refused] = []
        while len(self.buffer) and self.fleet.has_free_slot():
            progressed = False
            for waiter in self.buffer.heads(now):
                if self._at_limit(waiter.request):
                    continue
                decision = self.policy.pick(self.fleet, waiter.request)
                if isinstance(decision, Wait):
                    continue
                if (
                    isinstance(decision, Dispatch)
                    and self.buffer.idle_only(waiter, now)
                    and not self._leaves_reserve(decision.backend_id)
                ):
                    continue
                self.buffer.take(waiter, now)
                if isinstance(decision, Dispatch):
                    self._start(decision.backend_id, now, waiter.request)
                    outcomes.append(Assigned(waiter, decision.backend_id))
                else:
                    outcomes.append(Refused(waiter, decision))
                progressed = True
                break
            if not progressed:
                break
        return outcomes

    def expire(self, now: float) -> list[Waiter]:
        return self.buffer.expire(now)

    def finished(self, request: RequestInfo) -> None:
        """A request that got a slot (from :meth:`submit` or :meth:`assign`) ended:
        its tenant has one fewer in flight. Unknown requests are ignored."""
        tenant = self._running.pop(id(request), None)
        if tenant is not None:
            self._tenant_running[tenant] -= 1

    def running(self, tenant: str) -> int:
        """Requests of this tenant in flight now."""
        return self._tenant_running.get(tenant, 0)

    # -------------------------------------------------------------- rules
    def _start(self, backend_id: str, now: float | None, request: RequestInfo) -> None:
        self.fleet.reserve(backend_id, now, request, request.adapter)
        if id(request) not in self._running:
            self._running[id(request)] = request.tenant
            self._tenant_running[request.tenant] = self.running(request.tenant) + 1

    def _at_limit(self, request: RequestInfo) -> bool:
        limit = self.buffer.tenant(request.tenant).max_concurrent
        return limit is not None and self.running(request.tenant) >= limit

    def _idle_only(self, request: RequestInfo, now: float) -> bool:
        probe = Waiter(-1, request, now, now)
        return self.buffer.idle_only(probe, now)

    def _leaves_reserve(self, backend_id: str) -> bool:
        """Whether taking a slot on this backend leaves its model's reserve free."""
        if not self.reserve:
            return True
        model = self.fleet.get(backend_id).model
        total = free = 0
        for backend in self.fleet:
            if backend.routable and backend.model == model:
                total += backend.slots_total if backend.slots_share is None else backend.slots_share
                free += backend.free
        return free - 1 >= math.floor(self.reserve * total)

    def __repr__(self) -> str:
        return f"<Scheduler {self.fleet!r} {self.buffer!r}>"
