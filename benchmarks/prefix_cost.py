"""What prefix routing costs the balancer per request, and the index's memory.

    .venv/bin/python benchmarks/prefix_cost.py [--backends 1000] [--prompt-kib 32]
        [--host-cache MIB]

A fleet of ``--backends`` backends (4 slots, 4,096 tokens each; their agents report no
host cache, or ``--host-cache`` MiB of one) with prefix routing, each backend's
predicted cache filled to its bound by earlier conversations. Then, for ``--requests``
requests, each a 32 KiB chat prompt (half new, half a later turn: the first half of one
of the prompts shortly before it, which a slot still holds, and a new half), it
times in one process:

- ``hash``: cutting the prompt's canonical text into chained block hashes (once per
  request);
- ``pick+update``: the scheduler's submit (the policy's pick and the reservation,
  which adds the prompt to the index) and the release with the server's timings
  (which may correct it): everything routing does for one request once its prompt is
  hashed;
- ``total``: the two together;
- ``policy``: of ``pick+update``, the prefix policy's own calls: its pick and its
  handling of the dispatch and of the end (adding the prompt to the index and
  evicting past the bound, the slot model, the correction): the issue's *pick plus
  index update*, without the scheduler's and the fleet's bookkeeping of the
  reservation, which slot routing pays too (:class:`PolicyTimer`; its two clock reads
  per call are in both lines);
- by kind: the p50 of each of the policy's calls (:data:`PARTS`) and of pick+update,
  apart for the requests predicted to reuse part of their prompt and the others (the
  first also weigh the prompt's holders).

Between requests it times a *control*: the same work every time (dict lookups, sized
to take about the median request's pick+update), whose tail is the machine's, not the
code's: a p99 well above its p50 says the machine stretches any work of this size (on
this project's shared 2-core VM, 1.4-2.3x: a timer's tail, the caches, a neighbour),
and the code's own tail is its p99/p50 against the control's.

Not timed: reading the request body and building its canonical text (the proxy's
per-request work, measured with the rest of it in section 3 of docs/benchmarks.md).

It reports p50 and p99 in microseconds of wall time (``perf_counter``) and of the
process's CPU time (``thread_time``: on a shared machine, wall time also counts the
moments another process held the core), how many garbage collections ran inside
timed requests, then the index's size and the memory it takes with every backend's
cache full (tracemalloc: what the fill phase left allocated, the prompts' texts
excluded).

This is the issue #10 target: pick plus index update at most 100 us p99 for a 32 KB
prompt with 1,000 agents. Python's timer on a busy machine adds its own tail: run it
on a quiet one.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from corral.core import Buffer, Condition, Fleet, ManualClock, Report, Scheduler
from corral.core.events import Dispatched, Finished, Timings
from corral.core.routing import PrefixPolicy, Prompt, RequestInfo
from corral.core.routing.decision import Dispatch
from corral.core.routing.prefix import KV_BYTES_PER_TOKEN

CHAT = "/v1/chat/completions"


SLOTS, CTX = 4, 4096
"""Each backend's slots and context per slot, tokens."""


def _fleet(backends: int, host_cache_mib: int) -> Fleet:
    """``backends`` ready backends whose agents report a host prompt cache of
    ``host_cache_mib`` (0: none, as a supervised server started with ``--cache-ram 0``;
    an attached server's agent reports no size, and the policy then takes it to keep
    llama-server's default until its answers show none)."""
    fleet = Fleet()
    props = {"default_generation_settings": {"n_ctx": CTX}}
    for i in range(backends):
        name = f"b{i}"
        report = Report(
            Condition.READY, model="m", slots_total=SLOTS, props=props,
            cache_ram_mib=host_cache_mib,
        )  # fmt: skip
        fleet.register(name, name=name, address=f"http://{name}", api_key=None, now=0)
        fleet.report(name, report, now=0)
    return fleet


