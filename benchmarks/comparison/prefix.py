"""Section 5: prefix-cache-aware routing (issue #10), side by side in one run.

Two parts, each contender in front of the same idle servers with the same requests:

1. **Real llama-servers** (the proof that counts): multi-turn chats whose histories
   grow past 1,000 tokens, Poisson arrivals. A server that holds a conversation's
   history answers its next turn after reading only the new tokens; any other server
   reads the whole history first. The servers' host prompt cache (``--cache-ram``) is
   sized to hold a few conversations each, fewer than are open at once, as in a real
   fleet (see :data:`PROMPT_MIB`): with llama-server's default (8 GiB) this small
   model's servers would each hold every conversation and no route could miss.
2. **A simulated fleet** of many servers that cache prompts as llama-server does
   (:mod:`corral.sim.model`): the ``shared-prefix`` workload (groups of users sharing
   a long document, llm-d's shape) at several loads, and the ``no-sharing`` control.

Contenders: Corral with prefix routing (``corral-prefix``) and with slot routing
(``corral-slots``), HAProxy ``leastconn`` + ``maxconn``, the sticky oracle (nginx
``hash $http_x_session_id consistent``) and, on the simulated fleet, nginx round
robin. A build of Corral without ``--routing`` runs as plain ``corral`` (its slot
routing) and the page says so.

Reported for each: TTFT p50/p99, the cache hit rate the servers measured (sum of
``timings.cache_n`` over prompt tokens), throughput, and the busiest server's share
of the work relative to the mean (decoded tokens from the real servers' ``/metrics``;
busy slot-time from the simulated fleet).

    PYTHONPATH=benchmarks python -m comparison.prefix [--quick] [--repeat N]
    PYTHONPATH=benchmarks python -m comparison.prefix --part sim --sim-duration 15 \
        --sim-loads 0.9,3 --contenders corral-prefix,corral-slots   # a shorter check
    PYTHONPATH=benchmarks python -m comparison.prefix --part replica --speedup 5 \
        --contenders corral-prefix,corral-slots,nginx-sticky   # the real part, simulated
    PYTHONPATH=benchmarks python -m comparison.prefix --part real --real-loads 0.5,0.9 \
        --turn-words 32 --history served --fleet 4,1,4   # chats as clients send them

``--part replica`` is a diagnostic, not for the page: the real part's workload and
fleet shape on simulated servers (:data:`REPLICA`: speeds measured on the real ones),
everything ``--speedup`` times faster (speeds, arrivals, durations), so a change to
the policy can be tried in minutes. Its servers' host cache is bounded in tokens, the
real one in bytes; what the replica shows still needs the real part to confirm it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import statistics
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from comparison.capacity import Capacity, CapacityError, uncached_capacity
from comparison.common import (
    CORRAL,
    Section,
    SuiteEnv,
    SuiteError,
    free_port,
    markdown_table,
    processes,
    section_main,
    wait_http,
)
from comparison.contenders import Backend, corral_routing
from comparison.real_engine import direct_outcomes
from comparison.routing import (
    Result,
    compare,
    cpu_lines,
    errors_cell,
    quantile,
    runs_of,
    spread,
    start_simfleet,
)
from corral.bench.stats import summarise
from corral.bench.workload import HISTORIES, History, Workload, WorkloadSpec
from corral.llamacpp import LlamaCppNotFound, ModelError, bundled_model, llama_server_path
from corral.llamacpp.process import llama_server_command
from corral.sim.model import SpeedModel

CONTENDERS = ("corral-prefix", "corral-slots", "haproxy", "nginx-sticky")
"""The real-server contenders; the simulated fleet adds ``nginx-rr``."""


@dataclass(frozen=True, slots=True)
class RealScale:
    servers: int
    slots: int
    system_tokens: int
    """Words of each conversation's opening system prompt."""
    turns: int
    sessions: int
    median_tokens: int
    max_tokens: int
    ctx: int
    """Context per slot, tokens."""
    host_prompts: int
    """Prompts each server's host prompt cache holds (``--cache-ram`` is this many
    times :data:`PROMPT_MIB`)."""
    loads: tuple[float, ...]
    duration: float
    calibrate: float
    """Seconds of the capacity measurement, which sets every contender's load: 45 s
    (some 30 answers) measured 0.58, 0.81 and 0.67 requests/s in three runs of one
    day, so a 90% load ranged from comfortable to overloaded; twice as many answers
    narrow that spread (by about 1.4x, were the answers independent)."""

    turn_words: int | None = None
    """Words of each user turn; None: a quarter of the system prompt's
    (``WorkloadSpec.turn_tokens``)."""
    history: History = "planned"
    """What later turns resend as earlier answers (``WorkloadSpec.history``)."""

    @property
    def cache_ram_mib(self) -> int:
        return self.host_prompts * PROMPT_MIB

    @property
    def user_words(self) -> int:
        return self.turn_words or max(1, self.system_tokens // 4)


@dataclass(frozen=True, slots=True)
class SimScale:
    servers: int
    slots: int
    tokens_per_second: float
    prompt_tokens_per_second: float
    prefix_tokens: int
    question_tokens: int
    groups: int
    users: int
    median_tokens: int
    max_tokens: int
    loads: tuple[float, ...]
    duration: float


REAL_FULL = RealScale(2, 2, 400, 8, 16, 32, 128, 4096, 8, (0.9,), 300.0, 90.0)
REAL_QUICK = RealScale(2, 2, 40, 3, 4, 4, 16, 1024, 1, (0.9,), 6.0, 4.0)

CHECKPOINTS = 2
"""``--ctx-checkpoints`` for the real servers. Gemma 3 attends to a sliding window in
most layers, so to reuse a cached history that the new prompt leaves part-way (the
history resends the planned answer, not the words the server produced) llama-server
rolls back to a checkpoint, a 7.5 MiB copy of the window taken near the end of each
prompt. Its default, 32 per slot, makes a cached prompt's size depend on how many
turns it served (up to 250 MiB); 2 are enough to roll back one turn and keep every
cached prompt near :data:`PROMPT_MIB`."""
PROMPT_MIB = 26
"""Host memory one cached conversation takes in llama-server's prompt cache, MiB, with
:data:`CHECKPOINTS` checkpoints: 23-26 MiB for histories of 550-1,130 tokens (about
9.5 MiB of state, mostly the sliding window, plus the checkpoints), as the pinned build
logs it at ``-lv 4`` (``cache state: ... prompt: N tokens, checkpoints: 2, X MiB``)."""
SIM_FULL = SimScale(16, 4, 50.0, 2000.0, 2000, 32, 16, 8, 32, 256, (0.5, 0.9, 1.5, 3.0), 40.0)
SIM_QUICK = SimScale(4, 2, 400.0, 4000.0, 400, 16, 2, 4, 8, 32, (0.5, 3.0), 2.5)
SATURATION = 3.0
"""The simulated fleet's saturation level, in uncached capacity. A request whose
document is cached costs about 1.7x less (its prompt read is ~1 s of ~2.5 s), so at
150% a contender that reuses the cache still keeps up; at 300% every contender is
saturated and its throughput is what its cache reuse makes of the fleet."""


def routing_available() -> bool:
    """Whether this build's balancer takes ``--routing`` (issue #10's option)."""
    done = subprocess.run(
        [*CORRAL, "balancer", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    return "--routing" in done.stdout


def runnable(contenders: Sequence[str], routing: bool) -> list[str]:
    """``contenders`` as this build can run them: without ``--routing``, every
    ``corral-<mode>`` becomes one plain ``corral`` (its slot routing)."""
    out: list[str] = []
    for name in contenders:
        if corral_routing(name) is not None and not routing:
            name = "corral"
        if name not in out:
            out.append(name)
    return out


def busiest(shares: dict[str, float]) -> float | None:
    """The busiest server's share of the work over the mean share (1.0: even)."""
    values = list(shares.values())
    if not values or sum(values) <= 0:
        return None
    return max(values) / statistics.mean(values)


# ------------------------------------------------------------------- meters


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise ValueError(f"no {name} in /metrics")


def _read_metric(addr: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as response:
        return _metric(response.read().decode(), name)


@dataclass(slots=True)
class DecodedTokens:
    """Tokens each real server decoded during a run (llama-server's ``/metrics``, read
    once before and once after: two reads per run do not disturb it)."""

    backends: Sequence[Backend]
    before: dict[str, float] | None = None
    name: str = "llamacpp:tokens_predicted_total"

    async def _now(self) -> dict[str, float]:
        return {
            b.name: await asyncio.to_thread(_read_metric, b.addr, self.name) for b in self.backends
        }

    async def reset(self) -> None:
        self.before = await self._now()

    async def read(self) -> dict[str, Any]:
        after = await self._now()
        before = self.before or dict.fromkeys(after, 0.0)
        return {"work": {n: after[n] - before[n] for n in after}}


def _work_share(r: Result) -> float | None:
    usage = r.usage
    if "work" in usage:
        return busiest(usage["work"])
    if "busy_share" in usage:
        return busiest(usage["busy_share"])
    return None


# ------------------------------------------------------------------- tables


def _row(runs: Sequence[Result]) -> list[object]:
    name = runs[0].contender
    return [
        f"**{name}**" if name.startswith("corral") else name,
        spread([quantile(r, "ttft", "p50") for r in runs]),
        spread([quantile(r, "ttft", "p99") for r in runs]),
        spread([r.summary.cache_hit_rate for r in runs], "{:.0%}"),
        spread([_work_share(r) for r in runs], "{:.2f}x"),
        spread([r.summary.requests_per_second for r in runs]),
        spread([r.summary.output_tokens_per_second for r in runs], "{:,.0f}"),
        errors_cell(runs),
    ]


HEADER = ["contender", "TTFT p50 (s)", "TTFT p99 (s)", "cache hit rate",
          "busiest / mean", "requests/s", "output tok/s", "errors"]  # fmt: skip


def table(results: Sequence[Result], label: str) -> list[str]:
    out = []
    grouped = runs_of(results)
    for load in sorted({r.load for r in results}):
        rows = [runs for (at, _), runs in grouped.items() if at == load]
        repeated = max(len(runs) for runs in rows)
        every = "" if repeated == 1 else f"; {repeated} runs each: median (min-max)"
        out += [
            f"**{label}, {load:.0%} of capacity** ({rows[0][0].rate:.2f} requests/s, "
            f"Poisson{every}):",
            "",
            markdown_table(HEADER, [_row(runs) for runs in rows]),
            "",
        ]
    return out


def saturation(results: Sequence[Result], baseline: str = "nginx-rr") -> list[str]:
    """At the saturation level, each Corral contender's throughput and cache hit rate
    over round robin's (issue #10's target: 1.9x and 3.8x); nothing when not run."""
    rows = {r.contender: r.summary for r in results if r.load == SATURATION}
    base = rows.get(baseline)
    if base is None or not base.requests_per_second:
        return []
    lines = []
    for name, s in rows.items():
        if not name.startswith("corral"):
            continue
        hit, base_hit = s.cache_hit_rate, base.cache_hit_rate
        hits = f"{hit / base_hit:.1f}x" if hit is not None and base_hit else "-"
        lines.append(
            f"- {name}: {s.requests_per_second / base.requests_per_second:.2f}x round "
            f"robin's throughput, {hits} its cache hit rate"
        )
    return [f"**At saturation ({SATURATION:.0%})**, against `{baseline}`:", "", *lines, ""]


HIT_SHARE = 0.5
"""A request that reused at least this share of its prompt (``cache_n`` over prompt
tokens) found its history cached (:func:`hit_floor`)."""
NO_WAIT_S = 0.1
"""Seconds in Corral's buffer that count as no wait (:func:`hit_floor`)."""
SLOTS_ONLY = "corral-slots"


def hit_floor(results: Sequence[Result], load: float) -> tuple[float, int] | None:
    """What a request takes at ``load`` when its server holds its history and is free:
    the median time to first token, in seconds, of the Corral contenders' requests
    (every run) that reused at least :data:`HIT_SHARE` of their prompt and waited less
    than :data:`NO_WAIT_S` in the buffer (Corral never sends a server more requests
    than it has slots, so none waited in a server's queue either), and how many there
    were. A router that sent every request so would have about this TTFT p50, and
    first turns (cached nowhere) only add slower requests: on the real fleet it is the
    reading of a turn's new tokens on servers sharing the machine's cores, not routing.
    None when no such request was answered."""
    times = [
        o.first_token - o.start
        for r in results
        if r.load == load and r.contender.startswith("corral")
        for o in r.outcomes
        if o.ok
        and o.first_token is not None
        and o.prompt_tokens
        and o.cached_tokens is not None
        and o.cached_tokens >= HIT_SHARE * o.prompt_tokens
        and o.buffer_wait is not None
        and o.buffer_wait < NO_WAIT_S
    ]
    return (statistics.median(times), len(times)) if times else None


def floor_lines(results: Sequence[Result]) -> list[str]:
    """The real part's bound (issue #10's target: TTFT p50 at least 5x slot
    routing's): at each load, :func:`hit_floor` and slot routing's TTFT p50 (the
    median of its runs', as in the tables) over it, an estimate of what any router
    could gain on slot routing there; nothing without slot routing or a floor."""
    lines = []
    for load in sorted({r.load for r in results}):
        floor = hit_floor(results, load)
        slots = [quantile(r, "ttft", "p50") for r in results
                 if r.load == load and r.contender == SLOTS_ONLY]  # fmt: skip
        present = [p for p in slots if p is not None]
        if floor is None or not present or floor[0] <= 0:
            continue
        seconds, n = floor
        p50 = statistics.median(present)
        lines.append(
            f"- {load:.0%}: {seconds:.2f} s ({n} requests); `{SLOTS_ONLY}`'s TTFT p50 "
            f"{p50:.2f} s is {p50 / seconds:.1f}x that"
        )
    if not lines:
        return []
    return [
        "**What any router can reach here.** A request whose server held its history and "
        f"was free (it reused at least {HIT_SHARE:.0%} of its prompt and waited under "
        f"{NO_WAIT_S:g} s in Corral's buffer) had this TTFT p50, over the Corral "
        "contenders' runs: reading the turn's new tokens on servers that share the "
        "machine's cores. A router that sent every later turn so would have about this "
        "p50 (first turns, which no router finds cached, take longer), so slot routing's "
        "p50 over it estimates what any router could gain on slot routing (a stricter "
        "hit, the history whole in a slot, takes less: the estimate depends on it):",
        "",
        *lines,
        "",
    ]


def _data(results: Sequence[Result]) -> list[dict[str, Any]]:
    return [
        {"contender": r.contender, "load": r.load, "rate": r.rate, "run": r.run,
         "summary": r.summary.to_dict(), "usage": r.usage, "settled_s": r.settled,
         "busiest_over_mean": _work_share(r), "cpu_s": r.cpu}
        for r in results
    ]  # fmt: skip


# ------------------------------------------------------------------- parts


def real_workload(env: SuiteEnv) -> tuple[RealScale, WorkloadSpec]:
    """The real part's scale and its ``multi-turn`` workload (the replica's too)."""
    scale = REAL_QUICK if env.quick else REAL_FULL
    spec = WorkloadSpec(
        shape="multi-turn",
        prompt_tokens=scale.system_tokens,
        output_tokens=scale.median_tokens,
        max_output_tokens=scale.max_tokens,
        sessions=scale.sessions,
        turns=scale.turns,
        turn_tokens=scale.turn_words,
        history=scale.history,
        seed=env.seed,
    )
    return scale, spec


async def measure_capacity(
    backends: Sequence[Backend], spec: WorkloadSpec, scale: RealScale, seconds: float, seed: int
) -> Capacity:
    """The real part's uncached capacity (:mod:`comparison.capacity`), from a closed
    loop of ``seconds`` on the servers directly. Raises :class:`SuiteError`."""
    outcomes = await direct_outcomes(backends, spec, seconds, seed)
    calls = Workload(spec).take(scale.sessions * scale.turns * 4)  # whole conversations
    slots = sum(b.slots for b in backends)
    try:
        return uncached_capacity(outcomes, calls, slots, summarise(outcomes).requests_per_second)
    except CapacityError as exc:
        raise SuiteError(f"cannot measure the servers' capacity: {exc}") from None


def capacity_text(cap: Capacity, seconds: float) -> str:
    """How the capacity was found, for the page."""
    return (
        f"It comes from speeds measured on the servers directly ({seconds:g} s of one user "
        f"per slot, no balancer): with every slot busy a slot read {cap.prefill:.0f} "
        f"prompt tokens/s and generated {cap.decode:.1f} tokens/s; the workload's mean "
        f"request is {cap.prompt_tokens:,.0f} prompt tokens and {cap.output_tokens:.0f} "
        f"generated, read whole (`benchmarks/comparison/capacity.py`). Counting answers "
        f"instead, the same closed loop finished {cap.closed_loop:.2f} requests/s with the "
        "reuse it happened to get; that count set the load before, and ranged 0.58-0.81 "
        "requests/s over a day's runs."
    )


async def real_part(env: SuiteEnv, contenders: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    scale, spec = real_workload(env)
    try:
        binary, model = llama_server_path(), bundled_model()
    except (LlamaCppNotFound, ModelError) as exc:
        raise SuiteError(f"the real engine is not installed ({exc}); run scripts/install") from None
    with processes(env, "prefix-real") as procs:
        backends = []
        for i in range(1, scale.servers + 1):
            port = free_port()
            command = llama_server_command(
                binary, model, port=port, slots=scale.slots, ctx_size=scale.ctx, threads=1,
                cache_ram_mib=scale.cache_ram_mib,
                extra=["--metrics", "--ctx-checkpoints", str(CHECKPOINTS)],
            )  # fmt: skip
            procs.start(f"llama-server-{i}", command)
            backends.append(Backend(f"llama-{i}", port, scale.slots))
        for b in backends:
            await wait_http(f"http://{b.addr}/health", timeout=180, procs=procs)
        cap = await measure_capacity(backends, spec, scale, scale.calibrate, env.seed)
        capacity = cap.requests_per_second
        rates = [(load, load * capacity) for load in scale.loads]
        results = await compare(
            env, procs, backends, spec, rates, scale.duration, contenders,
            meter=DecodedTokens(backends), repeat=env.repeat,
        )  # fmt: skip
    calls = Workload(spec).take(scale.sessions * scale.turns * 4)
    longest = max(sum(len(m.content.split()) for m in c.messages) for c in calls)
    held = scale.slots + scale.host_prompts
    md = [
        f"{scale.servers} real llama-servers (one CPU thread each, {scale.slots} slots of "
        f"{scale.ctx} tokens), serving `{model.name}`. Workload: `multi-turn`, seed "
        f"{env.seed}: {scale.sessions} conversations open at once, {scale.turns} turns each, "
        f"a {scale.system_tokens}-word system prompt, {scale.user_words}-word user turns; "
        f"the last turns send about {longest:,} words"
        + (" (with planned answers)" if scale.history == "served" else "")
        + f". Answers: median {scale.median_tokens} tokens (cap {scale.max_tokens}); "
        + (
            "a later turn resends each server's own answers, as a chat client does, and "
            "is sent once the answer before it has ended."
            if scale.history == "served"
            else "a later turn resends planned answers (text of the planned length, the same "
            "for every contender), not the server's words."
        ),
        "",
        "**The cache is the scarce resource, as in a real fleet.** llama-server keeps the "
        "prompts it evicts from its slots in a host prompt cache (`--cache-ram`, 8,192 MiB "
        "by default in the pinned build) and restores them. This model's cached "
        f"conversation takes about {PROMPT_MIB} MiB (with `--ctx-checkpoints "
        f"{CHECKPOINTS}`), so the default holds some 300 conversations per server: every "
        "server holds every conversation of a small benchmark, any route finds its "
        "history, and routing cannot matter (the first run of this section measured "
        "74-83% reuse for every contender, sticky or not). A real fleet is the other way "
        "round: an 8B model takes about 128 KB of KV per token, so the same 8 GiB holds "
        "some 40 histories of 1,600 tokens per server, while the fleet serves far more "
        "conversations than that. Here each server's host cache is sized to hold "
        f"{scale.host_prompts} conversations (`--cache-ram {scale.cache_ram_mib}`, "
        f"{scale.host_prompts} x {PROMPT_MIB} MiB) besides the {scale.slots} in its slots: "
        f"{held} per server, {held * scale.servers} in the fleet for {scale.sessions} open "
        f"at once. Histories longer than those {PROMPT_MIB} MiB was measured on take more, "
        "so by the last turns a server's host cache holds fewer (on four servers sized "
        "for 4, it kept 3: section 5 of docs/benchmarks.md). The fleet can hold about "
        "every conversation where it was last served; one server cannot, so a "
        "conversation sent to the wrong server reads its whole history again.",
        "",
        f"Capacity, with nothing reused: {capacity:.2f} requests/s. "
        + capacity_text(cap, scale.calibrate)
        + f" Each run sends Poisson arrivals for {scale.duration:g} s and waits for every "
        "answer"
        + (
            "."
            if env.repeat == 1
            else f"; every contender ran {env.repeat} times (same requests, Poisson "
            f"arrivals drawn with seed {env.seed}, {env.seed + 1}..., the same for every "
            "contender in a run): each cell is the median over the runs, with its range."
        ),
        "",
        *table(results, "Real llama-servers"),
        *floor_lines(results),
        "",
        *cpu_lines(results),
        "",
    ]
    data = {
        "capacity_rps": capacity,
        "capacity": dataclasses.asdict(cap),
        "cache_ram_mib": scale.cache_ram_mib,
        "ctx_checkpoints": CHECKPOINTS,
        "turn_words": scale.user_words,
        "history": scale.history,
        "repeat": env.repeat,
        "results": _data(results),
        "hit_floor": {f"{load:g}": hit_floor(results, load) for load in scale.loads},
    }
    return md, data


def sim_capacity(scale: SimScale, mean_tokens: float) -> float:
    """Requests/s the simulated fleet finishes with every slot busy and nothing cached
    (each request reads its whole prompt): the no-sharing capacity."""
    speed = SpeedModel(scale.tokens_per_second, 0.1, scale.prompt_tokens_per_second)
    prompt = scale.prefix_tokens + scale.question_tokens + TEMPLATE_TOKENS
    service = speed.prompt_delay(prompt) + mean_tokens / speed.slot_speed(scale.slots)
    return scale.servers * scale.slots / service


LONG_DOCUMENT = 3
"""A second, labelled workload: documents this many times longer (6,000 words at full
scale), so that reading a prompt costs more than decoding its answer, as in RAG over
long documents. Run at saturation only, Corral's prefix routing against round robin."""
LONG_CONTENDERS = ("corral-prefix", "nginx-rr")

TEMPLATE_TOKENS = 12
"""The chat template's tokens around a system message and a question (the simulator's
ChatML, one token a word)."""


def ideal_speedup(scale: SimScale, mean_tokens: float) -> tuple[float, float, float]:
    """What any router can make of the simulated fleet at saturation: a slot's seconds
    per request when its group's document is not cached (reads the whole prompt) and
    when it is (reads the question and the template), and their ratio, the most a
    router can gain in throughput over one that never hits (every slot busy, decoding
    at ``slot_speed(slots)``)."""
    speed = SpeedModel(scale.tokens_per_second, 0.1, scale.prompt_tokens_per_second)
    decode = mean_tokens / speed.slot_speed(scale.slots)
    prompt = scale.prefix_tokens + scale.question_tokens + TEMPLATE_TOKENS
    miss = speed.prompt_delay(prompt) + decode
    hit = speed.prompt_delay(scale.question_tokens + TEMPLATE_TOKENS) + decode
    return miss, hit, miss / hit


async def sim_part(env: SuiteEnv, contenders: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    scale = SIM_QUICK if env.quick else SIM_FULL
    shared = WorkloadSpec(
        shape="shared-prefix",
        prompt_tokens=scale.question_tokens,
        prefix_tokens=scale.prefix_tokens,
        groups=scale.groups,
        users=scale.users,
        output_tokens=scale.median_tokens,
        max_output_tokens=scale.max_tokens,
        seed=env.seed,
    )
    control = WorkloadSpec(**{**_fields(shared), "shape": "no-sharing"})
    mean_tokens = statistics.mean(c.max_tokens for c in Workload(shared).take(5000))
    cap = sim_capacity(scale, mean_tokens)
    miss, hit, bound = ideal_speedup(scale, mean_tokens)
    speed = SpeedModel(scale.tokens_per_second, 0.1, scale.prompt_tokens_per_second)
    with processes(env, "prefix-sim") as procs:
        backends, usage_url = await start_simfleet(
            env, procs, scale.servers, scale.slots,
            "--tps", str(scale.tokens_per_second),
            "--prompt-tps", str(scale.prompt_tokens_per_second),
        )  # fmt: skip
        rates = [(load, load * cap) for load in scale.loads]
        shared_results = await compare(
            env, procs, backends, shared, rates, scale.duration, contenders, usage_url
        )
        middle = min(scale.loads, key=lambda load: abs(load - 0.9))  # the control's load
        control_results = await compare(
            env, procs, backends, control, [(middle, middle * cap)], scale.duration,
            contenders, usage_url,
        )  # fmt: skip
        long_scale = dataclasses.replace(scale, prefix_tokens=scale.prefix_tokens * LONG_DOCUMENT)
        long_spec = WorkloadSpec(**{**_fields(shared), "prefix_tokens": long_scale.prefix_tokens})
        long_cap = sim_capacity(long_scale, mean_tokens)
        long_results = await compare(
            env, procs, backends, long_spec, [(SATURATION, SATURATION * long_cap)],
            scale.duration, [c for c in contenders if c in LONG_CONTENDERS], usage_url,
        )  # fmt: skip
    long_miss, long_hit, long_bound = ideal_speedup(long_scale, mean_tokens)
    md = [
        f"{scale.servers} simulated llama-servers with {scale.slots} slots each. A slot "
        f"reads {scale.prompt_tokens_per_second:g} prompt tokens/s and decodes "
        f"{scale.tokens_per_second:g} tokens/s alone; each slot keeps its last prompt and "
        "reuses the longest common prefix, as llama-server does (no host cache here).",
        "",
        f"Workload `shared-prefix`, seed {env.seed}: {scale.groups} groups of "
        f"{scale.users} users; each group shares a {scale.prefix_tokens}-word document, "
        f"each request adds a {scale.question_tokens}-word question; answers median "
        f"{scale.median_tokens} tokens (cap {scale.max_tokens}). Capacity is what the fleet "
        f"finishes with nothing cached: {cap:.2f} requests/s. The control, `no-sharing`, has "
        f"the same lengths and nothing to reuse. At {SATURATION:.0%} every contender is "
        "saturated (a request whose document is cached costs about 1.7x less, so at 150% "
        "a contender that reuses the cache still keeps up): its throughput is what its "
        "cache reuse makes of the fleet, and the ratios to round robin follow the table.",
        "",
        f"**What any router can reach here.** With every slot busy a slot decodes "
        f"{speed.slot_speed(scale.slots):.1f} tokens/s, so an answer (mean "
        f"{mean_tokens:.1f} tokens) takes {mean_tokens / speed.slot_speed(scale.slots):.2f} s. "
        f"A request that misses also reads its whole prompt "
        f"({scale.prefix_tokens + scale.question_tokens + TEMPLATE_TOKENS:,} tokens at "
        f"{scale.prompt_tokens_per_second:g}/s): {miss:.2f} s a request; one that hits reads "
        f"its question ({scale.question_tokens + TEMPLATE_TOKENS} tokens): {hit:.2f} s. A "
        f"router that hits every time finishes at most {bound:.2f}x the requests of one that "
        "never hits, and less against round robin, which hits now and then. Decoding, not "
        "prompt reading, dominates this workload: issue #10's target of 1.9x round robin's "
        "throughput (SGLang's figure, on workloads where prefill dominates) cannot be "
        "reached on it by any router, while its 3.8x cache hit rate can (a perfect router "
        "reuses ~98% of prompt tokens).",
        "",
        *table(shared_results, "Shared prefix"),
        *saturation(shared_results),
        *table(control_results, "No sharing (control)"),
        f"**A second workload: long documents**, the length of llm-d's shared prefixes "
        f"(6k tokens in its published benchmark). The same "
        f"fleet and groups, each sharing a {long_scale.prefix_tokens:,}-word document, as in "
        f"RAG over long documents: a miss takes {long_miss:.2f} s of a slot, a hit "
        f"{long_hit:.2f} s, so a router that always hits finishes at most "
        f"{long_bound:.2f}x the requests of one that never does. Capacity with nothing "
        f"cached: {long_cap:.2f} requests/s; run at {SATURATION:.0%} only.",
        "",
        *table(long_results, "Long documents"),
        *saturation(long_results),
    ]
    data = {
        "capacity_rps": cap,
        "results": _data(shared_results),
        "control": _data(control_results),
        "long_documents": {"capacity_rps": long_cap, "results": _data(long_results)},
    }
    return md, data


@dataclass(frozen=True, slots=True)
class ReplicaSpeeds:
    prompt_tokens_per_second: float
    tokens_per_second: float
    slowdown: float
    host_cache_tokens: int
    """About :attr:`RealScale.host_prompts` of the workload's histories."""


REPLICA = ReplicaSpeeds(450.0, 70.0, 0.5, 12_000)
"""The real servers' speeds (one slot of ``gemma-3-270m-q4_k_m`` on one thread of this
machine, measured with llama-server's ``timings``: 445-470 prompt tokens/s, 71 tokens/s
decoded alone)."""


async def replica_part(
    env: SuiteEnv, contenders: Sequence[str], speedup: float
) -> tuple[list[str], dict[str, Any]]:
    """The real part's workload on simulated servers, ``speedup`` times faster."""
    scale, spec = real_workload(env)
    with processes(env, "prefix-replica") as procs:
        backends, usage_url = await start_simfleet(
            env, procs, scale.servers, scale.slots,
            "--tps", str(REPLICA.tokens_per_second * speedup),
            "--prompt-tps", str(REPLICA.prompt_tokens_per_second * speedup),
            "--slowdown", str(REPLICA.slowdown),
            "--host-cache", str(REPLICA.host_cache_tokens), "--ctx", str(scale.ctx),
        )  # fmt: skip
        cap = await measure_capacity(backends, spec, scale, scale.calibrate / speedup, env.seed)
        capacity = cap.requests_per_second
        rates = [(load, load * capacity) for load in scale.loads]
        results = await compare(
            env, procs, backends, spec, rates, scale.duration / speedup, contenders,
            usage_url, repeat=env.repeat,
        )  # fmt: skip
    md = [
        f"*A replica, not a result: the real part's workload on {scale.servers} simulated "
        f"servers of {scale.slots} slots, {speedup:g}x faster than the real ones (times "
        f"below are the replica's). Capacity: {capacity:.2f} requests/s.*",
        "",
        *table(results, "Replica"),
    ]
    return md, {"capacity_rps": capacity, "speedup": speedup, "results": _data(results)}


def _fields(spec: WorkloadSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}


FINDING = """\
**Why Corral was behind HAProxy on real servers (section 2, issue #10).** What was
checked, and what changed. (1) The contenders share the servers in turn and nothing
checked that the servers were idle when the next one started. A request an earlier
contender abandoned (a client error, a killed proxy) keeps generating until
llama-server notices that its client left; Corral counts such a slot as busy (load
from elsewhere) and keeps requests in its buffer, while nginx and HAProxy send them
into the busy servers, so the contender that follows a failed run was measured on
fewer slots. Each contender now starts only once every server's `/slots` is idle; the
wait is recorded per run (`settled_s`) and a server still busy after two minutes stops
the section. (2) Capacity, which sets every contender's offered load, was measured
through Corral (and Corral then ran first): it is now measured on the servers
directly, one user per slot, no balancer. (3) In Corral itself: an agent dated its
report from when it asked `/slots`, but llama-server answers between two batches,
later; a request dispatched in between counted both as Corral's and as load from
elsewhere until the next report (1.25 s or more), and a free slot sat idle. Reports
now carry the read's span and the fleet counts its own requests over it
(`core/fleet.py`; `tests/inprocess/balancer/test_steady_load.py`: total buffer wait
2.8 s against an ideal 2.8 s, where the old rule waited 8.4-15.2 s). The figures of
section 2 were not rerun here: whether these changes close the gap needs the full run
on a quiet machine, with its spread over repeated runs. (4) Section 5's real part
(2026-11-29, commit 5b72518, its load set by a capacity measured too high) shows the
gap again, larger: slot routing's TTFT p50 22.67 s against HAProxy's 3.34 s, with the
same cache hit rate (29% and 31%). It is not idle slots: replayed from Corral's
request log (`benchmarks/idle_slots.py`), a slot was free while a request waited for
0.08 slot-seconds in the whole run (3.98 of the 4 slots busy on average); Corral was
simply overloaded. HAProxy failed
16 of its 189 requests (connection errors), which the others served, and Corral's
balancer and agents, in Python, take CPU from two servers that have two cores between
them, where HAProxy takes little. (5) Measured since (2026-11-29, section 2 rerun three
times per contender): each contender's CPU (Corral's balancer and agents 0.03 CPU-s per
second of run, HAProxy 0.01: not the cause), and two faults of the harness, fixed: the
load was set by counting a short window's answers (1.19 and 2.49 requests/s on two
days; it now comes from measured speeds), and the contender that ran second found the
first one's identical prompts in llama-server's host cache (each run's prompts are now
salted). (6) Settled (2026-11-29, section 2): HAProxy lost 13% of its requests to a
harness fault (it reused server connections llama-server had closed; fixed), one
arrival trace offered 106% at the nominal 90% (repeated runs now draw a trace each),
and Corral's higher median against round robin is the one-queue discipline it shares
with HAProxy (`benchmarks/shared_queue.py`: one queue in front of every slot evens out
the waits; round robin's queue per server gives a lower median and a longer tail).
With the harness fixed, Corral and HAProxy are level, and both have 0.6x round
robin's p99 at 150%."""


PREFIX_FINDING = """\
**Why prefix routing was no better than slot routing on real servers (issue #10).** The
first run of this section gave every server llama-server's default host cache, which
held every conversation, so all contenders reused 74-83% and routing could not matter;
the real servers now hold a few conversations each (above). Eight faults in Corral
were found with it. (1) The prefix index bounded each server by its slots times its
context when its agent did not report a host cache (an attached server: the agent
cannot see `--cache-ram`), so it forgot conversations the server still held and sent
their next turns anywhere; replayed through the policy, this workload's later turns
were routed as new prompts 175 times in 346 (`least-load`), 3 times once an unknown
host cache counts as llama-server's default (`core/routing/prefix.py`,
`DEFAULT_CACHE_MIB`). (2) A request that began waiting for the busy server holding its
prompt while already in the buffer had no timer for its bound (1 s), and waited until
the next event (`tests/inprocess/balancer/test_prefix_wait.py`). (3) The buffer served
only the oldest request of each queue, so a request waiting for its prefix's server
held back the requests behind it beside a free slot; `Scheduler.assign` now gives that
slot to one behind it, the most cache-affine first
(`tests/pure/core/test_prefix_policy.py`). (4) A request waited for the busy server
holding its prompt 1 s at most, and not at all when that server's requests were
expected to take more than 1 s to free a slot: on these CPU servers a request runs for
seconds and a miss reads a history of 2,000 tokens for about 5 s, so the wait never
happened and every later turn whose server was busy went to the other one. The run of
this section on commit 9b50750 measured that: prefix routing's p50 was level with slot
routing's (2.98 s against 2.80 s) and its p99 twice as high. A request now waits as
long as the prefill it would save, at most (the ski-rental rule: its time to first
token is then at most about twice that of going elsewhere at once), capped by
`--prefix-max-wait`, now 10 s. On simulated servers replaying this workload five times
faster, one run each on the same machine: prefix routing's p50 0.75 s against slot
routing's 3.32 s and the sticky oracle's 1.39 s, where the old rule, with its second
scaled to 0.2 s, measured 2.26 s. (5) Under load, once a request's wait for its
server ran out it took the next free slot elsewhere and read its whole history again,
while a new conversation behind it, which reads its whole prompt on any server, waited
for it: a freed slot now goes first to waiting requests that lose nothing there (a
prompt held nowhere, or held there), and last to one whose prompt a busy server holds
(`Scheduler.assign`; `tests/pure/core/test_scheduler_affinity.py`). (6) At saturation
the simulated fleet reused 72% of prompt tokens where a perfect router reuses 98%.
Replayed through the pure core (`benchmarks/prefix_buffer.py`, one seed at 300%),
`--prefix-max-pass` (then 2 s) ran out while a request crossed the window, after which
nothing could pass it; with 10 s, 383 of the 417 misses of requests that had waited
came when none of the 64 requests the scheduler weighed behind the head shared the
freed server's prompt: the window fills with requests whose own servers are busy. The
bound is now 10 s, and a freed slot is also offered to the 8
oldest requests further back whose prompts share the most with what it holds (found by
their prompts' block hashes); the bound starts when a request is overtaken within the
window (`tests/pure/core/test_scheduler_affinity.py`). (7) An idle fleet sent every
new conversation to the server whose measured prefill rate was a little higher: idle
candidates tie on load, and their estimates differ by rate alone. The request log's
`cached=` field (reused/prompt~predicted tokens, new) showed it in a run of prefix
routing alone at 50% (commit 5c3efd4): 23 of 34 new-prefix routes (`least-load`) went
to one of the two servers, whose host cache then churned, and 12 of its predicted hits
reused nothing. A prefix no server holds now goes, among the candidates no busier than the best
and within 1.2x of its estimate, to the server given a new prefix least recently
(`SPREAD`,
`PrefixPolicy._spread`; `tests/pure/core/test_prefix_policy.py`). The same run on
1b2538b: 13 and 12 new-prefix routes, later turns routed as new prompts 19 -> 10, hit
rate 51% -> 56%, p50 1.22 -> 1.02 s, p99 9.95 -> 7.04 s (one run each). Left: in both
runs 13 predicted hits (of 64 and 73) reused nothing. llama-server saves a slot's
prompt to its host cache when the slot starts another task and evicts the oldest entry
to make room (80 evictions in the 1b2538b run's 176 task starts), so a conversation
lasts a few of its server's tasks there, and the index, which bounds a server by its
slots times their context plus its host cache, predicts more than the server keeps:
learning each server's real bound from its evictions is the next step. (8) The
harness's own: every later turn resent planned answers, not the server's words, so a
server that held the conversation still read the last answer again, and no router
could reach 5x slot routing's p50 (2.3x at best in the 977e6b0 run). `corral bench
--history served` now resends what the server said, as a chat client does; with it
and 32-word questions prefix routing beat the sticky oracle on two servers (p50 0.38
and 0.54 s against 0.50 and 1.03 s) and fell far behind it on four servers of one slot
(1.08 and 1.14 s against 0.37 and 0.55 s): one of three causes fixed since (above)."""


async def run(
    env: SuiteEnv,
    contenders: Sequence[str] = CONTENDERS,
    parts: Sequence[str] = ("real", "sim"),
    speedup: float = 5.0,
) -> Section:
    """The section; ``parts``: which of ``real`` and ``sim`` to run (both for the page),
    or ``replica`` alone (a diagnostic, ``speedup`` times faster than real)."""
    routing = await asyncio.to_thread(routing_available)
    real = runnable(contenders, routing)
    if "replica" in parts:
        md, data = await replica_part(env, real, speedup)
        return Section("Prefix-cache-aware routing: replica", "\n".join(md), data)
    sim = runnable([*contenders, "nginx-rr"], routing)
    real_md, real_data = await real_part(env, real) if "real" in parts else ([], {})
    sim_md, sim_data = await sim_part(env, sim) if "sim" in parts else ([], {})
    note = (
        []
        if routing
        else [
            "*This build of Corral has no `--routing` option yet (issue #10's prefix "
            "routing is not merged): Corral runs once, with its slot routing, as "
            "`corral`.*",
            "",
        ]
    )
    if env.quick:
        note += [
            "*Quick scale (`--quick`): this checks the harness; its figures are not results. "
            "The full run (16 simulated servers, real histories past 1,000 tokens) is "
            "pending a quiet machine.*",
            "",
        ]
    md = [
        *note,
        "Columns: TTFT over successful streamed requests; *cache hit rate*: prompt tokens "
        "the servers reused from their cache over all prompt tokens, as they report "
        "(`timings.cache_n`); *busiest / mean*: the busiest server's share of the work "
        "(decoded tokens on real servers, busy slot-time on the simulated fleet) over the "
        "mean share.",
        "",
        "### Real llama-servers, multi-turn",
        "",
        *real_md,
        "### A simulated fleet, shared prefixes",
        "",
        *sim_md,
        PREFIX_FINDING,
        "",
        FINDING,
    ]
    data = {"routing_option": routing, "contenders": real, "real": real_data, "sim": sim_data}
    return Section("Prefix-cache-aware routing", "\n".join(md), data)


def _loads(p: argparse.ArgumentParser, option: str, text: str) -> tuple[float, ...]:
    """Comma-separated shares of capacity, each above 0 (else the parser's error)."""
    try:
        loads = tuple(float(x) for x in text.split(","))
    except ValueError:
        p.error(f"{option} takes comma-separated shares of capacity, got {text!r}")
    if not all(load > 0 for load in loads):
        p.error(f"{option}: every share must be above 0, got {text!r}")
    return loads


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m comparison.prefix [--quick] [--part sim] [--sim-duration S]
    [--sim-loads 0.9,3] [--real-loads 0.5,0.9] [--turn-words N] [--history served]
    [--fleet SERVERS,SLOTS,HOST_PROMPTS] [--contenders ...]``: the section alone;
    ``--part``, ``--sim-duration`` and ``--sim-loads`` make a shorter check (not for the
    page); ``--real-loads``, ``--turn-words``, ``--history`` and ``--fleet`` shape the
    real part (ignored with ``--quick``, whose scale is fixed)."""
    global SIM_FULL, REAL_FULL
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--part", choices=("all", "real", "sim", "replica"), default="all")
    p.add_argument(
        "--speedup", type=float, default=5.0, help="with --part replica: how much faster"
    )
    p.add_argument("--sim-duration", type=float, help="seconds of arrivals per simulated run")
    p.add_argument("--sim-loads", help="comma-separated shares of uncached capacity")
    p.add_argument(
        "--turn-words",
        type=int,
        help="the real part's user turns, words (default: a quarter of the system prompt)",
    )
    p.add_argument("--real-loads", help="the real part's loads: comma-separated shares")
    p.add_argument(
        "--history", choices=HISTORIES, help="the real part's earlier answers (default planned)"
    )
    p.add_argument(
        "--fleet",
        help="the real part's fleet: SERVERS,SLOTS,HOST_PROMPTS (default "
        f"{REAL_FULL.servers},{REAL_FULL.slots},{REAL_FULL.host_prompts}: servers, slots "
        "each, conversations each server's host cache holds)",
    )
    args, rest = p.parse_known_args(argv)
    if args.turn_words is not None:
        if args.turn_words < 1:
            p.error("--turn-words must be at least 1")
        REAL_FULL = dataclasses.replace(REAL_FULL, turn_words=args.turn_words)
    if args.fleet:
        try:
            servers, slots, host = (int(x) for x in args.fleet.split(","))
        except ValueError:
            p.error(f"--fleet takes SERVERS,SLOTS,HOST_PROMPTS, got {args.fleet!r}")
        if min(servers, slots) < 1 or host < 0:
            p.error("--fleet needs at least 1 server and 1 slot, and 0 or more host prompts")
        REAL_FULL = dataclasses.replace(REAL_FULL, servers=servers, slots=slots, host_prompts=host)
    if args.history:
        REAL_FULL = dataclasses.replace(REAL_FULL, history=args.history)
    if args.real_loads:
        REAL_FULL = dataclasses.replace(REAL_FULL, loads=_loads(p, "--real-loads", args.real_loads))
    if args.sim_duration is not None:
        SIM_FULL = dataclasses.replace(SIM_FULL, duration=args.sim_duration)
    if args.sim_loads:
        SIM_FULL = dataclasses.replace(SIM_FULL, loads=_loads(p, "--sim-loads", args.sim_loads))
    parts = ("real", "sim") if args.part == "all" else (args.part,)
    if args.speedup <= 0:
        p.error("--speedup must be above 0")
    return section_main(
        "prefix",
        __doc__,
        functools.partial(run, parts=parts, speedup=args.speedup),
        rest,
        contenders=CONTENDERS,
        parents=[p],
    )


if __name__ == "__main__":
    sys.exit(main())
