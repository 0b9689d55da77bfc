"""Who gets a freed slot under load: prefix routing's buffer, in a discrete-event run.

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/prefix_buffer.py [--quick]
        [--max-pass 2,10] [--loads 0.5,0.9,1.5,3] [--document 2000] [--seeds 3]

A discrete-event simulation drives Corral's own pure core (``Fleet``, ``Scheduler``,
``PrefixPolicy`` and slot routing's ``Policy`` for comparison) with section 5's
simulated fleet (``comparison.prefix.SIM_FULL``): 16 servers of 4 slots, groups of
users sharing a document, one short question each, Poisson arrivals at a share of
the fleet's uncached capacity. No sockets and no load generator: what differs between
runs is only where each request goes and who gets a freed slot, which is what the
policy and the scheduler decide. A run takes a second, where the end-to-end section
takes minutes per point, so the scheduler's bounds (``--prefix-max-pass``,
``WINDOW``) can be chosen on many loads and seeds; the end-to-end run confirms.

The servers, as the simulator's (:mod:`corral.sim.model`) with no host cache: each
slot keeps its last prompt; a request gets the idle slot that holds its group's
document (a hit: it reads only its question), else the idle slot used least
recently (a miss: it reads the whole prompt), at ``prompt_tokens_per_second``; it
then decodes its answer at the speed of a slot with every slot busy (the fleet's
state under load; lighter loads finish a little sooner in the end-to-end run). Each
answer reports ``timings`` (``cache_n``, ``prompt_n``, ``prompt_ms``) as
llama-server does, so the policy learns prefill rates and checks its predictions.
The balancer's timers are modelled: a request waiting for its prompt's busy holder is
looked at again at its ``note.wait_until`` (the dispatcher's wait-end timer).

Reported per contender and load (means over seeds): requests finished per second
within the arrival window, the cache hit rate (prompt tokens reused over all), TTFT
p50 and p99 (buffer wait plus prefill).
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from comparison.prefix import SIM_FULL, TEMPLATE_TOKENS, SimScale
from corral.core import Assigned, Condition, Dispatch, Fleet, Policy, Report, Scheduler, Waiter
from corral.core.events import Timings
from corral.core.queueing import QueueOptions, make_queue
from corral.core.routing import RequestInfo
from corral.core.routing.prefix import PrefixPolicy
from corral.core.routing.request import Prompt
from corral.sim.model import SpeedModel

QUICK = SimScale(4, 2, 400.0, 4000.0, 400, 16, 4, 4, 8, 32, (0.9, 3.0), 4.0)


@dataclass(slots=True)
class _Job:
    group: int
    output: int  # tokens
    arrived: float
    request: RequestInfo
    ttft: float = 0.0
    cached: int = 0
    slot: list[object] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Result:
    """One contender at one load, means over seeds.

    Attributes:
        throughput: requests finished per second within the arrival window.
        hit: prompt tokens the servers reused over all prompt tokens (0..1).
        p50, p99: TTFT in seconds (buffer wait plus prefill).
        done: requests finished over requests sent (1.0: none lost).
    """

    contender: str
    load: float
    throughput: float
    hit: float
    p50: float
    p99: float
    done: float


def simulate(
    scale: SimScale,
    load: float,
    *,
    routing: str = "prefix",
    max_pass: float = 2.0,
    max_wait: float = 10.0,
    seed: int = 1,
) -> tuple[float, float, float, float, float]:
    """One run: ``(throughput, hit, p50, p99, done)`` as in :class:`Result`."""
    rng = random.Random(seed)
    now = [0.0]
    speed = SpeedModel(scale.tokens_per_second, 0.1, scale.prompt_tokens_per_second)
    if routing == "prefix":
        policy: PrefixPolicy | Policy = PrefixPolicy(clock=lambda: now[0], max_wait=max_wait)
    else:
        policy = Policy()
    options = QueueOptions(capacity=10**7, timeout=1e9, batch_timeout=1e9, aging=1e9)
    scheduler = Scheduler(Fleet(), policy, make_queue("fifo", options), max_pass=max_pass)
    slots: dict[str, list[list[object]]] = {}  # backend -> [group or "busy", last use]
    for n in range(scale.servers):
        name = f"s{n}"
        scheduler.fleet.register(name, name=name, address=name, api_key=None, now=0)
        report = Report(Condition.READY, model="m", slots_total=scale.slots, cache_ram_mib=0)
        scheduler.fleet.report(name, report, 0)
        slots[name] = [[None, 0] for _ in range(scale.slots)]
    words = ("the", "fleet", "server", "slot", "token", "model", "prompt", "answer")
    documents = [
        " ".join(f"{rng.choice(words)}{g}" for _ in range(scale.prefix_tokens)).encode()
        for g in range(scale.groups)
    ]
    prompt_tokens = scale.prefix_tokens + scale.question_tokens + TEMPLATE_TOKENS
    question_tokens = scale.question_tokens + TEMPLATE_TOKENS
    busy_speed = speed.slot_speed(scale.slots)
    median = scale.median_tokens
    outputs = [min(scale.max_tokens, max(1, round(median * math.exp(rng.gauss(0, 1.2)))))
               for _ in range(5000)]  # fmt: skip
    service = speed.prompt_delay(prompt_tokens) + sum(outputs) / len(outputs) / busy_speed
    rate = load * scale.servers * scale.slots / service

    events: list[tuple[float, int, str, _Job | None, str]] = []
    order = iter(range(10**9))

    def push(at: float, what: str, job: _Job | None, backend: str = "") -> None:
        heapq.heappush(events, (at, next(order), what, job, backend))

    t, sent = 0.0, 0
    while True:
        t += rng.expovariate(rate)
        if t >= scale.duration:
            break
        group, user = rng.randrange(scale.groups), rng.randrange(scale.users)
        question = f"user {user} asks question {sent}".encode()
        prompt = Prompt.of_chat([(b"system", documents[group]), (b"user", question)], None)
        request = RequestInfo("/v1/chat/completions", "m", prompt=prompt)
        output = min(scale.max_tokens, max(1, round(median * math.exp(rng.gauss(0, 1.2)))))
        push(t, "arrive", _Job(group, output, t, request))
        sent += 1

    waiting: dict[int, _Job] = {}
    finished: list[tuple[float, _Job]] = []
    uses = 0

    def start(job: _Job, backend: str, at: float) -> None:
        nonlocal uses
        idle = [s for s in slots[backend] if s[0] != "busy"]
        same = [s for s in idle if s[0] == job.group]
        slot = same[0] if same else min(idle, key=lambda s: s[1])  # type: ignore[arg-type, return-value]
        uses += 1
        slot[0], slot[1] = "busy", uses
        job.cached = prompt_tokens - question_tokens if same else 0
        prefill = speed.prompt_delay(prompt_tokens - job.cached)
        job.ttft, job.slot = at + prefill - job.arrived, slot
        push(at + prefill + job.output / busy_speed, "finish", job, backend)

    def assign(at: float) -> None:
        for outcome in scheduler.assign(at):
            if isinstance(outcome, Assigned):
                start(waiting.pop(id(outcome.waiter.request)), outcome.backend_id, at)

    wake: float | None = None
    while events:
        at, _, what, job, backend = heapq.heappop(events)
        now[0] = at
        if what == "arrive" and job is not None:
            outcome = scheduler.submit(job.request, at)
            if isinstance(outcome, Dispatch):
                start(job, outcome.backend_id, at)
            elif isinstance(outcome, Waiter):
                waiting[id(job.request)] = job
        elif what == "finish" and job is not None:
            job.slot[0] = job.group
            finished.append((at, job))
            scheduler.finished(job.request, at)
            uncached = prompt_tokens - job.cached
            prompt_ms = max(1.0, speed.prompt_delay(uncached) * 1000)
            timings = Timings(uncached, job.cached, prompt_ms)
            scheduler.fleet.release(backend, at, job.request, timings)
            assign(at)
        else:  # the dispatcher's wait-end timer
            wake = None
            assign(at)
        ends = [
            until
            for w in scheduler.buffer.heads(at)
            if (until := w.request.note.wait_until) is not None and until > at
        ]
        if ends and (wake is None or min(ends) < wake):
            wake = min(ends) + 0.001
            push(wake, "wake", None)
    ttft = sorted(job.ttft for _, job in finished)
    if not ttft:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    within = sum(1 for at, _ in finished if at <= scale.duration)
    hit = sum(job.cached for _, job in finished) / (prompt_tokens * len(finished))
    p99 = ttft[min(len(ttft) - 1, int(len(ttft) * 0.99))]
    return within / scale.duration, hit, ttft[len(ttft) // 2], p99, len(finished) / sent


def measure(
    scale: SimScale, max_passes: Sequence[float], seeds: int, loads: Sequence[float]
) -> list[Result]:
    """Slot routing and prefix routing at each ``--prefix-max-pass``, at each load."""
    contenders = [("corral-slots", "slots", 0.0)] + [
        (f"corral-prefix, max_pass {m:g} s", "prefix", m) for m in max_passes
    ]
    results = []
    for load in loads:
        for label, routing, max_pass in contenders:
            runs = [
                simulate(scale, load, routing=routing, max_pass=max_pass, seed=s + 1)
                for s in range(seeds)
            ]
            means = [sum(r[i] for r in runs) / seeds for i in range(5)]
            results.append(Result(label, load, *means))
    return results


def markdown(results: Sequence[Result], scale: SimScale, seeds: int) -> str:
    lines = [
        f"{scale.servers} servers x {scale.slots} slots, {scale.groups} groups x "
        f"{scale.users} users sharing a {scale.prefix_tokens}-word document, "
        f"{scale.duration:g} s of Poisson arrivals, means over {seeds} seed(s).",
        "",
        "| load | contender | requests/s | cache hit rate | TTFT p50 (s) | TTFT p99 (s) "
        "| finished |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.load:.0%} | {r.contender} | {r.throughput:.2f} | {r.hit:.0%} | "
            f"{r.p50:.2f} | {r.p99:.2f} | {r.done:.0%} |"
        )
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        message = f"expected numbers separated by commas: {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not values or any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers >= 0: {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small scale (seconds)")
    parser.add_argument(
        "--max-pass",
        type=_floats,
        default=[2.0, 10.0],
        help="--prefix-max-pass values to compare (seconds, comma-separated)",
    )
    parser.add_argument(
        "--loads",
        type=_floats,
        default=None,
        help="shares of the uncached capacity (default: section 5's)",
    )
    parser.add_argument(
        "--document",
        type=int,
        default=None,
        help="words in each group's document (default: section 5's, 2000)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="runs per point (default 3)")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of arrivals (default: section 5's, 40)",
    )
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else SIM_FULL
    if args.document is not None:
        if args.document < 1:
            parser.error("--document must be >= 1")
        scale = dataclasses.replace(scale, prefix_tokens=args.document)
    if args.duration is not None:
        if not args.duration > 0:
            parser.error("--duration must be > 0")
        scale = dataclasses.replace(scale, duration=args.duration)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    loads = args.loads if args.loads is not None else scale.loads
    print(markdown(measure(scale, args.max_pass, args.seeds, loads), scale, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
