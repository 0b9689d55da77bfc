"""Measure the foundation's speed targets and print the figures.

    .venv/bin/python benchmarks/foundation.py

1. policy pick (pick + reserve + release) with 10, 100 and 1,000 agents of 8 slots;
2. memory of requests waiting in the buffer (real HTTP requests held by a balancer
   process with no agent), per request and for 10,000;
3. latency the balancer adds to a backend that answers at once (simulated
   llama-server at 1e6 tokens/s), direct and through Corral, same client, same run;
4. streamed tokens relayed per second, direct and through Corral.

Processes are pinned with taskset where available: the balancer on core 0, the
backend and the load generator on the other core(s). Figures move from run to run on
a shared machine; compare the ratios within one run.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

from corral.core import Condition, Dispatch, Fleet, Policy, Report, RequestInfo
from corral.llamacpp.process import free_port, terminate

PY = [sys.executable, "-m", "corral"]
TASKSET = shutil.which("taskset")
CORES = os.cpu_count() or 1


def pinned(core: str, command: list[str]) -> list[str]:
    return [TASKSET, "-c", core, *command] if TASKSET and CORES > 1 else command


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ------------------------------------------------------------------ 1. pick
def bench_pick() -> None:
    print("\n1. Policy pick + reserve + release (microseconds)")
    print(f"{'agents':>8} {'p50':>8} {'p99':>8} {'max':>8}")
    rng = random.Random(1)
    for n in (10, 100, 1000):
        fleet = Fleet()
        for i in range(n):
            fleet.register(f"a{i}", name=f"a{i}", address="x", api_key=None, now=0)
            busy = rng.randint(0, 7)
            report = Report(Condition.READY, model="m", slots_total=8, slots_processing=busy)
            fleet.report(f"a{i}", report, now=0)
        policy = Policy()
        request = RequestInfo("/v1/chat/completions", "m")
        times = []
        clock = time.perf_counter_ns
        for _ in range(20000):
            t0 = clock()
            decision = policy.pick(fleet, request)
            assert isinstance(decision, Dispatch)
            fleet.reserve(decision.agent_id)
            t1 = clock()
            fleet.release(decision.agent_id)
            times.append((t1 - t0) / 1000)
        print(f"{n:>8} {pct(times, 0.5):>8.1f} {pct(times, 0.99):>8.1f} {max(times):>8.1f}")


# ----------------------------------------------------------------- helpers
def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- 2. memory
async def bench_buffer_memory(count: int = 10_000) -> None:
    print(f"\n2. Memory of {count:,} requests waiting in the buffer (balancer process)")
    inference, management = free_port(), free_port()
    proc = subprocess.Popen(
        pinned(
            "0",
            [
                *PY, "balancer", "--log-level", "error",
                "--inference-addr", f"127.0.0.1:{inference}",
                "--management-addr", f"127.0.0.1:{management}",
                "--max-buffered-requests", str(count),
                "--buffered-request-timeout", "600",
            ],
        )
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{management}/health")
        await asyncio.sleep(0.5)
        before = rss_kb(proc.pid)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            body = b'{"prompt": "hello", "n_predict": 16}'
            tasks = [
                asyncio.create_task(
                    session.post(f"http://127.0.0.1:{inference}/completion", data=body)
                )
                for _ in range(count)
            ]
            url = f"http://127.0.0.1:{management}/api/v1/buffered-requests"
            while True:
                async with session.get(url) as r:
                    waiting = (await r.json())["buffered_requests"]
                if waiting >= count:
                    break
                await asyncio.sleep(0.2)
            after = rss_kb(proc.pid)
            print(
                f"   waiting: {waiting:,}; RSS before {before / 1024:.1f} MiB, "
                f"with them {after / 1024:.1f} MiB: "
                f"{(after - before) / 1024:.1f} MiB, {(after - before) * 1024 / count:,.0f} "
                "bytes per waiting request"
            )
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        terminate(proc)


# ------------------------------------------------- 3./4. latency and relay
async def timed_requests(url: str, n: int, body: bytes) -> list[float]:
    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(50):  # warm up
            async with session.post(url, data=body) as r:
                await r.read()
        for _ in range(n):
            t0 = time.perf_counter()
            async with session.post(url, data=body) as r:
                await r.read()
                assert r.status == 200, r.status
            times.append((time.perf_counter() - t0) * 1000)
    return times


async def streamed_tokens(url: str, concurrency: int, seconds: float, body: bytes) -> float:
    events = 0
    stop = time.monotonic() + seconds

    async def user(session: aiohttp.ClientSession) -> None:
        nonlocal events
        while time.monotonic() < stop:
            async with session.post(url, data=body) as r:
                async for line in r.content:
                    if line.startswith(b"data: {"):
                        events += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = time.monotonic()
        await asyncio.gather(*(user(session) for _ in range(concurrency)))
        return events / (time.monotonic() - t0)


async def bench_data_path() -> None:
    sim_port = free_port()
    inference, management = free_port(), free_port()
    other = "1" if CORES > 1 else "0"
    procs = [
        subprocess.Popen(pinned(other, [
            *PY, "sim", "--log-level", "error", "--addr", f"127.0.0.1:{sim_port}",
            "--slots", "64", "--tokens-per-second", "1000000",
        ])),
        subprocess.Popen(pinned("0", [
            *PY, "balancer", "--log-level", "error",
            "--inference-addr", f"127.0.0.1:{inference}",
            "--management-addr", f"127.0.0.1:{management}",
        ])),
    ]  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/health")
        wait_http(f"http://127.0.0.1:{management}/health")
        procs.append(subprocess.Popen(pinned(other, [
            *PY, "agent", "--log-level", "error",
            "--local-llamacpp-addr", f"127.0.0.1:{sim_port}",
            "--management-addr", f"127.0.0.1:{management}",
        ])))  # fmt: skip
        wait_http(f"http://127.0.0.1:{inference}/health")
        if TASKSET and CORES > 1:
            os.sched_setaffinity(0, {1})
        direct = f"http://127.0.0.1:{sim_port}/completion"
        via = f"http://127.0.0.1:{inference}/completion"
        body = b'{"prompt": "hi", "n_predict": 1}'
        d = await timed_requests(direct, 2000, body)
        v = await timed_requests(via, 2000, body)
        print("\n3. Latency of one non-streamed request, sequential (milliseconds)")
        print(f"   {'':10} {'p50':>8} {'p99':>8}")
        print(f"   {'direct':10} {pct(d, 0.5):>8.3f} {pct(d, 0.99):>8.3f}")
        print(f"   {'corral':10} {pct(v, 0.5):>8.3f} {pct(v, 0.99):>8.3f}")
        print(
            f"   added:     {pct(v, 0.5) - pct(d, 0.5):>8.3f} {pct(v, 0.99) - pct(d, 0.99):>8.3f}"
            f"   (requests/s one at a time: direct {1000 / statistics.mean(d):,.0f}, "
            f"corral {1000 / statistics.mean(v):,.0f})"
        )
        stream = b'{"prompt": "hi", "n_predict": 2000, "stream": true}'
        td = await streamed_tokens(direct, 8, 5, stream)
        tv = await streamed_tokens(via, 8, 5, stream)
        print("\n4. Streamed tokens per second, 8 concurrent streams of 2,000 tokens")
        print(f"   direct {td:,.0f}; through corral {tv:,.0f} ({tv / td:.0%} of direct)")
    finally:
        for proc in reversed(procs):
            terminate(proc)


def main() -> None:
    print(f"Corral foundation benchmark; {CORES} cores, taskset {'on' if TASKSET else 'off'}")
    bench_pick()
    asyncio.run(bench_buffer_memory())
    asyncio.run(bench_data_path())


if __name__ == "__main__":
    main()
