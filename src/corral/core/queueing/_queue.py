"""What every queue discipline shares: bounded admission, deadlines, O(1) cancel.

Theory of operation
-------------------
Waiting requests are kept in FIFO queues keyed by ``(group, priority, tenant)``:
the group (model, pinned backend, API family: ``RequestInfo.group``) keeps a
request that cannot go anywhere yet from holding up others (no head-of-line
blocking), and the class and tenant let a discipline choose among heads without
looking at every entry. Within one queue, arrival order holds; so do deadlines (one
timeout per class), which keeps expiry at the heads.

A discipline is a subclass that says only in which order the heads are tried
(:meth:`Queue.order`), what serving one changes (:meth:`Queue.served`) and whether
a head may use only idle capacity (:meth:`Queue.idle_only`). The scheduler tries
the heads in that order and takes the first the routing policy can place.

Admission counts requests and bytes (the body each one holds in memory):
``capacity`` requests and ``max_bytes`` bytes at most (a request larger than
``max_bytes`` is still taken into an empty buffer, so ``--max-body-size`` above it
does not refuse everything), and per tenant its share (:meth:`Tenant.buffer_share`).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from corral.core.queueing.classes import DEFAULT_TENANT, Priority, Tenant

if TYPE_CHECKING:
    from corral.core.routing.request import RequestInfo

Key = tuple[tuple[str | None, ...], Priority, str]


class BufferFull(Exception):
    """The buffer (or the tenant's share of it) holds as many requests or bytes as
    it may; the client gets 429 with Retry-After."""


@dataclass(eq=False, slots=True)
class Waiter:
    """One waiting request; ``token`` is the async layer's (a future), never read."""

    seq: int
    request: RequestInfo
    enqueued_at: float
    deadline: float
    token: object = field(default=None, repr=False)
    done: bool = False  # served, expired or cancelled
    passed_at: float | None = None
    """When it was first passed over, as the head of its queue, for a request behind
    it (the scheduler's cache affinity); None while it never was."""

    @property
    def key(self) -> Key:
        return self.request.group, self.request.priority, self.request.tenant

    def waited(self, now: float) -> float:
        return now - self.enqueued_at


@dataclass(frozen=True, slots=True)
class QueueOptions:
    """The settings every discipline reads (see ``config/tables.py``).

    Attributes:
        capacity: requests that may wait at once.
        timeout: seconds a request may wait (``batch`` requests: ``batch_timeout``).
        max_bytes: body bytes that may wait at once (None: no limit).
        batch_timeout: seconds a ``batch`` request may wait (None: ``timeout``).
        aging: seconds after which a waiting class that got no slot is served next
            (the starvation bound; ``priority`` and ``fair``).
        tenants: the named tenants; others are :data:`DEFAULT_TENANT`.
    """

    capacity: int = 1000
    timeout: float = 30.0
    max_bytes: int | None = None
    batch_timeout: float | None = None
    aging: float = 10.0
    tenants: Mapping[str, Tenant] = field(default_factory=dict)


class Queue:
    """The buffer: a bounded, deadline-aware set of FIFO queues. Pure: time passed in.

    Subclasses are the disciplines (``fifo``, ``priority``, ``fair``)."""

    name = "base"

    def __init__(self, capacity: int, timeout: float, options: QueueOptions | None = None) -> None:
        if capacity < 0:
            raise ValueError("capacity cannot be negative")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        options = options or QueueOptions(capacity, timeout)
        self.capacity = capacity
        self.timeout = timeout
        self.max_bytes = options.max_bytes
        self.batch_timeout = options.batch_timeout or timeout
        self.aging = options.aging
        self.tenants: dict[str, Tenant] = dict(options.tenants)
        self.tenants.setdefault(DEFAULT_TENANT, Tenant(DEFAULT_TENANT))
        total = sum(t.weight for t in self.tenants.values())
        self._shares = {n: t.buffer_share(capacity, total) for n, t in self.tenants.items()}
        self._queues: dict[Key, deque[Waiter]] = {}
        self._seq = itertools.count()
        self._live = 0
        self._bytes = 0
        self._per_tenant: dict[str, int] = {}
        self._per_class: dict[Priority, int] = {}

    # ------------------------------------------------------------ admission
    def __len__(self) -> int:
        return self._live

    @property
    def bytes(self) -> int:
        """Body bytes of the requests waiting now."""
        return self._bytes

    def tenant(self, name: str) -> Tenant:
        """The tenant of this name (the default one's limits for unknown names)."""
        return self.tenants.get(name) or self.tenants[DEFAULT_TENANT]

    def push(self, request: RequestInfo, now: float, token: object = None) -> Waiter:
        """Add a waiting request. Raises :class:`BufferFull` past any bound."""
        if self._live >= self.capacity:
            raise BufferFull(
                f"{self._live} requests are already waiting, the buffer's limit "
                "(--max-buffered-requests)"
            )
        if (
            self.max_bytes is not None
            and self._live
            and self._bytes + request.size > self.max_bytes
        ):
            raise BufferFull(
                f"{self._bytes} bytes are already waiting; {request.size} more would pass "
                f"the limit of {self.max_bytes} (--max-buffered-bytes)"
            )
        name = request.tenant
        waiting = self._per_tenant.get(name, 0)
        share = self._shares.get(name, self._shares[DEFAULT_TENANT])
        if waiting >= share:
            raise BufferFull(
                f"tenant {name!r} has {waiting} requests waiting, its share of the buffer "
                "(max_buffered, docs/tenants.md)"
            )
        timeout = self.batch_timeout if request.priority is Priority.BATCH else self.timeout
        waiter = Waiter(next(self._seq), request, now, now + timeout, token)
        self.arrived(waiter, now, first=not self._per_class.get(request.priority))
        self._queues.setdefault(waiter.key, deque()).append(waiter)
        self._count(waiter, +1)
        return waiter

    def _count(self, waiter: Waiter, delta: int) -> None:
        self._live += delta
        self._bytes += delta * waiter.request.size
        name = waiter.request.tenant
        self._per_tenant[name] = self._per_tenant.get(name, 0) + delta
        cls = waiter.request.priority
        self._per_class[cls] = self._per_class.get(cls, 0) + delta

    def cancel(self, waiter: Waiter) -> bool:
        """Forget a waiting request; ``False`` if it was already served or expired."""
        if waiter.done:
            return False
        waiter.done = True
        self._count(waiter, -1)
        return True

    # -------------------------------------------------------------- serving
    def heads(self, now: float | None = None) -> list[Waiter]:
        """The oldest live request of each queue, in the order to try them."""
        heads = []
        for key in list(self._queues):
            queue = self._queues[key]
            while queue and queue[0].done:
                queue.popleft()
            if queue:
                heads.append(queue[0])
            else:
                del self._queues[key]
        return self.order(heads, now)

    def behind(self, head: Waiter, window: int) -> list[Waiter]:
        """The live requests among the ``window`` entries behind ``head`` in its own
        queue (same group, class and tenant), oldest first: O(window)."""
        queue = self._queues.get(head.key)
        if not queue or queue[0] is not head:
            return []
        return [w for w in itertools.islice(queue, 1, 1 + window) if not w.done]

    def take(self, waiter: Waiter, now: float | None = None) -> None:
        """Remove a head returned by :meth:`heads` to serve it."""
        queue = self._queues.get(waiter.key)
        if not queue or queue[0] is not waiter or waiter.done:
            raise ValueError(f"{waiter!r} is not at the head of its queue")
        queue.popleft()
        self._served(waiter, now)

    def take_behind(self, waiter: Waiter, now: float | None = None) -> None:
        """Remove a request :meth:`behind` returned, ahead of its head, to serve it
        (cost: its place in the queue). Raises ValueError for a head or a request no
        longer waiting."""
        queue = self._queues.get(waiter.key)
        if not queue or queue[0] is waiter or waiter.done:
            raise ValueError(f"{waiter!r} is not waiting behind a head")
        queue.remove(waiter)  # there: it is waiting (not done), so in its queue
        self._served(waiter, now)

    def _served(self, waiter: Waiter, now: float | None) -> None:
        waiter.done = True
        self._count(waiter, -1)
        self.served(waiter, now)

    def expire(self, now: float) -> list[Waiter]:
        """Remove and return the requests whose deadline has passed."""
        expired = []
        for queue in self._queues.values():
            while queue and (queue[0].done or queue[0].deadline <= now):
                waiter = queue.popleft()
                if not waiter.done:
                    waiter.done = True
                    self._count(waiter, -1)
                    expired.append(waiter)
        return expired

    def next_deadline(self) -> float | None:
        deadlines = [w.deadline for w in self.heads()]
        return min(deadlines) if deadlines else None

    # ---------------------------------------------------------- discipline
    def order(self, heads: list[Waiter], now: float | None) -> list[Waiter]:
        """The heads in the order the scheduler tries them (the discipline)."""
        heads.sort(key=lambda w: w.seq)
        return heads

    def arrived(self, waiter: Waiter, now: float, *, first: bool) -> None:
        """A request arrived; ``first``: none of its class was waiting (a discipline
        may note the time)."""

    def served(self, waiter: Waiter, now: float | None) -> None:
        """A head was taken to be served (a discipline may note it)."""

    def idle_only(self, waiter: Waiter, now: float | None) -> bool:
        """True if this head may take a slot only while the reserve stays free."""
        return False

    def due(self, priority: Priority, now: float | None) -> bool:
        """Whether this class has waited past its aging bound (it then no longer
        yields to other tenants, see :meth:`yields`)."""
        return False

    def yields(
        self, request: RequestInfo, priority: Priority, tenant: str, running: Mapping[str, int]
    ) -> bool:
        """Whether ``request`` must leave headroom for the traffic of this class and
        tenant (the scheduler sizes it from that traffic's recent slots);
        ``running``: requests in flight per tenant."""
        return False

    def finished(self, request: RequestInfo, seconds: float) -> None:
        """A request this buffer served ended after holding its slot ``seconds``."""

    def waiting(self, tenant: str) -> int:
        """Requests of this tenant waiting now."""
        return self._per_tenant.get(tenant, 0)

    # -------------------------------------------------------------- reading
    def __iter__(self) -> Iterator[Waiter]:
        live = [w for q in self._queues.values() for w in q if not w.done]
        return iter(sorted(live, key=lambda w: w.seq))

    def by_model(self) -> dict[str | None, int]:
        return _count_by(w.request.model for w in self)

    def by_tenant(self) -> dict[str, int]:
        """Waiting requests per tenant name (those with any)."""
        return {n: c for n, c in self._per_tenant.items() if c}

    def by_priority(self) -> dict[str, int]:
        return _count_by(w.request.priority.label for w in self)

    def __repr__(self) -> str:
        name = "" if self.name == "fifo" else f" {self.name}"
        size = f", {self._bytes} bytes" if self._bytes else ""
        counts = f"{self._live}/{self.capacity} waiting{size}"
        return f"<Buffer{name} [{counts} | timeout {self.timeout:g}s]>"


K = TypeVar("K")


def _count_by(keys: Iterable[K]) -> dict[K, int]:
    counts: dict[K, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return counts
