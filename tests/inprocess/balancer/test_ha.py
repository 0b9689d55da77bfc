"""Two balancers, one agent reporting to both: each uses only its share of the
server's slots, so together they never queue requests inside the server; when one
balancer goes, the other gets the whole server at once (docs/ha.md)."""

from __future__ import annotations

import asyncio

from support.harness import Harness, eventually, url

from corral.addr import Addr
from corral.sim.server import SIM_ENGINE

BODY = {"prompt": "hi", "n_predict": 12}


async def test_two_balancers_share_a_server_without_overloading_it(harness: Harness):
    first = await harness.balancer()
    second = await harness.balancer()
    runner, port = await harness.sim(name="s", slots=2, tokens_per_second=40)
    engine = runner.app[SIM_ENGINE]
    addrs = tuple(Addr("127.0.0.1", b.management_port) for b in (first, second))
    await harness.agent(port, first, name="s", management_addrs=addrs)
    await eventually(lambda: any(b.routable for b in second.fleet), what="ready on both")
    await eventually(
        lambda: [b.slots_share for x in (first, second) for b in x.fleet] == [1, 1],
        what="one slot each",
    )
    queued = 0

    async def watch() -> None:
        nonlocal queued
        while True:
            queued = max(queued, engine.table.queued)
            await asyncio.sleep(0.002)

    async def one(balancer) -> int:
        async with harness.http.post(url(balancer, "/completion"), json=BODY) as r:
            await r.read()
            return r.status

    watcher = asyncio.create_task(watch())
    statuses = await asyncio.gather(*(one((first, second)[i % 2]) for i in range(8)))
    watcher.cancel()
    assert statuses == [200] * 8
    assert queued == 0  # the server never had more requests than slots

    # one balancer goes: the other gets the whole server
    await second.stop()
    await eventually(
        lambda: [b.slots_share for b in first.fleet] == [2], within=3, what="the whole server"
    )
    statuses = await asyncio.gather(*(one(first) for _ in range(4)))
    assert statuses == [200] * 4
