"""``--queue fair``: priority classes, then weighted fair share between tenants.

Theory of operation
-------------------
The class rules of ``priority`` (higher classes first, aging, idle capacity only
for ``batch``) come first. Within a class, heads are tried tenant by tenant in
start-time fair queueing order, with the service counted in **slot-seconds**: each
tenant has a virtual time. When one of its requests is served, its start tag is
the larger of the tenant's virtual time and the start tag of the last request
served (so a tenant that was idle gets no credit for it), and the tenant's virtual
time moves to that tag plus the seconds its requests have lately held a slot
(their mean), divided by its weight. When the request ends, the scheduler says how
long it held its slot (:meth:`FairQueue.finished`) and the estimate is corrected by
the difference. The head of the tenant with the lowest tag goes first; ties in
arrival order. Over a busy period each tenant with requests waiting gets slot time
in proportion to its weight, however long the others' requests are.

Order alone cannot keep a light tenant's latency while another floods: whenever it
sends a request, the flood holds every slot, for as long as a flooding request
runs. So a tenant with more requests in flight and waiting (for its weight)
**yields** to one with fewer that is within its weighted share of the slots
(:meth:`FairQueue.yields`): the scheduler then leaves free the headroom that
tenant's recent traffic needs (:mod:`corral.core.scheduler`). The yielding tenant
keeps at least one slot, and once its class is due (aging) it yields to no one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from corral.core.queueing._queue import Waiter
from corral.core.queueing.classes import Priority
from corral.core.queueing.priority import PriorityQueue

if TYPE_CHECKING:
    from corral.core.routing.request import RequestInfo

_LEARN = 0.1  # weight of each finished request in a tenant's mean slot-seconds


class FairQueue(PriorityQueue):
    """Weighted fair share of slot-seconds between tenants within each class."""

    name = "fair"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._vtime: dict[str, float] = {}
        self._virtual = 0.0  # the start tag of the last request served
        self._mean: dict[str, float] = {}  # slot-seconds per request, lately, per tenant
        self._charged: dict[int, float] = {}  # id(request) -> slot-seconds charged

    def tag(self, tenant: str) -> float:
        """The virtual time at which this tenant's next request would start."""
        return max(self._vtime.get(tenant, 0.0), self._virtual)

    def served(self, waiter: Waiter, now: float | None) -> None:
        super().served(waiter, now)
        name = waiter.request.tenant
        start = self.tag(name)
        self._virtual = start
        cost = self._mean.get(name, 1.0)
        self._charged[id(waiter.request)] = cost
        self._vtime[name] = start + cost / self.tenant(name).weight

    def finished(self, request: RequestInfo, seconds: float) -> None:
        """Correct the tenant's virtual time by the slot-seconds the request held."""
        name = request.tenant
        mean = self._mean.get(name)
        self._mean[name] = seconds if mean is None else mean + _LEARN * (seconds - mean)
        charged = self._charged.pop(id(request), None)
        if charged is not None:  # served from the buffer (not dispatched on arrival)
            self._vtime[name] = (
                self._vtime.get(name, 0.0) + (seconds - charged) / self.tenant(name).weight
            )

    def yields(
        self, request: RequestInfo, priority: Priority, tenant: str, running: Mapping[str, int]
    ) -> bool:
        """``batch`` yields to the higher classes; a tenant with more requests in
        flight and waiting (for its weight) yields to another of the same or a
        higher class."""
        if super().yields(request, priority, tenant, running):
            return True
        own = request.tenant
        return (
            tenant != own
            and priority >= request.priority
            and (running.get(own, 0) + self.waiting(own)) / self.tenant(own).weight
            > (running.get(tenant, 0) + self.waiting(tenant)) / self.tenant(tenant).weight
        )

    def order(self, heads: list[Waiter], now: float | None) -> list[Waiter]:
        heads.sort(key=lambda w: (*self._class_rank(w, now), self.tag(w.request.tenant), w.seq))
        return heads
