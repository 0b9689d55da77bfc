"""One queue or one per server: section 2's TTFT shapes in a discrete-event run.

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/shared_queue.py [--quick]
        [--seeds 200] [--loads 0.9,1.5] [--duration 45] [--report-every 1.25]
        [--lag 0] [--json]

Section 2 of ``docs/benchmarks.md`` (two llama-servers of two slots, the heavy-tail
workload, Poisson arrivals) measures Corral with a higher TTFT p50 than nginx's round
robin but a lower p99, a mean about level and the same work finished sooner. Is that
a fault of Corral's, or what one queue in front of every slot does? This simulation
runs the same workload through three ways to queue, with no sockets and no servers:

- ``corral``: Corral's own pure core (``Fleet``, ``Scheduler``, slot routing's
  ``Policy``, the FIFO buffer), with each agent's reports modelled: every
  ``--report-every`` seconds an agent reads its server's busy slots (a read that takes
  ``READ_S``, the count taken at a random moment of it) and the fleet estimates the
  load from elsewhere (``external``) as it does in the balancer. ``--lag`` makes the
  servers report a finished request's slot busy that many seconds longer, which is
  the suspect "slots counted busy after a request ends" made real.
- ``central``: one FIFO queue, a request goes to the first free slot: HAProxy's
  leastconn with ``maxconn`` and a queue, and what Corral should do. With ``--lag 0``
  Corral's core must give every request the same start (``central`` is the check).
- ``rr``: nginx's round robin: the n-th request goes to server ``n mod 2``, which
  queues it FIFO until one of its own slots is free (llama-server's queue).

The service model is section 2's measured speeds (a run of 2026-11-29, the data in
``real_engine.json``): with every slot busy a slot reads ``PREFILL`` prompt tokens/s
and generates ``DECODE`` tokens/s; the workload's mean request is ``PROMPT_TOKENS``
prompt tokens and ``OUTPUT_TOKENS`` generated; each call is scaled from its own words
and planned length to those means. The capacity is what the harness computes:
slots over the mean request's time. A request's TTFT is its wait plus its prefill.

Arrivals and calls come from :mod:`corral.bench.workload` with the harness's seeds,
so seed 1 is section 2's own trace (109 requests in 45 s at 90%), and the others
show how much of a difference is the trace. Reported per load and contender: TTFT p50,
mean and p99 and the time the last answer ends, each the median over seeds, and the
slot-seconds a slot sat free while a request waited (``idle_slots.py``'s sweep).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from corral.bench.stats import percentile
from corral.bench.workload import Call, Workload, WorkloadSpec, history_words, poisson_arrivals
from corral.core import Assigned, Condition, Dispatch, Fleet, Policy, Report, Scheduler, Waiter
from corral.core.queueing import QueueOptions, make_queue
from corral.core.routing import RequestInfo
from idle_slots import idle_while_waiting

SERVERS, SLOTS = 2, 2
PREFILL = 298.3  # prompt tokens/s per slot, every slot busy (section 2, measured)
DECODE = 22.15  # generated tokens/s per slot, every slot busy
PROMPT_TOKENS = 59.74  # the workload's mean prompt, tokens (as the servers counted)
OUTPUT_TOKENS = 31.0  # its mean answer, tokens generated
READ_S = 0.05  # how long an agent's read of /slots takes
SPEC = WorkloadSpec(  # section 2's (benchmarks/comparison/real_engine.py)
    shape="heavy-tail", prompt_tokens=32, output_tokens=16, max_output_tokens=256
)


@dataclass(frozen=True, slots=True)
class Job:
    """One request: when it arrives and how long it holds a slot (seconds)."""

    arrived: float
    prefill: float
    decode: float


@dataclass(frozen=True, slots=True)
class Served:
    """One contender's run: each job's start and end, in the jobs' order (seconds)."""

    jobs: tuple[Job, ...]
    starts: tuple[float, ...]

    @property
    def ttft(self) -> list[float]:
        return [s - j.arrived + j.prefill for j, s in zip(self.jobs, self.starts, strict=True)]

    @property
    def ends(self) -> list[float]:
        return [s + j.prefill + j.decode for j, s in zip(self.jobs, self.starts, strict=True)]

    def idle_slot_s(self) -> float:
        """Slot-seconds a slot of the fleet was free while a request waited."""
        spans = [
            (j.arrived, s, e) for j, s, e in zip(self.jobs, self.starts, self.ends, strict=True)
        ]
        return float(idle_while_waiting(spans, SERVERS * SLOTS)["idle_slot_s_while_waiting"])


