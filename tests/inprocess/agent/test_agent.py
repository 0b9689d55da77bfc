"""The agent against servers that misbehave."""

from __future__ import annotations

import asyncio
import itertools

from aiohttp import web
from support.harness import Harness, eventually

from corral.addr import Addr
from corral.agent import Agent, AgentConfig


async def test_odd_bytes_do_not_stop_the_monitor(harness: Harness):
    mode = {"broken": True}

    async def health(request: web.Request) -> web.Response:
        if mode["broken"]:
            return web.Response(body=b"\xff\xfe\x00 not json", status=200)
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    agent = Agent(
        AgentConfig(
            local_llamacpp_addr=Addr("127.0.0.1", port),
            management_addrs=(),
            name="odd",
            poll_interval=0.02,
        )
    )
    try:
        await agent.start()
        assert agent.status.condition == "bad_response"
        assert "not JSON" in agent.status.issues[0].message
        mode["broken"] = False
        # the monitor lives on: it sees the change (now it lacks /props: still bad)
        await eventually(lambda: "/props" in agent.status.issues[0].message)
    finally:
        await agent.stop()
        await runner.cleanup()


async def test_slots_are_read_only_after_a_quiet_gap_whatever_asks():
    # llama-server notices a client that left only after 1 s with no task result;
    # every /slots answer is one. The agent must leave a longer gap between a /slots
    # answer and its next /slots request, even when it is asked to read at once.
    log: list[tuple[str, float]] = []
    loop = asyncio.get_running_loop()

    async def health(request: web.Request) -> web.Response:
        log.append(("health", loop.time()))
        return web.json_response({"status": "ok"})

    async def props(request: web.Request) -> web.Response:
        return web.json_response({"total_slots": 2})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]})

    async def slots(request: web.Request) -> web.Response:
        log.append(("slots asked", loop.time()))
        await asyncio.sleep(0.02)
        log.append(("slots answered", loop.time()))
        return web.json_response(
            [{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}]
        )

    app = web.Application()
    for path, handler in (("/health", health), ("/props", props), ("/slots", slots)):
        app.router.add_get(path, handler)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    agent = Agent(
        AgentConfig(local_llamacpp_addr=Addr("127.0.0.1", port), name="gap", poll_interval=0.02)
    )
    try:
        await agent.start()
        assert (agent.status.slots_total, agent.status.slots_processing) == (2, 1)
        end = loop.time() + 3.0
        while loop.time() < end:  # a balancer asking again and again (Refresh)
            status = await agent.poll()
            assert status.slots_processing == 1
            await asyncio.sleep(0.05)
    finally:
        await agent.stop()
        await runner.cleanup()

    answered = [t for what, t in log if what == "slots answered"]
    asked = [t for what, t in log if what == "slots asked"]
    gaps = [b - a for a, b in zip(answered, asked[1:], strict=False)]
    assert len(asked) >= 3, log  # busy slots are still read, about every 1.3 s
    assert min(gaps) >= 1.25, gaps
    assert max(gaps) < 1.75, gaps  # and not much later than allowed
    assert sum(what == "health" for what, _ in log) > 30  # /health at the poll rate


async def test_reconnects_to_a_balancer_back_off_up_to_the_cap(monkeypatch):
    # a "balancer" that accepts and hangs up at once: every attempt fails
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(loop.time())
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    from corral.agent import agent as agent_module

    steps: list[tuple[float, float]] = []  # (backoff step, wait) of each reconnect

    original = agent_module.reconnect_wait

    def recorded(backoff: float, cap: float) -> float:
        wait = original(backoff, cap)
        steps.append((backoff, wait))
        return wait

    monkeypatch.setattr(agent_module, "reconnect_wait", recorded)
    agent = Agent(
        AgentConfig(
            local_llamacpp_addr=Addr("127.0.0.1", 9),  # no server: the monitor reports it
            management_addrs=(Addr("127.0.0.1", port),),
            name="backoff",
            reconnect_min=0.02,
            reconnect_max=0.08,
        )
    )
    try:
        await agent.start()
        await eventually(lambda: len(steps) >= 7, within=5.0, what="seven reconnects")
    finally:
        await agent.stop()
        server.close()
    backoffs = [backoff for backoff, _ in steps[:6]]
    assert backoffs == [0.02, 0.04, 0.08, 0.08, 0.08, 0.08]  # doubling, then capped
    assert all(wait <= 0.08 for _, wait in steps)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert max(gaps[3:]) < 0.08 + 0.25, gaps  # the loop honours the cap (slack: a busy CPU)
