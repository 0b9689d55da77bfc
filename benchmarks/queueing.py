"""Who goes first: queue disciplines on a simulated fleet under a flood.

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/queueing.py [--quick] [--json]

A discrete-event simulation drives Corral's own pure core (``Fleet``, ``Scheduler``,
the routing policy and each queue discipline of :mod:`corral.core.queueing`) with a
simulated fleet: servers of a few slots each, where a request holds its slot for
its prefill (prompt tokens at a prefill rate) and its decode (output tokens at a
decode rate); its time to first token is its wait in the buffer plus its prefill.
No sockets: what differs between runs is only the order in which waiting requests
get slots, which is what a discipline decides. (The end-to-end comparison through
real balancer processes and simulated servers, ``benchmarks/comparison``, is still
to be run at full scale.)

Two scenarios, each side by side with today's FIFO:

1. **Batch flood.** Interactive users arrive at Poisson times (``load`` of the
   fleet's capacity); at t=0 a batch job sends ``flood`` requests at once (class
   ``batch``). Reported: interactive TTFT p99 with the flood over without it, and the
   batch work's throughput (completed requests per second) on the idle capacity,
   while the users arrive and overall. Requests the scheduler holds back beside
   free slots are looked at again every ``RECHECK`` second, as the dispatcher does.
2. **Two tenants.** Tenant ``a`` at Poisson times; tenant ``b`` floods (same class).
   Reported: ``a``'s TTFT p99 with ``b``'s flood over ``a`` alone, for ``fifo``,
   ``fair`` (equal weights) and ``fair`` with ``b`` capped at half the slots
   (``max_concurrent`` in the keys file).
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from corral.core import Assigned, Condition, Dispatch, Fleet, Policy, Report, Scheduler, Waiter
from corral.core.queueing import Priority, QueueOptions, Tenant, make_queue
from corral.core.routing import RequestInfo
from corral.core.scheduler import RECHECK


@dataclass(frozen=True, slots=True)
class Scale:
    servers: int
    slots: int
    duration: float  # seconds of interactive arrivals
    flood: int  # requests sent at once at t=0
    load: float  # interactive load, share of the fleet's capacity
    seeds: int


FULL = Scale(servers=4, slots=4, duration=1800.0, flood=10_000, load=0.4, seeds=5)
QUICK = Scale(servers=4, slots=4, duration=300.0, flood=1000, load=0.4, seeds=2)

PREFILL_RATE = 2000.0  # prompt tokens per second per slot
DECODE_RATE = 40.0  # output tokens per second per slot
INTERACTIVE = (200, 100)  # prompt, output tokens (mean; exponential)
BATCH = (500, 200)


@dataclass(slots=True)
class _Job:
    request: RequestInfo
    arrived: float
    prefill: float
    decode: float
    kind: str  # "interactive" | "flood"
    ttft: float | None = None
    done: float | None = None


@dataclass(slots=True)
class Run:
    """One simulated run's outcome."""

    ttft: list[float] = field(default_factory=list)  # of the measured (interactive) jobs
    flood_done: int = 0
    flood_last: float = 0.0  # when the last flood request finished
    flood_during: int = 0  # flood requests done while the interactive users arrived

    def p99(self) -> float:
        values = sorted(self.ttft)
        return values[min(len(values) - 1, int(0.99 * len(values)))] if values else 0.0


def _service(rng: random.Random, tokens: tuple[int, int]) -> tuple[float, float]:
    prompt = max(1.0, rng.expovariate(1 / tokens[0]))
    output = max(1.0, rng.expovariate(1 / tokens[1]))
    return prompt / PREFILL_RATE, output / DECODE_RATE


