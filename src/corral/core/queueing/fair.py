"""``--queue fair``: priority classes, then weighted fair share between tenants.

Theory of operation
-------------------
The class rules of ``priority`` (higher classes first, aging, idle capacity only
for ``batch``) come first. Within a class, heads are tried tenant by tenant in
start-time fair queueing order: each tenant has a virtual time that grows by
``1 / weight`` with each request of its served, starting from the virtual time of
the last request served (so a tenant that was idle gets no credit for it). The
head of the tenant with the lowest virtual time goes first; ties in arrival order.
Over a busy period each tenant with requests waiting gets slots in proportion to
its weight, whatever the size of the others' bursts. Shares count requests, not
tokens or seconds.
"""

from __future__ import annotations

from corral.core.queueing._queue import Waiter
from corral.core.queueing.priority import PriorityQueue


class FairQueue(PriorityQueue):
    """Weighted fair share between tenants within each class."""

    name = "fair"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._vtime: dict[str, float] = {}
        self._virtual = 0.0  # the start tag of the last request served

    def tag(self, tenant: str) -> float:
        """The virtual time at which this tenant's next request would start."""
        return max(self._vtime.get(tenant, 0.0), self._virtual)

    def served(self, waiter: Waiter, now: float | None) -> None:
        super().served(waiter, now)
        name = waiter.request.tenant
        start = self.tag(name)
        self._virtual = start
        self._vtime[name] = start + 1.0 / self.tenant(name).weight

    def order(self, heads: list[Waiter], now: float | None) -> list[Waiter]:
        heads.sort(key=lambda w: (*self._class_rank(w, now), self.tag(w.request.tenant), w.seq))
        return heads
