"""Section 1: routing quality on a fleet of simulated llama-servers.

Every contender gets the same servers (one :mod:`comparison.simfleet` process),
the same seeded heavy-tailed workload and the same Poisson arrival trace, at several
loads relative to the fleet's capacity. The servers behave like llama-server: a
fixed number of slots, a FIFO queue behind them, and slots that slow each other down
a little. What differs is only where each request is sent.

    PYTHONPATH=benchmarks python -m comparison.routing [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from comparison.common import (
    Processes,
    Section,
    SuiteEnv,
    children_of,
    cpu_seconds,
    free_port,
    get_json,
    harness_command,
    markdown_table,
    processes,
    section_main,
    wait_http,
    wait_idle,
)
from comparison.contenders import NAMES, Backend, start
from corral.bench import charts
from corral.bench.driver import Load, Runner, Target
from corral.bench.stats import Outcome, Summary, summarise
from corral.bench.workload import Workload, WorkloadSpec
from corral.sim.model import SpeedModel


@dataclass(frozen=True, slots=True)
class Scale:
    servers: int
    slots: int
    tokens_per_second: float
    slowdown: float
    median_tokens: int
    max_tokens: int
    loads: tuple[float, ...]
    duration: float


FULL = Scale(4, 4, 50.0, 0.1, 32, 1024, (0.5, 0.9, 1.5), 40.0)
QUICK = Scale(2, 2, 400.0, 0.1, 8, 64, (0.5, 1.5), 2.5)


@dataclass(slots=True)
class Result:
    contender: str
    load: float
    rate: float
    summary: Summary
    outcomes: list[Outcome]
    usage: dict[str, Any] = field(default_factory=dict)
    settled: float = 0.0
    """Seconds the servers needed to go idle before this contender started."""
    run: int = 0
    """Which run of this contender at this load (0, 1...; see ``SuiteEnv.repeat``)."""
    cpu: float | None = None
    """CPU seconds the contender's own processes used (balancer and agents, or the
    proxy), from their start to the end of the run; None: not read."""

    @property
    def cpu_share(self) -> float | None:
        """:attr:`cpu` per second of the run (first request sent to last answer)."""
        if self.cpu is None or not self.outcomes:
            return None
        wall = max(o.end for o in self.outcomes) - min(o.start for o in self.outcomes)
        return self.cpu / wall if wall > 0 else None


def runs_of(results: Sequence[Result]) -> dict[tuple[float, str], list[Result]]:
    """``results`` grouped by (load, contender), in their order: the repeated runs of
    each contender at each load."""
    grouped: dict[tuple[float, str], list[Result]] = {}
    for r in results:
        grouped.setdefault((r.load, r.contender), []).append(r)
    return grouped


def spread(values: Sequence[float | None], fmt: str = "{:.2f}") -> str:
    """One figure over repeated runs: the value itself for one run, else the median
    with the range, ``0.53 (0.41-0.70)``; runs without the figure are left out, and
    none at all gives ``-``."""
    present = sorted(v for v in values if v is not None)
    if not present:
        return "-"
    median = fmt.format(statistics.median(present))
    if len(present) == 1:
        return median
    return f"{median} ({fmt.format(present[0])}-{fmt.format(present[-1])})"


def capacity(scale: Scale, mean_tokens: float, prompt_tokens: int) -> float:
    """Requests per second the fleet finishes with every slot busy."""
    speed = SpeedModel(scale.tokens_per_second, scale.slowdown)
    service = speed.prompt_delay(prompt_tokens) + mean_tokens / speed.slot_speed(scale.slots)
    return scale.servers * scale.slots / service


def _post(url: str) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=5):
        pass


class Meter(Protocol):
    """How a section reads the servers' own account of one run (usage, work done)."""

    async def reset(self) -> None: ...
    async def read(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class UsageMeter:
    """:mod:`comparison.simfleet`'s ``/usage`` (``POST /usage/reset`` to start over)."""

    url: str

    async def reset(self) -> None:
        await asyncio.to_thread(_post, f"{self.url}/reset")

    async def read(self) -> dict[str, Any]:
        return dict(await asyncio.to_thread(get_json, self.url))


async def compare(
    env: SuiteEnv,
    procs: Processes,
    backends: Sequence[Backend],
    spec: WorkloadSpec,
    rates: Sequence[tuple[float, float]],
    duration: float,
    contenders: Sequence[str],
    usage_url: str | None = None,
    timeout: float = 600.0,  # noqa: ASYNC109 (each request's limit, passed to the client)
    meter: Meter | None = None,
    repeat: int = 1,
) -> list[Result]:
    """Run every contender at every (load, rate) in front of ``backends``, ``repeat``
    times each. Every run sends the same requests; run ``k`` (0, 1...) draws its
    Poisson arrivals with seed ``env.seed + k``, the same trace for every contender in
    that run: one trace's bursts can offer well above its nominal load (section 2's
    seed 1 offers 106% of capacity at "90%", ``benchmarks/shared_queue.py``), so
    repeated runs spread over traces, and contenders are compared on the same ones.

    Loads are the outer loop, then the runs; the contenders take turns within each,
    starting with a different one each time, so a machine that slows down over the run
    does not favour whoever went first. Each contender starts in front of idle servers
    (:func:`~comparison.common.wait_idle`): nothing an earlier one left running counts
    against it, and the wait is printed and kept (``Result.settled``). Each run's
    prompts carry a salt of their own (:class:`~corral.bench.workload.Workload`): the
    servers keep earlier prompts in their caches (llama-server's host prompt cache
    holds thousands of short ones), and without it whoever ran second found the same
    prompts cached and read less of each.
    """
    if meter is None and usage_url:
        meter = UsageMeter(usage_url)
    results = []
    rounds = [(load, rate, run) for load, rate in rates for run in range(repeat)]
    for turn, (load, rate, run) in enumerate(rounds):
        shift = turn % len(contenders)
        for name in [*contenders[shift:], *contenders[:shift]]:
            settled = await wait_idle([b.addr for b in backends], procs=procs)
            mark = procs.mark()
            running = await start(name, backends, procs, env)
            try:
                if meter is not None:
                    await meter.reset()
                runner = Runner(
                    Target(running.url, api="chat", timeout=timeout),
                    # the same calls, salted: nothing of an earlier run's prompts is
                    # left in the servers' caches for this one
                    Workload(spec, salt=f"[{name} {turn}]"),
                    Load(rate=rate, duration=duration, seed=env.seed + run),
                )
                outcomes = await runner.run()
                usage = await meter.read() if meter is not None else {}
                cpu = _cpu_of(procs.pids_since(mark))
            finally:
                procs.stop_since(mark)
            summary = summarise(outcomes)
            result = Result(name, load, rate, summary, outcomes, usage, settled, run, cpu)
            results.append(result)
            hit = summary.cache_hit_rate
            print(
                f"  {name:<17} load {load:>4.0%}"
                + (f" run {run + 1}/{repeat}" if repeat > 1 else "")
                + f": servers idle after {settled:.1f} s; {summary.succeeded}/"
                f"{summary.requests} ok, TTFT p50 {_s(summary, 'ttft', 'p50')} s, "
                f"p99 {_s(summary, 'ttft', 'p99')} s"
                + ("" if hit is None else f", cache hit {hit:.0%}")
                + ("" if result.cpu_share is None else f", its CPU {result.cpu_share:.2f} s/s"),
                file=sys.stderr,
                flush=True,
            )
    order = {name: i for i, name in enumerate(contenders)}
    return sorted(results, key=lambda r: (r.load, order[r.contender], r.run))


def _s(summary: Summary, measure: str, quantile: str) -> str:
    dist = getattr(summary, measure)
    return "-" if dist is None else f"{getattr(dist, quantile):.2f}"


def quantile(r: Result, measure: str, name: str) -> float | None:
    """A quantile (``p50``, ``p99``) of a measure (``ttft``, ``latency``) of one run."""
    dist = getattr(r.summary, measure)
    return None if dist is None else float(getattr(dist, name))


def errors_cell(runs: Sequence[Result]) -> str:
    """The errors of one or more runs, summed by kind (``0`` when none)."""
    total: dict[str, int] = {}
    for r in runs:
        for kind, n in r.summary.errors.items():
            total[kind] = total.get(kind, 0) + n
    return ", ".join(f"{k} {v}" for k, v in total.items()) or "0"


def _row(runs: Sequence[Result], with_usage: bool) -> list[object]:
    name = runs[0].contender
    row: list[object] = [
        f"**{name}**" if name.startswith("corral") else name,
        spread([quantile(r, "ttft", "p50") for r in runs]),
        spread([quantile(r, "ttft", "p99") for r in runs]),
        spread([quantile(r, "latency", "p50") for r in runs]),
        spread([quantile(r, "latency", "p99") for r in runs]),
        spread([r.summary.output_tokens_per_second for r in runs], "{:,.0f}"),
        errors_cell(runs),
    ]
    if with_usage:
        row += [
            spread([r.usage.get("busy_share_spread", 0) for r in runs], "{:.0%}"),
            spread([r.usage.get("queued_in_servers", 0) for r in runs], "{:.1f}"),
            spread([r.usage.get("misplaced", 0) for r in runs], "{:.1f}"),
        ]
    return row


HEADER = ["contender", "TTFT p50 (s)", "TTFT p99 (s)", "e2e p50 (s)", "e2e p99 (s)",
          "output tok/s", "errors"]  # fmt: skip
USAGE_HEADER = ["busy spread", "queued in servers", "misplaced"]


def tables(results: Sequence[Result], with_usage: bool) -> str:
    out = []
    for load in sorted({r.load for r in results}):
        rows = [runs for (at, _), runs in runs_of(results).items() if at == load]
        rate = rows[0][0].rate
        repeated = max(len(runs) for runs in rows)
        every = "" if repeated == 1 else f"; {repeated} runs each: median (min-max)"
        out.append(f"**{load:.0%} of capacity** ({rate:.2f} requests/s, Poisson{every}):\n")
        header = HEADER + (USAGE_HEADER if with_usage else [])
        out.append(markdown_table(header, [_row(runs, with_usage) for runs in rows]))
        out.append("")
    return "\n".join(out)


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _cpu_of(pids: Sequence[int]) -> float | None:
    """CPU seconds these processes and their children (nginx's workers) used so far;
    None if none could be read."""
    total, read = 0.0, False
    for pid in [*pids, *children_of(pids)]:
        try:
            total += cpu_seconds(pid)
            read = True
        except (OSError, ValueError, IndexError):  # exited meanwhile
            continue
    return total if read else None


def cpu_lines(results: Sequence[Result]) -> list[str]:
    """One line per load: the CPU each contender's own processes used per second of
    its run (median over repeated runs): on a machine whose cores the servers need,
    what a balancer takes, they lose."""
    lines = []
    grouped = runs_of(results)
    for load in sorted({r.load for r in results}):
        parts = []
        for (at, name), runs in grouped.items():
            if at == load:
                share = _median([r.cpu_share for r in runs])
                if share is not None:
                    parts.append(f"{name} {share:.2f}")
        if parts:
            lines.append(
                f"- at {load:.0%}, CPU seconds each contender's own processes used per "
                "second of its run: " + ", ".join(parts)
            )
    return lines


def ratio_lines(results: Sequence[Result]) -> list[str]:
    """One line per load: each contender's TTFT p99 and throughput relative to Corral's
    (medians over repeated runs)."""
    lines = []
    grouped = runs_of(results)
    for load in sorted({r.load for r in results}):
        p99 = {
            name: _median([quantile(r, "ttft", "p99") for r in runs])
            for (at, name), runs in grouped.items() if at == load
        }  # fmt: skip
        tps = {
            name: _median([r.summary.output_tokens_per_second for r in runs]) or 0.0
            for (at, name), runs in grouped.items() if at == load
        }  # fmt: skip
        base = p99.get("corral")
        if base is None:
            continue
        parts = []
        for name, value in p99.items():
            if name == "corral" or value is None:
                continue
            ttft = value / max(base, 1e-9)
            share = tps[name] / max(tps["corral"], 1e-9)
            parts.append(f"{name} {ttft:.2f}x TTFT p99, {share:.0%} of the tokens/s")
        if parts:
            lines.append(
                f"- at {load:.0%}, next to Corral ({base:.2f} s TTFT p99): " + "; ".join(parts)
            )
    return lines


def draw(results: Sequence[Result], env: SuiteEnv, prefix: str, title: str) -> list[str]:
    """Charts: TTFT p99 per load and contender; TTFT CDFs at the middle load (the first
    run of each, where runs were repeated)."""
    loads = sorted({r.load for r in results})
    names = list(dict.fromkeys(r.contender for r in results))
    p99 = {
        n: [
            next((r.summary.ttft.p99 for r in results
                  if r.contender == n and r.load == load and r.run == 0 and r.summary.ttft),
                 0.0)
            for load in loads
        ]
        for n in names
    }  # fmt: skip
    env.out_dir.mkdir(parents=True, exist_ok=True)
    bars = env.out_dir / f"{prefix}-ttft-p99.png"
    charts.grouped_bars(
        [f"{load:.0%} load" for load in loads], p99, bars,
        ylabel="time to first token, p99 (s)", title=title, log=True,
    )  # fmt: skip
    middle = loads[len(loads) // 2]
    cdf = env.out_dir / f"{prefix}-cdf.png"
    charts.latency_cdfs(
        {r.contender: r.outcomes for r in results if r.load == middle and r.run == 0},
        cdf,
        f"{title}: {middle:.0%} load",
    )
    return [
        f"![TTFT p99 by load]({env.chart_link(bars.name)})",
        f"![latency distributions]({env.chart_link(cdf.name)})",
    ]


async def run(env: SuiteEnv, contenders: Sequence[str] = NAMES) -> Section:
    scale = QUICK if env.quick else FULL
    spec = WorkloadSpec(
        shape="heavy-tail",
        prompt_tokens=64,
        output_tokens=scale.median_tokens,
        max_output_tokens=scale.max_tokens,
        seed=env.seed,
    )
    planned = [c.max_tokens for c in Workload(spec).take(5000)]
    mean_tokens = statistics.mean(planned)
    cap = capacity(scale, mean_tokens, spec.prompt_tokens)
    rates = [(load, load * cap) for load in scale.loads]
    with processes(env, "routing") as procs:
        backends, usage_url = await start_simfleet(
            env, procs, scale.servers, scale.slots,
            "--tps", str(scale.tokens_per_second), "--slowdown", str(scale.slowdown),
        )  # fmt: skip
        results = await compare(
            env, procs, backends, spec, rates, scale.duration, contenders, usage_url
        )
    speed = SpeedModel(scale.tokens_per_second, scale.slowdown)
    p99_planned = sorted(planned)[int(0.99 * len(planned))]
    md = [
        f"{scale.servers} simulated llama-servers with {scale.slots} slots each "
        f"({scale.servers * scale.slots} slots). One slot alone decodes "
        f"{scale.tokens_per_second:g} tokens/s; with all {scale.slots} busy each decodes "
        f"{speed.slot_speed(scale.slots):.1f} (contention {scale.slowdown:g} per extra busy "
        "slot). Requests beyond a server's slots wait in that server's queue, as in "
        "llama-server.",
        "",
        f"Workload: `heavy-tail`, seed {env.seed}: {spec.prompt_tokens}-word prompts, "
        f"answers with a median of {scale.median_tokens} tokens, a mean of "
        f"{mean_tokens:.0f} and a p99 of {p99_planned} (cap {scale.max_tokens}), all "
        f"streamed. Capacity with every slot busy: {cap:.2f} requests/s. Each run sends "
        f"Poisson arrivals for {scale.duration:g} s and waits for every answer; every "
        "contender gets the same arrival trace and the same requests.",
        "",
        "Columns: TTFT is time to first token and e2e end-to-end latency, over successful "
        "requests. *busy spread*: the difference between the busiest and the idlest "
        "server's share of busy slot-time. *queued in servers*: requests waiting inside "
        "the servers' own queues, on average. *misplaced*: of those, requests waiting in "
        "one server while another had a free slot, on average (the cost of routing "
        "blind). Corral and HAProxy hold requests in their own queue instead.",
        "",
        tables(results, with_usage=True),
        *ratio_lines(results),
        "",
        *draw(results, env, "routing", "simulated fleet"),
    ]
    data = {
        "scale": scale.__dict__ if hasattr(scale, "__dict__") else repr(scale),
        "capacity_rps": cap,
        "results": [
            {"contender": r.contender, "load": r.load, "rate": r.rate,
             "summary": r.summary.to_dict(), "usage": r.usage, "settled_s": r.settled}
            for r in results
        ],
    }  # fmt: skip
    return Section("Routing quality: a simulated fleet", "\n".join(md), data)


def main(argv: Sequence[str] | None = None) -> int:
    return section_main("routing", __doc__, run, argv, contenders=NAMES)


if __name__ == "__main__":
    sys.exit(main())


async def start_simfleet(
    env: SuiteEnv, procs: Processes, servers: int, slots: int, *flags: str
) -> tuple[list[Backend], str]:
    """A simulated fleet in one process (``benchmarks/comparison/simfleet.py``), pinned
    to core 1: its backends, and the URL of its usage statistics. ``flags`` go to
    simfleet (speeds, slowdown, prompt cache...)."""
    ports = [free_port() for _ in range(servers)]
    stats = free_port()
    procs.start(
        "simfleet",
        env.pin("1", [
            *harness_command("simfleet"),
            "--ports", ",".join(map(str, ports)), "--stats-port", str(stats),
            "--slots", str(slots), "--seed", str(env.seed), *flags,
        ]),
    )  # fmt: skip
    usage_url = f"http://127.0.0.1:{stats}/usage"
    await wait_http(usage_url, procs=procs)
    return [Backend(f"sim-{i}", p, slots) for i, p in enumerate(ports, 1)], usage_url