def jobs(load: float, duration: float, seed: int) -> tuple[list[Job], float]:
    """Section 2's requests at ``load`` of capacity for ``duration`` seconds of
    arrivals, with ``seed`` for both the calls and the arrival trace (1: section 2's
    own; the harness's repeated runs vary only the arrivals, so only seed 1 is a run of
    the harness); and the capacity (requests/s). Raises ``ValueError`` for a trace
    longer than the 5,000 calls drawn."""
    spec = WorkloadSpec(**{**asdict(SPEC), "seed": seed})
    sample = Workload(spec).take(5000)  # the harness's mean request, from 5,000 calls
    per_word = PROMPT_TOKENS / statistics.fmean(history_words(c) for c in sample)
    per_planned = OUTPUT_TOKENS / statistics.fmean(c.max_tokens for c in sample)

    def service(call: Call) -> tuple[float, float]:
        return history_words(call) * per_word / PREFILL, call.max_tokens * per_planned / DECODE

    capacity = SERVERS * SLOTS / statistics.fmean(sum(service(c)) for c in sample)
    trace = itertools.takewhile(lambda t: t < duration, poisson_arrivals(load * capacity, seed))
    arrivals = list(trace)
    if len(arrivals) > len(sample):
        raise ValueError(
            f"{len(arrivals)} arrivals at {load:.0%} for {duration:g} s: more than the "
            f"{len(sample)} calls drawn; shorten --duration"
        )
    return [Job(at, *service(call)) for at, call in zip(arrivals, sample, strict=False)], capacity


def fifo_starts(jobs: Sequence[Job], slots: int) -> list[float]:
    """Start times of ``jobs`` (in arrival order) queued FIFO in front of ``slots``
    slots: each takes the slot that frees first, when it does."""
    free = [0.0] * slots
    starts = []
    for job in jobs:
        start = max(job.arrived, heapq.heappop(free))
        heapq.heappush(free, start + job.prefill + job.decode)
        starts.append(start)
    return starts


def central(jobs: Sequence[Job], **_: float) -> Served:
    """One FIFO queue, first free slot of the fleet (HAProxy leastconn + maxconn)."""
    return Served(tuple(jobs), tuple(fifo_starts(jobs, SERVERS * SLOTS)))


def round_robin(jobs: Sequence[Job], **_: float) -> Served:
    """nginx's round robin: request n to server n mod SERVERS, FIFO per server."""
    starts = [0.0] * len(jobs)
    for server in range(SERVERS):
        mine = list(range(server, len(jobs), SERVERS))
        for i, start in zip(mine, fifo_starts([jobs[i] for i in mine], SLOTS), strict=True):
            starts[i] = start
    return Served(tuple(jobs), tuple(starts))