def _text(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def turns(rng: random.Random, earlier: list[bytes], count: int, recent: int) -> list[bytes]:
    """``count`` prompts of ``len(earlier[-1])`` bytes after ``earlier``: each even
    one new, each odd one a later turn (the first half of one of the ``recent``
    prompts before it, then a new half). Raises ``ValueError`` without ``earlier`` or
    with ``recent`` under 1."""
    if not earlier or recent < 1:
        raise ValueError(f"turns continue 1 or more earlier prompts: {len(earlier)}, {recent}")
    size = len(earlier[-1])
    window = deque(earlier[-recent:], maxlen=recent)
    out: list[bytes] = []
    for i in range(count):
        if i % 2:
            text = rng.choice(window)[: size // 2] + _text(rng, size - size // 2)
        else:
            text = _text(rng, size)
        window.append(text)
        out.append(text)
    return out


PREFILL_RATE = 500.0
"""Prompt tokens a backend processes per second, whatever the prefill's size (this
CPU's llama-server with Gemma 3 270M read 1,530 tokens in 3.03 s: issue #10)."""


def answer_timings(prompt_bytes: int, cache_n: int) -> Timings:
    """What a llama-server that held the predicted ``cache_n`` tokens reports for a
    prompt of ``prompt_bytes`` bytes (4 bytes a token, as the index counts): it
    processed the rest (``prompt_n`` counts only the tokens not found in its cache, so
    ``prompt_n + cache_n`` is the prompt) at :data:`PREFILL_RATE`, so that a prefill
    of half the prompt takes half the time and the policy learns that reuse pays (a
    fixed time per answer taught it that a short prefill is as slow as a long one, and
    no request was ever sent to the holder of its prefix). Raises ``ValueError`` if
    ``cache_n`` is more than the prompt."""
    tokens = prompt_bytes // 4
    if not 0 <= cache_n <= tokens:
        raise ValueError(f"cache_n {cache_n} outside a prompt of {tokens} tokens")
    prompt_n = tokens - cache_n
    return Timings(prompt_n, cache_n, prompt_n * 1000.0 / PREFILL_RATE)


class Control:
    """The same work every call: ``lookups`` dict lookups over a fixed set of keys."""

    def __init__(self, rng: random.Random, lookups: int) -> None:
        self.table = {rng.getrandbits(63): i for i in range(64_000)}
        self.keys = list(self.table)[: max(1, lookups)]

    def __call__(self) -> int:
        table, total = self.table, 0
        for key in self.keys:
            total += table[key]
        return total

    def sized(self, micros: float) -> Control:
        """This control resized to take about ``micros`` microseconds (median of 201)."""
        times = []
        for _ in range(201):
            start = time.perf_counter()
            self()
            times.append((time.perf_counter() - start) * 1e6)
        per_lookup = statistics.median(times) / len(self.keys)
        self.keys = list(self.table)[: max(1, min(len(self.table), int(micros / per_lookup)))]
        return self


PARTS = ("pick", "dispatch", "end")
"""The policy's calls for one request: its pick, and its handling of the fleet's
``Dispatched`` and ``Finished`` events."""


class PolicyTimer:
    """Times a policy's own calls: wraps its ``pick`` and its ``observe`` (the fleet's
    events: dispatched, finished) on the instance, before a scheduler subscribes it;
    ``parts`` sums their wall time in microseconds by :data:`PARTS` (other events under
    ``other``) until :meth:`take` reads and clears it."""

    def __init__(self, policy: PrefixPolicy) -> None:
        self.parts: dict[str, float] = {}
        for name in ("pick", "observe"):
            setattr(policy, name, self._timed(name, getattr(policy, name)))

    def _timed(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.perf_counter
        parts = self.parts

        def timed(*args: Any) -> Any:
            start = clock()
            try:
                return call(*args)
            finally:
                spent = (clock() - start) * 1e6
                part = name if name == "pick" else _EVENT_PARTS.get(type(args[0]), "other")
                parts[part] = parts.get(part, 0.0) + spent

        return timed

    def take(self) -> dict[str, float]:
        """The time spent by part since the last take, microseconds; then clears it."""
        taken = dict(self.parts)
        self.parts.clear()
        return taken


_EVENT_PARTS = {Dispatched: "dispatch", Finished: "end"}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", type=int, default=1000)
    p.add_argument("--prompt-kib", type=int, default=32)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--block", type=int, default=None, help="index block, bytes")
    p.add_argument(
        "--host-cache",
        type=int,
        default=0,
        metavar="MIB",
        help="host prompt cache each agent reports, MiB (default 0: none; the index "
        f"turns it into tokens at {KV_BYTES_PER_TOKEN // 1024} KiB a token)",
    )
    args = p.parse_args(argv)
    if args.host_cache < 0:
        p.error(f"--host-cache must be 0 or more MiB, got {args.host_cache}")
    rng = random.Random(args.seed)
    size = args.prompt_kib * 1024
    clock = ManualClock()
    fleet = _fleet(args.backends, args.host_cache)
    policy = PrefixPolicy(clock=clock.now, **({"block": args.block} if args.block else {}))
    timer = PolicyTimer(policy)  # before the scheduler subscribes its observe
    scheduler = Scheduler(fleet, policy, Buffer(100, 30.0))

    def serve(info: RequestInfo, cached_tokens: int | None = None) -> None:
        decision = scheduler.submit(info, clock.now())
        assert isinstance(decision, Dispatch), decision
        cache_n = info.note.predicted_cached if cached_tokens is None else cached_tokens
        timings = answer_timings(len(info.prompt or b""), cache_n)
        fleet.release(decision.backend_id, clock.now(), info, timings)

    # fill every backend's predicted cache to its bound (teaches the rates too); the
    # texts are made first so that the memory measured is what routing keeps
    host_tokens = args.host_cache * 1024 * 1024 // KV_BYTES_PER_TOKEN
    fill = args.backends * (SLOTS * CTX + host_tokens) * 4 // size + args.backends
    texts = [_text(rng, size) for _ in range(fill)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for text in texts:
        serve(RequestInfo(CHAT, "m", prompt=Prompt(text)), cached_tokens=0)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    index_bytes = sum(s.size_diff for s in after.compare_to(before, "filename"))
    entries = len(policy.index)

    recent = max(1, args.backends * SLOTS // 8)  # that many prompts back, a slot holds it
    warm = turns(rng, texts, 200, recent)
    prompts = turns(rng, texts + warm, args.requests, recent)
    del texts
    collections: list[int] = [0]

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections[0] += 1

    wall: dict[str, list[float]] = {"hash": [], "pick+update": [], "total": []}
    own: list[float] = []  # the policy's calls within pick+update
    # by whether the request was predicted to reuse part of its prompt: the policy's
    # time in each of its calls, and pick+update's
    kinds: dict[bool, dict[str, list[float]]] = {
        hit: {part: [] for part in (*PARTS, "pick+update")} for hit in (True, False)
    }
    cpu: dict[str, list[float]] = {"hash": [], "pick+update": [], "total": []}
    control_wall: list[float] = []
    in_timed = 0
    routes: Counter[str] = Counter()  # the timed requests' routing reasons
    reused = 0  # of them, those predicted to reuse part of their prompt
    # warm up, and size the control to a request's median, with prompts of their own
    for text in warm:
        prompt = Prompt(text)
        prompt.hashes(policy.index.block)  # not timed, as below
        start = time.perf_counter()
        serve(RequestInfo(CHAT, "m", prompt=prompt))
        control_wall.append((time.perf_counter() - start) * 1e6)
    control = Control(rng, 1000).sized(statistics.median(control_wall))
    control_wall.clear()
    gc.collect()
    gc.callbacks.append(count)
    for text in prompts:
        info = RequestInfo(CHAT, "m", prompt=Prompt(text))
        seen = collections[0]
        start, start_cpu = time.perf_counter(), time.thread_time()
        info.prompt.hashes(policy.index.block)  # type: ignore[union-attr]
        hashed, hashed_cpu = time.perf_counter(), time.thread_time()
        timer.take()
        decision = scheduler.submit(info, clock.now())
        assert isinstance(decision, Dispatch)
        fleet.release(
            decision.backend_id,
            clock.now(),
            info,
            answer_timings(size, info.note.predicted_cached),
        )
        done, done_cpu = time.perf_counter(), time.thread_time()
        parts = timer.take()
        own.append(sum(parts.values()))
        in_timed += collections[0] != seen
        routes[info.note.reason or "?"] += 1
        hit = info.note.predicted_cached > 0
        reused += hit
        for part in PARTS:
            kinds[hit][part].append(parts.get(part, 0.0))
        kinds[hit]["pick+update"].append((done - hashed) * 1e6)
        for into, (a, b, c) in (
            (wall, (start, hashed, done)),
            (cpu, (start_cpu, hashed_cpu, done_cpu)),
        ):
            into["hash"].append((b - a) * 1e6)
            into["pick+update"].append((c - b) * 1e6)
            into["total"].append((c - a) * 1e6)
        start = time.perf_counter()
        control()
        control_wall.append((time.perf_counter() - start) * 1e6)
    gc.callbacks.remove(count)

    print(
        f"prefix routing cost: {args.backends} backends, {args.prompt_kib} KiB prompts, "
        f"{policy.index.block}-byte blocks, "
        + (f"a {args.host_cache} MiB host cache each, " if args.host_cache else "")
        + f"{args.requests} requests (python {sys.version.split()[0]})"
    )
    for name in wall:
        print(
            f"  {name:12} p50 {statistics.median(wall[name]):7.1f} us   "
            f"p99 {_percentile(wall[name], 0.99):7.1f} us   "
            f"(CPU p50 {statistics.median(cpu[name]):7.1f} us   "
            f"p99 {_percentile(cpu[name], 0.99):7.1f} us)"
        )
    print(
        f"  {'policy':12} p50 {statistics.median(own):7.1f} us   "
        f"p99 {_percentile(own, 0.99):7.1f} us   (of pick+update: the policy's pick "
        "and its handling of the dispatch and the end)"
    )
    c50, c99 = statistics.median(control_wall), _percentile(control_wall, 0.99)
    r50, r99 = statistics.median(wall["pick+update"]), _percentile(wall["pick+update"], 0.99)
    print(
        f"  {'control':12} p50 {c50:7.1f} us   p99 {c99:7.1f} us   (the same work each "
        f"time, between requests: p99/p50 {c99 / c50:.2f}; pick+update's {r99 / r50:.2f})"
    )
    for hit, label in ((True, "reusing part of their prompt"), (False, "reusing none")):
        times = kinds[hit]
        if times["pick"]:
            print(
                f"  {len(times['pick'])} {label}, p50: "
                + ", ".join(f"{part} {statistics.median(times[part]):.1f} us" for part in times)
            )
    print(
        f"  routes: {reused} of {args.requests} predicted to reuse part of their prompt; "
        + ", ".join(f"{n} {reason}" for reason, n in routes.most_common())
    )
    print(f"  gc: {collections[0]} collections, in {in_timed} of {args.requests} timed requests")
    print(
        f"  index: {entries:,} entries over {args.backends} backends with full caches, "
        f"{index_bytes / 2**20:.1f} MiB ({index_bytes / max(1, entries):.0f} bytes each)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
