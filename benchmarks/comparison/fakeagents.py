"""Many lightweight agents in one process, to load a balancer's control plane.

    PYTHONPATH=benchmarks python -m comparison.fakeagents \\
        --management-addr 127.0.0.1:8060 --agents 1000 --backend http://127.0.0.1:9000

Each fake agent speaks Corral's agent protocol (:mod:`corral.protocol`) over its own
WebSocket: it registers with 4 to 8 slots (seeded), then sends a status every
``--interval`` seconds with a busy-slot count that wanders up and down, as a real
agent beside a busy server would. All of them give ``--backend`` as their server's
address, so requests the balancer routes to any of them reach one real (or
simulated) server. Registrations are spread out so the balancer is not stormed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
from collections.abc import Sequence

import aiohttp

from corral import protocol as m
from corral.addr import Addr, AddressError


class Swarm:
    """``count`` fake agents registered with one balancer."""

    def __init__(
        self,
        management_url: str,
        count: int,
        backend: str,
        *,
        model: str = "sim-model",
        interval: float = 1.0,
        seed: int = 1,
        agent_token: str | None = None,
        prefix: str = "swarm",
    ) -> None:
        self.url = management_url.rstrip("/") + "/api/v1/agent-socket"
        self.count = count
        self.backend = backend
        self.model = model
        self.interval = interval
        self.rng = random.Random(seed)
        self.headers = {"Authorization": f"Bearer {agent_token}"} if agent_token else {}
        self.prefix = prefix
        self.registered = 0
        self.sent = 0
        self.all_registered = asyncio.Event()
        self.errors: list[str] = []

    def _status(self, slots: int, busy: int) -> m.ServerStatus:
        return m.ServerStatus(
            condition=m.Condition.READY, model=self.model, slots_total=slots, slots_processing=busy
        )

    async def _agent(
        self, session: aiohttp.ClientSession, number: int, gate: asyncio.Semaphore
    ) -> None:
        rng = random.Random(self.rng.random())
        slots = rng.randint(4, 8)
        busy = rng.randint(0, slots)
        async with gate:  # a bounded number of registrations in flight
            ws = await session.ws_connect(self.url, headers=self.headers, heartbeat=None)
            register = m.Register(
                version=m.PROTOCOL_VERSION,
                name=f"{self.prefix}-{number}",
                address=self.backend,
                status=self._status(slots, busy),
            )
            await ws.send_bytes(m.encode(register))
            reply = await ws.receive(timeout=30)
        try:
            if reply.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                raise m.ProtocolError(f"the balancer closed the socket ({ws.close_code})")
            answer = m.decode_balancer_message(reply.data)
            if not isinstance(answer, m.Registered):
                raise m.ProtocolError(f"registration refused: {answer}")
            self.registered += 1
            if self.registered == self.count:
                self.all_registered.set()
            receiver = asyncio.ensure_future(self._receive(ws))
            try:
                await asyncio.sleep(rng.uniform(0, self.interval))  # spread the reports
                while not receiver.done():
                    busy = max(0, min(slots, busy + rng.choice((-1, 0, 1))))
                    status = m.Status(self._status(slots, busy), read_age=0.0)
                    await ws.send_bytes(m.encode(status))
                    self.sent += 1
                    await asyncio.wait({receiver}, timeout=self.interval)
            finally:
                receiver.cancel()
                if not ws.closed:
                    with contextlib.suppress(Exception):
                        await ws.send_bytes(m.encode(m.Deregister("swarm stopping")))
        finally:
            await ws.close()

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in ws:
            if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                return
            message = m.decode_balancer_message(frame.data)
            if isinstance(message, m.Error) and message.fatal:
                return

    async def run(self) -> None:
        """Register every agent (50 at a time) and report until cancelled."""
        gate = asyncio.Semaphore(50)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(number: int) -> None:
                try:
                    await self._agent(session, number, gate)
                except (aiohttp.ClientError, m.ProtocolError, TimeoutError, OSError) as exc:
                    self.errors.append(f"{self.prefix}-{number}: {exc}")

            await asyncio.gather(*(one(i) for i in range(1, self.count + 1)))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m comparison.fakeagents",
        description="Lightweight fake agents, many per process, reporting to a balancer.",
    )
    p.add_argument("--management-addr", required=True, help="balancer HOST:PORT for agents")
    p.add_argument("--agents", type=int, required=True, help="how many (1 or more)")
    p.add_argument("--backend", required=True, help="server URL every agent gives")
    p.add_argument("--model", default="sim-model")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between reports")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--agent-token", default=None)
    args = p.parse_args(argv)
    try:
        addr = Addr.parse(args.management_addr)
    except AddressError as exc:
        p.error(str(exc))
    if args.agents < 1 or not args.interval > 0:
        p.error("--agents must be at least 1 and --interval greater than 0")
    swarm = Swarm(
        addr.url(),
        args.agents,
        args.backend,
        model=args.model,
        interval=args.interval,
        seed=args.seed,
        agent_token=args.agent_token,
    )

    async def go() -> None:
        task = asyncio.ensure_future(swarm.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        ready = asyncio.ensure_future(swarm.all_registered.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            print(f"fakeagents: {swarm.count} agents registered", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for error in swarm.errors[:5]:
            print(f"fakeagents: {error}", file=sys.stderr)

    asyncio.run(go())
    return 1 if swarm.errors else 0


if __name__ == "__main__":
    sys.exit(main())
