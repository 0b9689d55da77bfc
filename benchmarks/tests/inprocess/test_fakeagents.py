"""Fake agents register with a real balancer, report, and leave cleanly."""

from __future__ import annotations

import asyncio
import contextlib

from support.harness import Harness, eventually

from comparison.fakeagents import Swarm


async def test_a_swarm_registers_reports_and_leaves(harness: Harness) -> None:
    balancer = await harness.balancer()
    swarm = Swarm(
        f"http://127.0.0.1:{balancer.management_port}",
        5,
        "http://127.0.0.1:9",
        model="m",
        interval=0.05,
        seed=3,
    )
    task = asyncio.ensure_future(swarm.run())
    try:
        await asyncio.wait_for(swarm.all_registered.wait(), 10)
        agents = list(balancer.fleet)
        assert sorted(a.name for a in agents) == [f"swarm-{i}" for i in range(1, 6)]
        assert all(4 <= a.slots_total <= 8 and a.model == "m" for a in agents)
        assert all(a.address == "http://127.0.0.1:9" for a in agents)
        await eventually(lambda: swarm.sent >= 10, what="status reports")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await eventually(lambda: len(balancer.fleet) == 0, what="the swarm to leave")
    assert swarm.errors == []


async def test_a_refused_registration_is_an_error_not_a_crash(harness: Harness) -> None:
    balancer = await harness.balancer(agent_token="secret")
    swarm = Swarm(f"http://127.0.0.1:{balancer.management_port}", 2, "http://h:1")
    await asyncio.wait_for(swarm.run(), 10)
    assert len(swarm.errors) == 2 and "401" in swarm.errors[0]