def corral(
    jobs: Sequence[Job], *, report_every: float = 1.25, lag: float = 0.0, seed: int = 0
) -> Served:
    """Corral's pure core in front of the servers, agents reporting every
    ``report_every`` seconds, servers that show a finished slot busy ``lag`` seconds
    longer. Raises AssertionError if the core refuses or loses a request."""
    rng = random.Random(seed)
    options = QueueOptions(capacity=len(jobs) + 1, timeout=1e9, batch_timeout=1e9)
    scheduler = Scheduler(Fleet(), Policy(), make_queue("fifo", options))
    fleet = scheduler.fleet
    names = [f"s{n}" for n in range(SERVERS)]
    for name in names:
        fleet.register(name, name=name, address=name, api_key=None, now=0)
        fleet.report(name, Report(Condition.READY, model="m", slots_total=SLOTS), 0)
    requests = [RequestInfo("/v1/chat/completions", "m") for _ in jobs]
    index = {id(r): i for i, r in enumerate(requests)}
    starts: list[float] = [-1.0] * len(jobs)
    ends: list[float] = [-1.0] * len(jobs)
    on: list[str] = [""] * len(jobs)  # the server each job runs on
    events: list[tuple[float, int, str, int]] = []  # (time, order, what, job or server)
    order = itertools.count()
    for i, job in enumerate(jobs):
        heapq.heappush(events, (job.arrived, next(order), "arrive", i))
    for n in range(SERVERS):  # each agent reads at its own phase
        heapq.heappush(events, (rng.uniform(0, report_every), next(order), "read", n))
    counted: dict[int, int] = {}  # server -> the busy slots its read counted
    left = len(jobs)

    def start(i: int, backend: str, now: float) -> None:
        starts[i], on[i] = now, backend
        ends[i] = now + jobs[i].prefill + jobs[i].decode
        heapq.heappush(events, (ends[i], next(order), "end", i))

    def busy(backend: str, at: float) -> int:  # what the server's /slots says at ``at``
        return sum(
            1 for i in range(len(jobs)) if on[i] == backend and starts[i] <= at < ends[i] + lag
        )

    while events:
        now, _, what, n = heapq.heappop(events)
        outcomes: list[object] = []
        if what == "arrive":
            outcome = scheduler.submit(requests[n], now)
            assert isinstance(outcome, Dispatch | Waiter), f"refused: {outcome}"
            if isinstance(outcome, Dispatch):
                start(n, outcome.backend_id, now)
        elif what == "end":
            left -= 1
            scheduler.finished(requests[n], now)
            fleet.release(on[n], now)
            outcomes = list(scheduler.assign(now))
        elif what == "read":  # the server counts at some moment of the read
            counted[n] = busy(names[n], now + rng.uniform(0, READ_S))
            heapq.heappush(events, (now + READ_S, next(order), "report", n))
        else:  # the report arrives when the read ends
            report = Report(
                Condition.READY, model="m", slots_total=SLOTS, slots_processing=counted.pop(n),
                read_at=now - READ_S, read_end=now,
            )  # fmt: skip
            fleet.report(names[n], report, now)
            outcomes = list(scheduler.assign(now))
            if left:
                heapq.heappush(events, (now - READ_S + report_every, next(order), "read", n))
        for assigned in outcomes:
            assert isinstance(assigned, Assigned), f"refused: {assigned}"
            start(index[id(assigned.waiter.request)], assigned.backend_id, now)
    assert left == 0 and min(starts, default=0) >= 0, "a request never finished"
    return Served(tuple(jobs), tuple(starts))


RUNS: dict[str, Callable[..., Served]] = {"corral": corral, "central": central, "rr": round_robin}


