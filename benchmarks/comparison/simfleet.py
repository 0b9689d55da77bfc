"""A fleet of simulated llama-servers in one process, and how evenly they were used.

    PYTHONPATH=benchmarks python -m comparison.simfleet --ports 9001,9002,9003 --slots 4 --tps 50 \\
        --stats-port 9000

Each port gets one simulated llama-server (:mod:`corral.sim`), named ``sim-1``,
``sim-2``... Requests beyond a server's slots wait in the server's own queue, as in
llama-server. So a balancer that sends a request to a full server while another has
a free slot makes that request wait for nothing: that is the cost of routing blind.

The fleet samples every server's busy slots and queue every ``--sample-interval``
seconds and accumulates (:class:`Usage`, pure):

- each server's busy share (busy slot-seconds over slot-seconds);
- requests waiting inside the servers (on average), and
- requests waiting inside a server while another server had a free slot
  ("misplaced", on average): zero for a balancer that knows the slots.

``GET http://127.0.0.1:<stats-port>/usage`` returns the usage since the last
``POST /usage/reset`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web

from corral.sim import SIM_ENGINE, SimConfig, start


@dataclass(slots=True)
class Usage:
    """Accumulated samples of a fleet's servers. Pure: feed it with :meth:`sample`."""

    names: tuple[str, ...]
    slots: tuple[int, ...]
    seconds: float = 0.0
    busy_slot_seconds: list[float] = field(default_factory=list)
    queued_seconds: list[float] = field(default_factory=list)
    misplaced_seconds: float = 0.0
    max_queue: int = 0

    def __post_init__(self) -> None:
        if len(self.names) != len(self.slots):
            raise ValueError("one slot count per server")
        self.busy_slot_seconds = [0.0] * len(self.names)
        self.queued_seconds = [0.0] * len(self.names)

    def sample(self, busy: Sequence[int], queued: Sequence[int], dt: float) -> None:
        """Account ``dt`` seconds with these busy slots and queue lengths per server."""
        self.seconds += dt
        free_total = sum(s - b for s, b in zip(self.slots, busy, strict=True))
        queued_total = sum(queued)
        for i, (b, q) in enumerate(zip(busy, queued, strict=True)):
            self.busy_slot_seconds[i] += b * dt
            self.queued_seconds[i] += q * dt
        # a waiting request is misplaced when some other server has a free slot; a
        # server with a queue has no free slot itself, so the fleet's free slots are
        # all elsewhere
        self.misplaced_seconds += min(queued_total, free_total) * dt
        self.max_queue = max(self.max_queue, max(queued, default=0))

    def busy_share(self) -> list[float]:
        if self.seconds <= 0:
            return [0.0] * len(self.names)
        return [
            b / (s * self.seconds) for b, s in zip(self.busy_slot_seconds, self.slots, strict=True)
        ]

    def report(self) -> dict[str, object]:
        shares = self.busy_share()
        mean = sum(shares) / len(shares) if shares else 0.0
        per = max(self.seconds, 1e-9)
        return {
            "seconds": self.seconds,
            "busy_share": dict(zip(self.names, shares, strict=True)),
            "busy_share_spread": (max(shares) - min(shares)) if shares else 0.0,
            "busy_share_mean": mean,
            "queued_in_servers": sum(self.queued_seconds) / per,
            "misplaced": self.misplaced_seconds / per,
            "max_queue": self.max_queue,
        }


async def serve(
    ports: Sequence[int],
    stats_port: int,
    config: SimConfig,
    sample_interval: float = 0.05,
) -> None:
    """Run the fleet and its stats endpoint until cancelled."""
    runners = []
    try:
        for i, port in enumerate(ports, 1):
            named = dataclasses.replace(config, name=f"sim-{i}", seed=config.seed + i)
            runner, _ = await start(named, "127.0.0.1", port)
            runners.append(runner)
        engines = [r.app[SIM_ENGINE] for r in runners]
        names = tuple(e.config.name for e in engines)
        slots = tuple(e.config.slots for e in engines)
        usage = Usage(names, slots)

        async def get_usage(_: web.Request) -> web.Response:
            return web.json_response(usage.report())

        async def reset(_: web.Request) -> web.Response:
            nonlocal usage
            usage = Usage(names, slots)
            return web.json_response({"reset": True})

        app = web.Application()
        app.router.add_get("/usage", get_usage)
        app.router.add_post("/usage/reset", reset)
        stats = web.AppRunner(app, access_log=None)
        await stats.setup()
        runners.append(stats)
        await web.TCPSite(stats, "127.0.0.1", stats_port).start()
        print(f"simfleet: {len(engines)} servers on {list(ports)}; usage on {stats_port}")
        sys.stdout.flush()
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(sample_interval)
            now = loop.time()
            usage.sample(
                [e.table.busy for e in engines], [e.table.queued for e in engines], now - last
            )
            last = now
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def _ports(text: str) -> list[int]:
    try:
        ports = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of ports"
        ) from None
    if not ports or any(not 0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"{text!r}: ports are 1..65535")
    return ports


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m comparison.simfleet",
        description="Simulated llama-servers in one process, with usage statistics.",
    )
    p.add_argument("--ports", type=_ports, required=True, help="one port per server: 9001,9002")
    p.add_argument("--stats-port", type=int, required=True, help="port of GET /usage")
    p.add_argument("--slots", type=int, default=4, help="slots per server (default 4)")
    p.add_argument("--tps", type=float, default=50.0, help="tokens/s of one slot alone")
    p.add_argument("--slowdown", type=float, default=0.1, help="contention between slots")
    p.add_argument(
        "--prompt-tps", type=float, default=2000.0, help="prompt tokens/s one slot reads"
    )
    p.add_argument(
        "--host-cache", type=int, default=0, help="host prompt cache per server, tokens (0: none)"
    )
    p.add_argument("--ctx", type=int, default=8192, help="context per slot, tokens")
    p.add_argument("--model", default="sim-model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        config = SimConfig(
            model=args.model,
            slots=args.slots,
            tokens_per_second=args.tps,
            slowdown=args.slowdown,
            prompt_tokens_per_second=args.prompt_tps,
            host_cache_tokens=args.host_cache,
            n_ctx=args.ctx,
            seed=args.seed,
        )
    except ValueError as exc:
        p.error(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_until_signal(args.ports, args.stats_port, config))
    return 0


async def _until_signal(ports: Sequence[int], stats_port: int, config: SimConfig) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve(ports, stats_port, config)


if __name__ == "__main__":
    sys.exit(main())
