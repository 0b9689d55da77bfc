"""No ``asyncio.wait_for`` in Corral: on Python 3.11 it can lose a cancellation.

When the awaited thing finishes at the moment its task is cancelled, 3.11's
``wait_for`` returns its result and the ``CancelledError`` is gone (CPython
gh-86296, fixed in 3.12, where ``wait_for`` is built on ``asyncio.timeout``). A loop
stopped by ``task.cancel()`` then runs on, and whatever awaits the task hangs: the
batch runner's loop woke (a line ended) as the balancer stopped it, and
``Balancer.stop`` waited for ever (about 1 run in 15 of
``tests/inprocess/balancer/test_batches.py``). ``async with asyncio.timeout(...)``
has no such race."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "corral"


def test_no_module_uses_asyncio_wait_for():
    uses = [
        f"{path.relative_to(SRC.parent)}:{n}"
        for path in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bwait_for\(", line) and "asyncio" in line
    ]
    assert uses == [], f"use `async with asyncio.timeout(...)` instead: {uses}"
