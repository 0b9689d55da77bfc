"""Stopping that talks: what a process waits for when asked to stop, and for how long.

``corral balancer`` and ``corral agent`` stop gracefully on the first Ctrl-C or
SIGTERM (:func:`corral.cli._run` cancels their run task; their ``finally`` stops them in
order). While they stop, :func:`talking` says what they wait for (requests in flight, a
server finishing its requests) and counts the seconds down; a second Ctrl-C stops the
process at once (:func:`corral.cli._run`), as uvicorn's does. The words are built by
plain functions, tested without an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final

log = logging.getLogger("corral.shutdown")

EVERY: Final = 2.0
"""Seconds between two lines of the countdown."""
AGAIN: Final = "Press Ctrl-C again to stop at once."


def requests(n: int) -> str:
    """``"1 request"``, ``"3 requests"``."""
    return f"{n} request" + ("" if n == 1 else "s")


def first_words(subject: str, waiting: str | None, timeout: float) -> str:
    """What the first Ctrl-C prints: ``subject`` (``"the balancer"``) is stopping;
    ``waiting`` (``"3 requests in flight to finish"``), None when nothing holds the stop."""
    if waiting is None:
        return f"Stopping {subject}: nothing to wait for."
    return f"Stopping {subject}: waiting for {waiting} (up to {timeout:.0f} s). {AGAIN}"


def still_waiting(waiting: str, left: float) -> str:
    """One line of the countdown: ``"  still waiting for 2 requests in flight, 6 s left"``."""
    return f"  still waiting for {waiting}, {max(0.0, left):.0f} s left"


@contextlib.asynccontextmanager
async def talking(
    subject: str,
    waiting: Callable[[], str | None],
    limit: float,
    *,
    say: Callable[[str], None] | None = None,
    every: float = EVERY,
) -> AsyncIterator[None]:
    """Say what the stop inside the block waits for, then every ``every`` seconds what
    it still waits for and the seconds left of ``limit``, until the block ends.

    Args:
        subject: What stops, as a sentence names it (``"the balancer"``).
        waiting: What the stop waits for now, in words, or None for nothing (called
            once at first and once per line; keep it cheap and synchronous).
        limit: Seconds the stop may take at most (the countdown's start).
        say: Where the words go (default: the ``corral.shutdown`` logger at INFO).
        every: Seconds between two lines.
    """
    out = say or log.info
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    out(first_words(subject, waiting(), limit))

    async def count_down() -> None:
        while True:
            await asyncio.sleep(every)
            left = deadline - loop.time()
            now = waiting()
            if now is not None and left > 0:
                out(still_waiting(now, left))

    task = asyncio.create_task(count_down(), name=f"stopping {subject}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


__all__ = ["AGAIN", "EVERY", "first_words", "requests", "still_waiting", "talking"]
