"""The request buffer: where requests wait for a free slot.

Theory of operation
-------------------
A bounded FIFO with a deadline per entry. Entries are grouped by the model they ask
for, each group a FIFO queue, and carry a global sequence number, so that:

- requests are served oldest first across groups;
- a request for a model with no free slot does not block one for a model that has
  one (no head-of-line blocking across models);
- finding the next request to serve looks at one head per group, not at every entry.

Entries removed from the middle (a client that hung up) are marked cancelled and
skipped when they reach a head, so cancelling is O(1). The buffer holds an opaque
``token`` per entry (the async layer's future); it never looks inside.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from corral.core.routing.request import RequestInfo


class BufferFull(Exception):
    """The buffer holds ``capacity`` requests already."""


@dataclass(eq=False, slots=True)
class Waiter:
    seq: int
    request: RequestInfo
    enqueued_at: float
    deadline: float
    token: object = field(default=None, repr=False)
    done: bool = False  # served, expired or cancelled

    def waited(self, now: float) -> float:
        return now - self.enqueued_at


class Buffer:
    """A bounded, deadline-aware FIFO of waiting requests. Pure: time passed in."""

    def __init__(self, capacity: int, timeout: float) -> None:
        if capacity < 0:
            raise ValueError("capacity cannot be negative")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.capacity = capacity
        self.timeout = timeout
        self._groups: dict[tuple[str | None, ...], deque[Waiter]] = {}
        self._seq = itertools.count()
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, request: RequestInfo, now: float, token: object = None) -> Waiter:
        if self._live >= self.capacity:
            raise BufferFull(f"{self._live} requests are already waiting (the limit)")
        waiter = Waiter(next(self._seq), request, now, now + self.timeout, token)
        self._groups.setdefault(request.group, deque()).append(waiter)
        self._live += 1
        return waiter

    def cancel(self, waiter: Waiter) -> bool:
        """Forget a waiting request; ``False`` if it was already served or expired."""
        if waiter.done:
            return False
        waiter.done = True
        self._live -= 1
        return True

    def heads(self) -> list[Waiter]:
        """The oldest live request of each group, oldest first."""
        heads = []
        for group in list(self._groups):
            queue = self._groups[group]
            while queue and queue[0].done:
                queue.popleft()
            if queue:
                heads.append(queue[0])
            else:
                del self._groups[group]
        heads.sort(key=lambda w: w.seq)
        return heads

    def take(self, waiter: Waiter) -> None:
        """Remove a head returned by :meth:`heads` to serve it."""
        queue = self._groups[waiter.request.group]
        if queue[0] is not waiter or waiter.done:
            raise ValueError(f"{waiter!r} is not at the head of its queue")
        queue.popleft()
        waiter.done = True
        self._live -= 1

    def expire(self, now: float) -> list[Waiter]:
        """Remove and return the requests whose deadline has passed."""
        expired = []
        for queue in self._groups.values():
            while queue and (queue[0].done or queue[0].deadline <= now):
                waiter = queue.popleft()
                if not waiter.done:
                    waiter.done = True
                    self._live -= 1
                    expired.append(waiter)
        return expired

    def next_deadline(self) -> float | None:
        deadlines = [w.deadline for w in self.heads()]
        return min(deadlines) if deadlines else None

    def __iter__(self) -> Iterator[Waiter]:
        live = [w for q in self._groups.values() for w in q if not w.done]
        return iter(sorted(live, key=lambda w: w.seq))

    def by_model(self) -> dict[str | None, int]:
        counts: dict[str | None, int] = {}
        for waiter in self:
            counts[waiter.request.model] = counts.get(waiter.request.model, 0) + 1
        return counts

    def __repr__(self) -> str:
        return f"<Buffer [{self._live}/{self.capacity} waiting | timeout {self.timeout:g}s]>"
