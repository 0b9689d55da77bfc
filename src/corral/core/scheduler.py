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
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.core.buffer import Buffer, Waiter
from corral.core.fleet import Fleet
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
    def __init__(self, fleet: Fleet, policy: RoutingPolicy, buffer: Buffer) -> None:
        self.fleet = fleet
        self.policy = policy
        self.buffer = buffer
        if policy.observe is not None:  # a policy with its own view of the backends
            fleet.subscribe(policy.observe)

    def submit(
        self, request: RequestInfo, now: float, token: object = None
    ) -> Dispatch | Reject | Waiter:
        """Route a new request. Raises :class:`~corral.core.buffer.BufferFull`.

        A dispatch has its slot reserved already. A :class:`Waiter` is in the buffer.
        """
        decision = self.policy.pick(self.fleet, request)
        if isinstance(decision, Dispatch):
            self.fleet.reserve(decision.backend_id, now, request, request.adapter)
            return decision
        if isinstance(decision, Reject):
            return decision
        return self.buffer.push(request, now, token)

    def assign(self, now: float | None = None) -> list[Assigned | Refused]:
        """Give free slots to buffered requests, oldest first."""
        outcomes: list[Assigned | Refused] = []
        while len(self.buffer) and self.fleet.has_free_slot():
            progressed = False
            for waiter in self.buffer.heads():
                decision = self.policy.pick(self.fleet, waiter.request)
                if isinstance(decision, Wait):
                    continue
                self.buffer.take(waiter)
                if isinstance(decision, Dispatch):
                    self.fleet.reserve(
                        decision.backend_id, now, waiter.request, waiter.request.adapter
                    )
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

    def __repr__(self) -> str:
        return f"<Scheduler {self.fleet!r} {self.buffer!r}>"
