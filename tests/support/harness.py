"""Tier 2 helpers: a real balancer, real agents and simulated llama-servers, all in
one process on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from corral.addr import Addr
from corral.agent import Agent, AgentConfig
from corral.balancer import Balancer, BalancerConfig
from corral.sim import SimConfig, start

ANY = Addr("127.0.0.1", 0)


async def eventually(check: Callable[[], Any], within: float = 5.0, what: str = "condition") -> Any:
    """Wait until ``check()`` is truthy (awaiting it if it is a coroutine)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Harness:
    """Starts parts and stops them all at the end of a test, in reverse order."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], Awaitable[Any]]] = []
        self.http = aiohttp.ClientSession()

    async def balancer(self, **overrides: Any) -> Balancer:
        config = BalancerConfig(inference_addr=ANY, management_addr=ANY, **overrides)
        balancer = Balancer(config)
        await balancer.start()
        self._stops.append(balancer.stop)
        return balancer

    async def sim(self, **overrides: Any) -> tuple[Any, int]:
        config = SimConfig(**overrides)
        runner, port = await start(config)
        self._stops.append(runner.cleanup)
        return runner, port

    async def agent(
        self,
        server_port: int,
        balancer: Balancer,
        *,
        name: str = "agent",
        wait_ready: bool = True,
        **overrides: Any,
    ) -> Agent:
        config = AgentConfig(
            local_llamacpp_addr=Addr("127.0.0.1", server_port),
            management_addrs=overrides.pop(
                "management_addrs", (Addr("127.0.0.1", balancer.management_port),)
            ),
            name=name,
            poll_interval=0.05,
            **overrides,
        )
        agent = Agent(config)
        await agent.start()
        self._stops.append(agent.stop)
        if wait_ready:
            await eventually(
                lambda: any(a.name == name and a.routable for a in balancer.fleet),
                what=f"agent {name} ready in {balancer!r}",
            )
        return agent

    async def close(self) -> None:
        for stop in reversed(self._stops):
            with contextlib.suppress(Exception):
                await stop()
        await self.http.close()


@pytest.fixture(name="harness")
async def harness_fixture() -> AsyncIterator[Harness]:
    """The ``harness`` fixture: a :class:`Harness`, closed after the test. A tier 2
    conftest makes it available by importing it."""
    h = Harness()
    try:
        yield h
    finally:
        await h.close()


def url(balancer: Balancer, path: str) -> str:
    return f"http://127.0.0.1:{balancer.inference_port}{path}"


def mgmt(balancer: Balancer, path: str) -> str:
    return f"http://127.0.0.1:{balancer.management_port}{path}"
