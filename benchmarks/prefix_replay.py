"""Why do later turns go to a server holding none of their conversation? A replay.

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/prefix_replay.py
        [--load 0.5] [--seed 1] [--shortfall 400] [--fleet 2,2,8] [--turn-words N]
        [--speeds 0.57,315,13.6] [--jitter 0.0] [--overhead 0] [--router prefix|sticky]

Replays section 5's real part (``comparison.prefix.REAL_FULL``: 2 llama-servers x 2
slots, a host prompt cache of 8 prompts each, the ``multi-turn`` workload with 16
conversations open) through Corral's pure core (``Fleet``, ``Scheduler``,
``PrefixPolicy``), with no sockets: a discrete-event run of Poisson arrivals at a share
of the section's capacity (0.57 requests/s).

The servers, as llama-server with ``--cache-ram`` (its agent does not report it, as for
an attached server): a request gets the idle slot sharing more than 10% of its prompt,
else the least recently used; the slot's old prompt (another conversation's) goes to
the host cache, least recently stored evicted past 8; the request reuses the longest
prefix held by its slot or by a host cache entry (restored). Only an earlier turn of
the same conversation is a prefix. ``--shortfall``: with sliding-window attention
(Gemma 3) llama-server rolls back to a context checkpoint near the end of the cached
prompt, so it reuses up to this many tokens less (uniform). Prefill at 315 tokens/s,
decoding at 13.6 tokens/s (the section's measured speeds), 4 bytes a token.

Options for the section's other fleets: ``--fleet SERVERS,SLOTS,HOST_PROMPTS`` (as the
section's), ``--turn-words`` (words per user turn), ``--speeds CAPACITY,PREFILL,DECODE``
(requests/s with nothing reused, and a slot's tokens/s with every slot busy; 4 x 1
host 4 measured 0.78, 218, 35.1), ``--jitter J`` (each request's prefill takes between
1 - J and 1 + J times its share: the rates a real server reports vary), ``--overhead
T`` (each prefill takes as long as T more tokens: per token a short prefill runs slower
than a long one; on the four one-slot servers of section 5, a median 175 tokens/s for
16-63 tokens and 316 for 448-511, about what 38 tokens more gives), and
``--router sticky`` (each conversation pinned to one server by a hash of its number, as
the section's sticky oracle: the yardstick).

Reported: the cache hit rate, TTFT p50 and p99 (seconds), the busiest server's
share of decoded tokens over the mean, the routing reason of later turns and whether they went
to the server of the conversation's previous turn, and each time the index forgot
conversations (:meth:`~corral.core.routing.prefix_index.PrefixIndex.forget_older`),
how many of them the modelled server still held.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import sys
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from corral.balancer.prompt import prompt_of
from corral.bench.workload import Call, Workload, WorkloadSpec, poisson_arrivals
from corral.core import Assigned, Condition, Dispatch, Fleet, Report, Scheduler, Waiter
from corral.core.events import Timings
from corral.core.queueing import QueueOptions, make_queue
from corral.core.routing import RequestInfo
from corral.core.routing.prefix import PrefixPolicy

CAPACITY = 0.57  # requests/s, section 5's uncached capacity
HOST = 8  # prompts each server's host cache holds
SLOTS = 2
PREFILL, DECODE, BYTES_PER_TOKEN = 315.0, 13.6, 4.0

Held = tuple[int, int, int]  # conversation, turn, prompt tokens


@dataclass(slots=True)
class _Slot:
    held: Held | None = None
    used: int = 0
    busy: bool = False


@dataclass(slots=True)
class _Server:
    slots: list[_Slot]
    host: dict[Held, None] = field(default_factory=dict)  # insertion order: LRU first
    uses: int = 0

    def holds(self, call: Call) -> bool:
        held = [s.held for s in self.slots] + list(self.host)
        return any(_reuse(h, call) for h in held)


@dataclass(slots=True)
class _Job:
    call: Call
    request: RequestInfo
    tokens: int
    cache_n: int = 0
    backend: str = ""
    slot: _Slot | None = None
    arrived: float = 0.0
    prefill: float = 0.0  # seconds it took (the answer's prompt_ms)


def _reuse(held: Held | None, call: Call) -> int:
    """Prompt tokens ``held`` shares with the call's prompt: an earlier turn's whole."""
    if held is None or held[0] != call.session or held[1] >= call.turn:
        return 0
    return held[2]


@dataclass(frozen=True, slots=True)
class Setup:
    """The fleet and workload replayed (the defaults: section 5's 2 x 2 fleet)."""

    servers: int = 2
    slots: int = SLOTS
    host: int = HOST
    turn_words: int | None = None
    capacity: float = CAPACITY
    prefill: float = PREFILL
    decode: float = DECODE
    jitter: float = 0.0
    router: str = "prefix"
    overhead: float = 0.0  # tokens' worth of time each prefill takes more


def replay(
    load: float, seed: int, shortfall: float, setup: Setup | None = None
) -> tuple[float, Counter[str]]:
    """One run: ``(cache hit rate, counts)``; the TTFTs and work shares are in
    ``counts`` too (keys ``ttft p50 ms``, ``ttft p99 ms``, ``busiest/mean %``)."""
    setup = setup or Setup()
    rng = random.Random(seed)
    now = [0.0]
    policy = PrefixPolicy(clock=lambda: now[0], max_wait=10.0)
    options = QueueOptions(capacity=10**7, timeout=1e9, batch_timeout=1e9, aging=1e9)
    scheduler = Scheduler(Fleet(), policy, make_queue("fifo", options))
    props = {"default_generation_settings": {"n_ctx": 4096}}
    servers: dict[str, _Server] = {}
    for n in range(1, setup.servers + 1):
        name = f"llama-{n}"
        scheduler.fleet.register(name, name=name, address=name, api_key=None, now=0)
        report = Report(Condition.READY, model="m", slots_total=setup.slots, props=props)
        scheduler.fleet.report(name, report, 0)
        servers[name] = _Server([_Slot() for _ in range(setup.slots)])
    names = list(servers)
    spec = WorkloadSpec(shape="multi-turn", prompt_tokens=400, output_tokens=32,
                        max_output_tokens=128, sessions=16, turns=8, seed=1,
                        turn_tokens=setup.turn_words)  # fmt: skip
    calls = iter(Workload(spec, salt="replay"))
    events: list[tuple[float, int, str, _Job | None]] = []
    order = iter(range(10**9))
    firsts: dict[int, int] = {}  # conversation -> its first block's hash
    for at in poisson_arrivals(load * setup.capacity, seed):
        if at > 300.0:
            break
        call = next(calls)
        messages = [{"role": m.role, "content": m.content} for m in call.messages]
        prompt = prompt_of(json.dumps({"messages": messages}).encode())
        assert prompt is not None
        firsts.setdefault(call.session, prompt.hashes(policy.index.block)[0])
        pin = None
        if setup.router == "sticky":  # as nginx's hash of X-Session-Id
            pin = names[zlib.crc32(str(call.session).encode()) % len(names)]
        job = _Job(call, RequestInfo("/v1/chat/completions", "m", pin, prompt=prompt),
                   int(len(prompt) / BYTES_PER_TOKEN), arrived=at)  # fmt: skip
        heapq.heappush(events, (at, next(order), "arrive", job))
    counts: Counter[str] = Counter()
    where: dict[int, str] = {}  # conversation -> server of its last turn
    cached = total = 0
    ttfts: list[float] = []
    decoded: Counter[str] = Counter()

    def start(job: _Job, backend: str, at: float) -> None:
        nonlocal cached, total
        server, call = servers[backend], job.call
        idle = [s for s in server.slots if not s.busy]
        slot = max(idle, key=lambda s: _reuse(s.held, call))
        if _reuse(slot.held, call) <= 0.1 * job.tokens:
            slot = min(idle, key=lambda s: s.used)
        reuse = _reuse(slot.held, call)
        best = max(server.host, key=lambda h: _reuse(h, call), default=None)
        if best is not None and _reuse(best, call) > reuse:
            reuse = _reuse(best, call)
            del server.host[best]
        if slot.held is not None and slot.held[0] != call.session:
            server.host[slot.held] = None
            while len(server.host) > setup.host:
                del server.host[next(iter(server.host))]
        server.uses += 1
        slot.held, slot.used, slot.busy = (call.session, call.turn, job.tokens), server.uses, True
        job.cache_n = max(0, int(reuse - rng.uniform(0, shortfall))) if reuse else 0
        job.backend, job.slot = backend, slot
        if call.turn:
            there = "same server" if where.get(call.session) == backend else "other server"
            counts[f"later turns: {job.request.note.reason}, {there}"] += 1
        where[call.session] = backend
        cached, total = cached + job.cache_n, total + job.tokens
        prefill = (job.tokens - job.cache_n + setup.overhead) / setup.prefill
        if setup.jitter:
            prefill *= rng.uniform(1 - setup.jitter, 1 + setup.jitter)
        job.prefill = prefill
        ttfts.append(at - job.arrived + prefill)
        decoded[backend] += call.max_tokens
        ends = at + prefill + call.max_tokens / setup.decode
        heapq.heappush(events, (ends, next(order), "finish", job))

    def held_by(backend: str) -> set[int]:
        """The conversations whose first block the index says ``backend`` holds."""
        return {c for c, h in firsts.items() if policy.index.stamps(backend, [h])}

    waiting: dict[int, _Job] = {}
    wake: float | None = None
    while events:
        at, _, what, event_job = heapq.heappop(events)
        now[0] = at
        if what == "arrive" and event_job is not None:
            outcome = scheduler.submit(event_job.request, at)
            if isinstance(outcome, Dispatch):
                start(event_job, outcome.backend_id, at)
            elif isinstance(outcome, Waiter):
                waiting[id(event_job.request)] = event_job
        elif what == "finish" and event_job is not None:
            job = event_job
            assert job.slot is not None
            job.slot.busy = False
            scheduler.finished(job.request, at)
            before = held_by(job.backend)
            uncached = job.tokens - job.cache_n
            timings = Timings(uncached, job.cache_n, max(1.0, job.prefill * 1000))
            scheduler.fleet.release(job.backend, at, job.request, timings)
            for c in before - held_by(job.backend):
                holds = servers[job.backend].holds(Call(0, (), 0, False, session=c, turn=99))
                counts[f"conversations forgotten, the server {'held' if holds else 'lost'}"] += 1
        else:
            wake = None
        if what != "arrive":
            for out in scheduler.assign(at):
                if isinstance(out, Assigned):
                    start(waiting.pop(id(out.waiter.request)), out.backend_id, at)
        ends = [u for w in scheduler.buffer.heads(at)
                if (u := w.request.note.wait_until) is not None and u > at]  # fmt: skip
        if ends and (wake is None or min(ends) < wake):
            wake = min(ends) + 0.001
            heapq.heappush(events, (wake, next(order), "wake", None))
    ttfts.sort()
    counts["ttft p50 ms"] = round(1000 * statistics.median(ttfts))
    counts["ttft p99 ms"] = round(1000 * ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))])
    shares = [decoded[n] for n in names]
    counts["busiest/mean %"] = round(100 * max(shares) / statistics.mean(shares))
    return cached / max(1, total), counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=float, default=0.5, help="share of 0.57 requests/s")
    parser.add_argument("--seed", type=int, default=1, help="Poisson arrivals' seed")
    parser.add_argument("--shortfall", type=float, default=400.0,
                        help="tokens a checkpoint roll-back loses, at most")  # fmt: skip
    parser.add_argument("--fleet", default=f"2,{SLOTS},{HOST}",
                        help="SERVERS,SLOTS,HOST_PROMPTS (default %(default)s)")  # fmt: skip
    parser.add_argument("--turn-words", type=int, default=None, help="words per user turn")
    parser.add_argument("--speeds", default=f"{CAPACITY},{PREFILL},{DECODE}",
                        help="CAPACITY,PREFILL,DECODE: requests/s with nothing reused, "
                        "a slot's prompt and generated tokens/s (default %(default)s)")  # fmt: skip
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="each prefill takes 1 +- this times its share (0 to 1)")  # fmt: skip
    parser.add_argument("--overhead", type=float, default=0.0,
                        help="each prefill takes as long as this many tokens more")  # fmt: skip
    parser.add_argument("--router", choices=("prefix", "sticky"), default="prefix")
    args = parser.parse_args(argv)
    try:
        servers, slots, host = (int(v) for v in args.fleet.split(","))
        capacity, prefill, decode = (float(v) for v in args.speeds.split(","))
    except ValueError:
        parser.error("--fleet takes three integers and --speeds three numbers, comma-separated")
    if min(servers, slots) < 1 or host < 0 or min(capacity, prefill, decode) <= 0:
        parser.error("--fleet needs a server and a slot at least; --speeds, positive numbers")
    if not 0 <= args.jitter < 1:
        parser.error("--jitter is from 0 to below 1")
    if args.overhead < 0:
        parser.error("--overhead is 0 or more tokens")
    setup = Setup(servers, slots, host, args.turn_words, capacity, prefill, decode,
                  args.jitter, args.router, args.overhead)  # fmt: skip
    hit, counts = replay(args.load, args.seed, args.shortfall, setup)
    print(f"load {args.load:.0%}, seed {args.seed}, shortfall {args.shortfall:g}: hit {hit:.0%}")
    for key, value in sorted(counts.items()):
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