@dataclass(frozen=True, slots=True)
class Figures:
    """One contender at one load: TTFT p50, mean and p99 and the last answer's end
    (seconds), slot-seconds idle while a request waited, requests served."""

    p50: float
    mean: float
    p99: float
    end: float
    idle: float
    requests: int

    @classmethod
    def of(cls, served: Served) -> Figures:
        ttft = served.ttft
        return cls(
            percentile(ttft, 0.5), statistics.fmean(ttft), percentile(ttft, 0.99),
            max(served.ends), served.idle_slot_s(), len(ttft),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Row:
    """One contender at one load: ``median`` is each figure's median over the seeds,
    ``trace`` the figures on section 2's own trace (seed 1), ``p50_above_rr`` and
    ``p99_below_rr`` the share of seeds where its p50 is above round robin's and its
    p99 below (for ``rr`` itself: 0)."""

    load: float
    contender: str
    median: Figures
    trace: Figures
    p50_above_rr: float
    p99_below_rr: float


def measure(
    loads: Sequence[float], seeds: int, duration: float, report_every: float, lag: float
) -> list[Row]:
    """Every contender at every load, on seeds 1..``seeds``."""
    rows = []
    for load in loads:
        runs: dict[str, list[Figures]] = {name: [] for name in RUNS}
        for seed in range(1, seeds + 1):
            trace, _ = jobs(load, duration, seed)
            for name, run in RUNS.items():
                runs[name].append(
                    Figures.of(run(trace, report_every=report_every, lag=lag, seed=seed))
                )
        for name, figures in runs.items():
            median = Figures(*(
                statistics.median(getattr(f, field) for f in figures)
                for field in Figures.__dataclass_fields__
            ))  # fmt: skip
            pairs = list(zip(figures, runs["rr"], strict=True))
            above = sum(f.p50 > r.p50 for f, r in pairs) / len(pairs)
            below = sum(f.p99 < r.p99 for f, r in pairs) / len(pairs)
            rows.append(Row(load, name, median, figures[0], above, below))
    return rows


def markdown(
    rows: Sequence[Row], seeds: int, duration: float, report_every: float, lag: float
) -> str:
    lines = [
        f"{SERVERS} servers x {SLOTS} slots, heavy-tail workload, Poisson arrivals for "
        f"{duration:g} s, {seeds} seeds; a slot reads {PREFILL:g} prompt tokens/s and "
        f"generates {DECODE:g} tokens/s; Corral's agents report every {report_every:g} s, "
        f"servers show a finished slot busy {lag:g} s longer. Each figure: the median over "
        "seeds (in brackets: seed 1, section 2's own trace). Seconds.",
        "",
        "| load | contender | TTFT p50 | TTFT mean | TTFT p99 | last answer | idle slot-s "
        "while waiting | p50 above rr | p99 below rr |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m, t = r.median, r.trace
        lines.append(
            f"| {r.load:.0%} | {r.contender} | {m.p50:.2f} ({t.p50:.2f}) | {m.mean:.2f} "
            f"({t.mean:.2f}) | {m.p99:.2f} ({t.p99:.2f}) | {m.end:.1f} ({t.end:.1f}) | "
            f"{m.idle:.1f} ({t.idle:.1f}) | {r.p50_above_rr:.0%} | {r.p99_below_rr:.0%} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20 seeds (a few seconds)")
    p.add_argument("--seeds", type=int, default=200, help="seeds 1..N (default 200)")
    p.add_argument("--loads", default="0.9,1.5", help="shares of capacity (default 0.9,1.5)")
    p.add_argument("--duration", type=float, default=45.0, help="seconds of arrivals (45)")
    p.add_argument(
        "--report-every", type=float, default=1.25, help="seconds between agent reports (1.25)"
    )
    p.add_argument(
        "--lag", type=float, default=0.0,
        help="seconds a server shows a finished slot busy (0)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="rows as JSON")
    args = p.parse_args(argv)
    try:
        loads = [float(x) for x in args.loads.split(",")]
    except ValueError:
        p.error(f"--loads: not a list of numbers: {args.loads!r}")
    seeds = 20 if args.quick else args.seeds
    if seeds < 1 or args.duration <= 0 or args.report_every <= READ_S or args.lag < 0:
        p.error(f"need seeds >= 1, duration > 0, report-every > {READ_S}, lag >= 0")
    if any(not x > 0 for x in loads):
        p.error("--loads must be positive")
    try:
        rows = measure(loads, seeds, args.duration, args.report_every, args.lag)
    except ValueError as exc:
        p.error(str(exc))
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(markdown(rows, seeds, args.duration, args.report_every, args.lag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
