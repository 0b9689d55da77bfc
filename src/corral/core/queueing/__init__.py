"""Queue disciplines: who waits, and who goes first when a slot frees.

The map:

- ``_queue.py``: what every discipline shares (the buffer itself): FIFO queues
  keyed by ``(group, class, tenant)``, admission by requests, bytes and tenant
  share, deadlines, O(1) cancel; and the three hooks a discipline overrides.
- ``fifo.py`` (``--queue fifo``, the default): arrival order, as Corral always did.
- ``priority.py`` (``--queue priority``): classes, aging, idle capacity for batch.
- ``fair.py`` (``--queue fair``): classes, then weighted fair share of tenants.
- ``classes.py``: :class:`Priority` and :class:`Tenant`.
- ``registry.py``: disciplines by name.

The scheduler (:mod:`corral.core.scheduler`) enforces what is about the fleet:
tenants' concurrency limits and the interactive reserve.
"""

from corral.core.queueing._queue import BufferFull, Queue, QueueOptions, Waiter
from corral.core.queueing.classes import DEFAULT_TENANT, Priority, Tenant, parse_priority
from corral.core.queueing.fair import FairQueue
from corral.core.queueing.fifo import FifoQueue
from corral.core.queueing.priority import PriorityQueue
from corral.core.queueing.registry import DISCIPLINES, make_queue

__all__ = [
    "DEFAULT_TENANT",
    "DISCIPLINES",
    "BufferFull",
    "FairQueue",
    "FifoQueue",
    "Priority",
    "PriorityQueue",
    "Queue",
    "QueueOptions",
    "Tenant",
    "Waiter",
    "make_queue",
    "parse_priority",
]
