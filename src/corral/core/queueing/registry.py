"""Queue disciplines by name, as ``--queue`` chooses them."""

from __future__ import annotations

from corral.core.queueing._queue import Queue, QueueOptions
from corral.core.queueing.fair import FairQueue
from corral.core.queueing.fifo import FifoQueue
from corral.core.queueing.priority import PriorityQueue

DISCIPLINES: dict[str, type[Queue]] = {
    "fifo": FifoQueue,
    "priority": PriorityQueue,
    "fair": FairQueue,
}


def make_queue(name: str, options: QueueOptions) -> Queue:
    """The buffer for ``--queue NAME``. Raises :class:`ValueError` for an unknown name."""
    try:
        kind = DISCIPLINES[name]
    except KeyError:
        raise ValueError(
            f"unknown queue discipline {name!r}; use one of {', '.join(DISCIPLINES)}"
        ) from None
    return kind(options.capacity, options.timeout, options)
