"""The agent against servers that misbehave."""

from __future__ import annotations

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
