"""Steady load on a small fleet whose servers answer ``/slots`` late, as llama-server
does (between two batches): no slot may sit idle while requests wait in the buffer.

A request the balancer sends while its agent reads ``/slots`` is counted by the server
and is the balancer's own; if the balancer took it for load from elsewhere, it would
hold back a free slot until the next report, 1.25 s or more later, and requests would
queue in the buffer beside it (issue 10: Corral's time to first token behind HAProxy's
on real servers)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from support.harness import Harness, url

from corral.addr import Addr
from corral.balancer import Balancer

CHAT = "/v1/chat/completions"
SLOTS_DELAY = 0.2
"""Seconds a server takes to answer ``/slots``: it counts its busy slots at the end."""


@contextlib.asynccontextmanager
async def late_slots(server_port: int, delay: float) -> AsyncIterator[int]:
    """A port that answers like the server at ``server_port`` (for the agent's reads),
    but ``/slots`` only ``delay`` seconds after it is asked, as of then."""
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.Response:
        if request.path == "/slots":
            await asyncio.sleep(delay)  # the server gets to it after its batch
        target = f"http://127.0.0.1:{server_port}{request.path_qs}"
        async with session.get(target) as answer:
            body = await answer.read()
            return web.Response(status=answer.status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
        await session.close()


async def test_no_slot_sits_idle_while_requests_wait_under_steady_load(harness: Harness):
    # 2 servers x 2 slots, requests of about 0.27 s, Poisson arrivals at about 90% of
    # what the 4 slots can serve, for 4 s; the agents read /slots as often as they may
    balancer = await harness.balancer()
    async with contextlib.AsyncExitStack() as stack:
        for name in ("a", "b"):
            _, port = await harness.sim(name=name, slots=2, tokens_per_second=40)
            watched = await stack.enter_async_context(late_slots(port, SLOTS_DELAY))
            await harness.agent(
                watched,
                balancer,
                name=name,
                external_llamacpp_addr=Addr("127.0.0.1", port),
                idle_slots_interval=1.25,
            )

        idle_while_waiting = 0.0  # seconds a free slot and a waiting request coexisted
        phantom = 0  # most slots ever taken for load from elsewhere (there is none)

        async def watch() -> None:
            nonlocal idle_while_waiting, phantom
            loop = asyncio.get_running_loop()
            last = loop.time()
            while True:
                await asyncio.sleep(0.005)
                now = loop.time()
                fleet = list(balancer.fleet)
                phantom = max(phantom, sum(b.external for b in fleet))
                if len(balancer.buffer) and any(b.reserved < b.slots_total for b in fleet):
                    idle_while_waiting += now - last
                last = now

        async def one(start: float) -> tuple[int, float]:
            await asyncio.sleep(start)
            sent = asyncio.get_running_loop().time()
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
            async with harness.http.post(url(balancer, CHAT), json=body) as r:
                await r.read()
                return r.status, asyncio.get_running_loop().time() - sent

        arrivals, at, rng = [], 0.0, random.Random(10)
        while at < 4.0:
            at += rng.expovariate(0.9 * 4 / 0.275)
            arrivals.append(at)
        watcher = asyncio.create_task(watch())
        try:
            answers = await asyncio.gather(*(one(at) for at in arrivals))
        finally:
            watcher.cancel()
        assert [status for status, _ in answers] == [200] * len(arrivals)
        waited = _sum(balancer, "corral_buffer_wait_seconds_sum")
        # what 4 slots taken in arrival order would make these requests wait, each
        # served in the mean time they took here (the rest of their time)
        service = (sum(took for _, took in answers) - waited) / len(answers)
        expected = _fifo_waits(arrivals, slots=4, service=service)
        summary = (
            f"{len(arrivals)} requests waited {waited:.2f} s in all (4 slots in arrival order:"
            f" {expected:.2f} s); slots idle while requests waited {idle_while_waiting:.2f} s;"
            f" most slots taken for outside load {phantom}"
        )
        assert phantom == 0, summary
        assert idle_while_waiting < 0.05, summary
        assert waited <= 1.5 * expected + 0.25, summary


def _fifo_waits(arrivals: list[float], slots: int, service: float) -> float:
    """Seconds requests arriving at these times wait in all for one of ``slots`` slots,
    taken in arrival order, each held ``service`` seconds."""
    free_at = [0.0] * slots
    total = 0.0
    for arrival in arrivals:
        start = max(arrival, heapq.heappop(free_at))
        total += start - arrival
        heapq.heappush(free_at, start + service)
    return total


def _sum(balancer: Balancer, sample: str) -> float:
    """A sample of the balancer's buffer waits histogram (seconds)."""
    for family in balancer.metrics.buffer_wait.collect():
        for s in family.samples:
            if s.name == sample:
                return float(s.value)
    return 0.0
