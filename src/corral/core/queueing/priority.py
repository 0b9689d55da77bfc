"""``--queue priority``: higher classes first, arrival order within a class, aging.

Theory of operation
-------------------
Heads are tried class by class, highest first (``high``, ``interactive``,
``batch``), oldest first within a class. Two rules temper strict priority:

- **Idle capacity only for batch.** A ``batch`` request may take a slot only if,
  once it has, the model's free slots are still at least ``--interactive-reserve``
  of its slots (rounded down), and cover the *headroom* of the higher classes: the
  slots they held lately plus a margin for their bursts (the scheduler's rule,
  :mod:`corral.core.scheduler`). A batch request holds its slot for its whole run,
  often many times an interactive one's, so the slots it takes must be ones the
  interactive users will not need meanwhile. With a higher-class request waiting
  that the freed slot suits, that request is tried first and takes it.
- **Aging, the starvation bound.** Each class with requests waiting remembers when
  it last got a slot (or when it started waiting, if later). Once that is
  ``--priority-aging`` seconds ago, the class is *due*: its head is tried before
  every class that is not. Serving it makes it not due for another ``aging``
  seconds. So while requests of ``high`` or ``interactive`` wait, the class gets a
  slot at least once every ``aging`` seconds, as soon as a slot its head can use
  frees (a tenant at its concurrency limit excepted). A due ``batch`` head goes
  first too, but only onto idle capacity: it never breaks the reserve or the
  headroom, so batch work waits while the higher classes use (or lately used)
  the fleet, and completes on the capacity they leave.

Aging is per class, not per request: a flood of ten thousand ``batch`` requests is
not ten thousand overdue requests, and does not overtake interactive users.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from corral.core.queueing._queue import Queue, Waiter
from corral.core.queueing.classes import Priority

if TYPE_CHECKING:
    from corral.core.routing.request import RequestInfo


class PriorityQueue(Queue):
    """Strict priority between classes, with aging and a reserve for batch."""

    name = "priority"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._since: dict[Priority, float] = {}

    def arrived(self, waiter: Waiter, now: float, *, first: bool) -> None:
        if first:
            self._since[waiter.request.priority] = now

    def served(self, waiter: Waiter, now: float | None) -> None:
        if now is not None:
            self._since[waiter.request.priority] = now

    def due(self, priority: Priority, now: float | None) -> bool:
        """Whether this class has waited ``aging`` seconds without a slot."""
        since = self._since.get(priority)
        return now is not None and since is not None and now - since >= self.aging

    def idle_only(self, waiter: Waiter, now: float | None) -> bool:
        return waiter.request.priority is Priority.BATCH

    def yields(
        self, request: RequestInfo, priority: Priority, tenant: str, running: Mapping[str, int]
    ) -> bool:
        return request.priority is Priority.BATCH and priority > Priority.BATCH

    def order(self, heads: list[Waiter], now: float | None) -> list[Waiter]:
        heads.sort(key=lambda w: (*self._class_rank(w, now), w.seq))
        return heads

    def _class_rank(self, waiter: Waiter, now: float | None) -> tuple[float, float, int]:
        priority = waiter.request.priority
        if self.due(priority, now):
            return 0, self._since[priority], 0
        return 1, 0.0, -priority

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f" aging {self.aging:g}s]>"
