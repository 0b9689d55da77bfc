"""The request buffer: where requests wait for a free slot.

The buffer is a queue discipline (:mod:`corral.core.queueing`); :class:`Buffer` is
the ``fifo`` one, Corral's buffer before priorities: oldest first across groups, no
head-of-line blocking across models, deadlines, O(1) cancel. This module keeps the
old names.
"""

from corral.core.queueing import BufferFull, FifoQueue, Queue, Waiter

Buffer = FifoQueue

__all__ = ["Buffer", "BufferFull", "Queue", "Waiter"]
