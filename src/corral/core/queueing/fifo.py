"""``--queue fifo``: oldest first across all queues, classes and tenants alike.

Corral's buffer before priorities: a request is served before every request that
arrived after it, unless they want different servers (no head-of-line blocking
across models). Tenants' limits and shares of the buffer still apply (they are
the scheduler's and the admission's, not the order's). ``batch`` requests are not
held back: use ``priority`` or ``fair`` for that.
"""

from __future__ import annotations

from corral.core.queueing._queue import Queue


class FifoQueue(Queue):
    """Arrival order only (the base :meth:`Queue.order`)."""

    name = "fifo"