def simulate(
    scale: Scale,
    queue: str,
    *,
    flood: bool,
    flood_class: Priority = Priority.BATCH,
    tenants: Sequence[Tenant] = (),
    reserve: float = 0.25,
    seed: int = 0,
) -> Run:
    """One run: interactive Poisson users (tenant ``a``), and if ``flood``,
    ``scale.flood`` requests of ``flood_class`` from tenant ``b`` at t=0."""
    rng = random.Random(seed)
    options = QueueOptions(
        capacity=10 * scale.flood + 10_000,
        timeout=1e9,
        batch_timeout=1e9,
        aging=10.0,
        tenants={t.name: t for t in tenants},
    )
    scheduler = Scheduler(
        Fleet(), Policy(), make_queue(queue, options), reserve=reserve if queue != "fifo" else 0
    )
    for n in range(scale.servers):
        name = f"s{n}"
        scheduler.fleet.register(name, name=name, address=name, api_key=None, now=0)
        report = Report(Condition.READY, model="m", slots_total=scale.slots)
        scheduler.fleet.report(name, report, 0)

    events: list[tuple[float, int, str, _Job, str]] = []
    order = iter(range(10**9))

    def push(at: float, what: str, job: _Job, backend: str = "") -> None:
        heapq.heappush(events, (at, next(order), what, job, backend))

    mean_service = INTERACTIVE[0] / PREFILL_RATE + INTERACTIVE[1] / DECODE_RATE
    rate = scale.load * scale.servers * scale.slots / mean_service
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= scale.duration:
            break
        p, d = _service(rng, INTERACTIVE)
        request = RequestInfo("/v1/chat/completions", "m", tenant="a")
        push(t, "arrive", _Job(request, t, p, d, "interactive"))
    if flood:
        for _ in range(scale.flood):
            p, d = _service(rng, BATCH)
            request = RequestInfo("/v1/chat/completions", "m", priority=flood_class, tenant="b")
            push(0.0, "arrive", _Job(request, 0.0, p, d, "flood"))

    jobs: dict[int, _Job] = {}
    run = Run()

    def start(job: _Job, backend: str, now: float) -> None:
        job.ttft = now - job.arrived + job.prefill
        push(now + job.prefill + job.decode, "finish", job, backend)

    def finish(job: _Job, backend: str, now: float) -> None:
        job.done = now
        if job.kind == "interactive":
            run.ttft.append(job.ttft or 0.0)
        else:
            run.flood_done += 1
            run.flood_last = now
            if now <= scale.duration:
                run.flood_during += 1
        scheduler.finished(job.request, now)
        scheduler.fleet.release(backend, now)
        for assigned in scheduler.assign(now):
            if isinstance(assigned, Assigned):
                start(jobs.pop(id(assigned.waiter.request)), assigned.backend_id, now)

    ticking = False  # a recheck is pending (Scheduler.held_back)
    while events:
        now, _, what, job, backend = heapq.heappop(events)
        if what == "tick":  # what the dispatcher's recheck timer does
            ticking = False
            for assigned in scheduler.assign(now):
                if isinstance(assigned, Assigned):
                    start(jobs.pop(id(assigned.waiter.request)), assigned.backend_id, now)
        elif what == "arrive":
            outcome = scheduler.submit(job.request, now)
            if isinstance(outcome, Dispatch):
                start(job, outcome.backend_id, now)
            elif isinstance(outcome, Waiter):
                jobs[id(job.request)] = job
        else:
            finish(job, backend, now)
        if scheduler.held_back and not ticking:
            ticking = True
            push(now + RECHECK, "tick", job)
    return run


@dataclass(slots=True)
class Row:
    """One discipline in one scenario, over ``scale.seeds`` seeds.

    Attributes:
        p99_solo, p99_flood: the measured users' TTFT p99 (seconds, mean over seeds)
            without and with the flood.
        ratio: ``p99_flood / p99_solo``; worst: the highest of the per-seed ratios.
        flood_during: flood requests done per second while the users arrived.
        flood_per_s: flood requests done per second, until the last one was.
        flood_done: the share of the flood that completed (1.0: all of it).
    """

    scenario: str
    discipline: str
    p99_solo: float
    p99_flood: float
    ratio: float
    worst: float
    flood_during: float
    flood_per_s: float
    flood_done: float


def _row(scenario: str, label: str, scale: Scale, solo: list[Run], flooded: list[Run]) -> Row:
    n = len(solo)
    a = sum(r.p99() for r in solo) / n
    b = sum(r.p99() for r in flooded) / n
    worst = max(f.p99() / s.p99() for s, f in zip(solo, flooded, strict=True))
    during = sum(r.flood_during for r in flooded) / n / scale.duration
    per_s = sum(r.flood_done / r.flood_last for r in flooded if r.flood_last) / n
    done = sum(r.flood_done for r in flooded) / n / scale.flood
    return Row(scenario, label, a, b, b / a, worst, during, per_s, done)


def measure(scale: Scale) -> list[Row]:
    """Both scenarios, each discipline, over ``scale.seeds`` seeds."""
    rows = []
    seeds = range(scale.seeds)
    for queue in ("fifo", "priority"):
        solo = [simulate(scale, queue, flood=False, seed=s) for s in seeds]
        flooded = [simulate(scale, queue, flood=True, seed=s) for s in seeds]
        rows.append(_row("batch flood", queue, scale, solo, flooded))
    two = (Tenant("a"), Tenant("b"))
    capped = (Tenant("a"), Tenant("b", max_concurrent=max(1, scale.servers * scale.slots // 2)))
    for label, queue, tenants in (
        ("fifo", "fifo", two),
        ("fair", "fair", two),
        ("fair, b max_concurrent=half", "fair", capped),
    ):
        solo = [simulate(scale, queue, flood=False, tenants=tenants, seed=s) for s in seeds]
        flooded = [
            simulate(scale, queue, flood=True, flood_class=Priority.INTERACTIVE,
                     tenants=tenants, seed=s)
            for s in seeds
        ]  # fmt: skip
        rows.append(_row("two tenants, b floods", label, scale, solo, flooded))
    return rows


def markdown(rows: Sequence[Row], scale: Scale) -> str:
    lines = [
        f"Simulated fleet: {scale.servers} servers x {scale.slots} slots, interactive load "
        f"{scale.load:.0%}, {scale.duration:g} s of arrivals, flood of {scale.flood} "
        f"requests at t=0, {scale.seeds} seed(s); p99 is the mean over seeds, worst the "
        "highest per-seed ratio.",
        "",
        "| scenario | discipline | TTFT p99 alone (s) | with the flood (s) | ratio | worst "
        "| flood req/s while users arrive | flood req/s overall | flood done |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.discipline} | {r.p99_solo:.3f} | {r.p99_flood:.3f} | "
            f"{r.ratio:.2f}x | {r.worst:.2f}x | {r.flood_during:.2f} | {r.flood_per_s:.2f} | "
            f"{r.flood_done:.0%} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small scale (seconds)")
    parser.add_argument("--json", action="store_true", help="rows as JSON")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    rows = measure(scale)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(markdown(rows, scale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
