"""Flow control over one asyncio transport, both ways: written once for the inference
listener's connections (:mod:`corral.balancer.http_server`) and the pool's
(:mod:`corral.balancer.upstream`).

- *Reading*: the protocol stops reading from its peer while what the peer sent has
  nowhere to go (requests queued behind a running one; a response the client's side
  cannot take yet), and starts again when it has. :meth:`FlowControl.pause_reading`
  and :meth:`FlowControl.resume_reading` are idempotent, so callers need not track
  whether they paused.
- *Writing*: the transport calls :meth:`~FlowControl.pause_writing` when its write
  buffer passes the high-water mark and :meth:`~FlowControl.resume_writing` when it
  falls below the low one. A writer either awaits :meth:`~FlowControl.wait_writable` (one
  future, shared by all who wait), or, on the relay's path where no task runs per
  chunk, checks :attr:`~FlowControl.writing_paused` after a write and leaves a
  callback in :attr:`~FlowControl.on_writable`.

A lost connection wakes every writer (:meth:`~FlowControl.wait_writable` then raises), and
calls the callback, so nothing waits forever on a client that left.

:class:`FlowControl` is a base class rather than an object the connection holds: the
relay checks :attr:`~FlowControl.writing_paused` once per chunk and the transport
calls the callbacks directly, with no extra hop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class FlowControl(asyncio.Protocol):
    """An asyncio protocol's flow control; subclasses set :attr:`transport` in
    ``connection_made`` and call :meth:`connection_closed` in ``connection_lost``.

    Args:
        loop: The event loop the connection runs on (for :meth:`wait_writable`'s future).
    """

    __slots__ = (
        "_writable_waiter",
        "closed",
        "loop",
        "on_writable",
        "reading_paused",
        "transport",
        "writing_paused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        """The connection is closed or closing: nothing is read or written any more."""
        self.reading_paused = False
        """Reading is paused (by this protocol, never by the transport)."""
        self.writing_paused = False
        """The transport's write buffer is over its high-water mark."""
        self.on_writable: Callable[[], None] | None = None
        """Called once when the write buffer falls below its low-water mark (or the
        connection is lost), then forgotten. Set it after a write left
        :attr:`writing_paused` true."""
        self._writable_waiter: asyncio.Future[None] | None = None

    # ---------------------------------------------------------------- reading
    def pause_reading(self) -> None:
        """Stop reading from the peer (no-op if paused, closed or not connected)."""
        transport = self.transport
        if not self.reading_paused and transport is not None and not self.closed:
            self.reading_paused = True
            transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the peer again (no-op unless paused and still open)."""
        transport = self.transport
        if self.reading_paused and transport is not None and not self.closed:
            self.reading_paused = False
            transport.resume_reading()

    # ---------------------------------------------------------------- writing
    def pause_writing(self) -> None:
        """The transport's callback: its write buffer passed the high-water mark."""
        self.writing_paused = True

    def resume_writing(self) -> None:
        """The transport's callback: its write buffer fell below the low-water mark."""
        self.writing_paused = False
        self._wake_writers()

    async def wait_writable(self) -> None:
        """Return once the peer can take more: at once unless writing is paused.

        Raises:
            ConnectionResetError: The connection was lost while waiting (or before).
        """
        if self.writing_paused and not self.closed:
            waiter = self._writable_waiter
            if waiter is None:
                waiter = self._writable_waiter = self.loop.create_future()
            await waiter
            if self.closed:
                raise ConnectionResetError("the peer disconnected")

    def connection_closed(self) -> None:
        """The connection is gone (call from ``connection_lost``): wakes every writer."""
        self.closed = True
        self._wake_writers()

    def _wake_writers(self) -> None:
        waiter = self._writable_waiter
        if waiter is not None:
            self._writable_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        callback = self.on_writable
        if callback is not None:
            self.on_writable = None
            callback()
