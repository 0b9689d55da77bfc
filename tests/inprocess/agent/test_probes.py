"""The agent's probe listener over HTTP: /readyz flips when the server is ready and
registered; /livez follows the monitor."""

from __future__ import annotations

import asyncio

from support.harness import Harness, eventually

from corral.addr import Addr

PROBES = Addr("127.0.0.1", 0)


async def _get(harness: Harness, port: int, path: str) -> tuple[int, dict]:
    async with harness.http.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.json()


async def test_readyz_flips_from_503_to_200_once_loaded_and_registered(harness: Harness):
    balancer = await harness.balancer()
    _, sim_port = await harness.sim(loading_seconds=0.6)
    agent = await harness.agent(sim_port, balancer, wait_ready=False, probe_addr=PROBES)
    assert agent.probes is not None and agent.probes.port
    port = agent.probes.port

    status, body = await _get(harness, port, "/readyz")
    assert status == 503 and body["ok"] is False
    assert body["server"] == "loading"
    assert any(reason.startswith("llama-server is loading") for reason in body["reasons"])
    assert (await _get(harness, port, "/livez"))[0] == 200

    async def ready() -> bool:
        return (await _get(harness, port, "/readyz"))[0] == 200

    await eventually(ready, what="/readyz 200")
    status, body = await _get(harness, port, "/readyz")
    assert body == {
        "ok": True,
        "reasons": [],
        "server": "ready",
        "balancers": {
            f"http://127.0.0.1:{balancer.management_port}/api/v1/agent-socket": "connected"
        },
    }


async def test_readyz_says_when_no_balancer_took_the_agent(harness: Harness):
    balancer = await harness.balancer()
    _, sim_port = await harness.sim()
    agent = await harness.agent(
        sim_port,
        balancer,
        wait_ready=False,
        probe_addr=PROBES,
        management_addrs=(Addr("127.0.0.1", 1),),  # nothing listens there
    )
    assert agent.probes is not None and agent.probes.port
    await eventually(lambda: agent.status.condition == "ready")
    await eventually(lambda: agent.links, what="a failed link")
    status, body = await _get(harness, agent.probes.port, "/readyz")
    assert status == 503
    assert body["reasons"][0].startswith("not registered with any balancer (http://127.0.0.1:1")


async def test_livez_fails_when_the_monitor_stops(harness: Harness):
    balancer = await harness.balancer()
    _, sim_port = await harness.sim()
    agent = await harness.agent(sim_port, balancer, probe_addr=PROBES)
    assert agent.probes is not None and agent.probes.port
    assert (await _get(harness, agent.probes.port, "/livez"))[0] == 200
    assert agent._monitor_task is not None
    agent._monitor_task.cancel()
    await asyncio.sleep(0)
    status, body = await _get(harness, agent.probes.port, "/livez")
    assert status == 503 and body["reasons"] == ["the agent's monitor is not running"]


async def test_no_probe_listener_unless_asked(harness: Harness):
    balancer = await harness.balancer()
    _, sim_port = await harness.sim()
    agent = await harness.agent(sim_port, balancer)
    assert agent.probes is None
