"""Every contender starts in front of idle servers: the harness waits for slots an
earlier contender left generating, and refuses to measure on servers that stay busy."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from comparison.common import SuiteError, busy_slots, wait_idle
from corral.sim import SimConfig, start


def test_busy_slots_counts_processing_slots() -> None:
    assert busy_slots([{"is_processing": True}, {"is_processing": False}, {}]) == 1
    with pytest.raises(ValueError, match="not a /slots answer"):
        busy_slots({"error": "nope"})


async def test_a_generation_left_running_holds_the_next_contender_back() -> None:
    runner, port = await start(SimConfig(slots=2, tokens_per_second=20.0))
    addr = f"127.0.0.1:{port}"
    try:
        assert await wait_idle([addr], within=1.0) < 0.5  # idle: no wait
        async with aiohttp.ClientSession() as session:
            # a request some earlier contender sent and nobody waits for any more
            left = asyncio.create_task(
                session.post(
                    f"http://{addr}/completion", json={"prompt": "hi", "n_predict": 10_000}
                )
            )
            await asyncio.sleep(0.2)
            with pytest.raises(SuiteError, match=r"still generating .* 1 busy"):
                await wait_idle([addr], within=0.1)
            left.cancel()
            with pytest.raises(asyncio.CancelledError):
                await left
        assert await wait_idle([addr], within=5.0) < 5.0
    finally:
        await runner.cleanup()
