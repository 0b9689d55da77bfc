"""Section 3, second part: the relay of streams token by token.

A paced streaming backend (:mod:`comparison.ticker`: one SSE event per token, each
in its own write) is read directly and through Corral by many concurrent streams;
the part measures the tokens/s delivered, Corral's CPU per token and so the tokens/s
one core can relay. :mod:`comparison.overhead` runs it after its first part.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from comparison.common import (
    Processes,
    SuiteEnv,
    SuiteError,
    child_env,
    free_port,
    get_json,
    harness_command,
    markdown_table,
    ratio,
    wait_http,
)
from comparison.pinned import Cores, Route, core_ticks, start_corral, tree_cpu
from comparison.ticker.drive import GO, STOP, DriveResult, parse_result
from comparison.ticker.framing import TOKEN_EVENT


@dataclass(frozen=True, slots=True)
class RelayScale:
    """The token-by-token part: paced streams from :mod:`comparison.ticker`."""

    rounds: int
    warmup: float
    """Seconds of streaming on each path before counting starts (each round)."""
    seconds: float
    """Seconds of counting per path and round."""
    connections: int
    """Concurrent streams, each asking for the next as soon as one ends."""
    rate: float
    """Tokens per second per stream (the ticker's ticks per second)."""
    tokens: int
    """Tokens per stream."""

    @property
    def offered(self) -> float:
        """Tokens per second the backend sends when it keeps pace."""
        return self.connections * self.rate


RELAY_FULL = RelayScale(rounds=3, warmup=3.0, seconds=10.0, connections=256, rate=200.0,
                        tokens=400)  # fmt: skip
RELAY_QUICK = RelayScale(rounds=1, warmup=0.5, seconds=1.0, connections=16, rate=200.0,
                         tokens=20)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RelayRun:
    """One counting window of one path."""

    drive: DriveResult
    wall: float
    """Seconds between the driver's start and stop lines, as the suite saw them."""
    proxy_cpu: float | None
    """CPU seconds of the proxy during the window (None: no proxy)."""
    backend_cpu: float
    load_busy: float
    proxy_core_busy: float
    """Busy share of the proxy's core, every process on it counted."""

    @property
    def tokens_per_second(self) -> float:
        return self.drive.tokens_per_second


@dataclass(frozen=True, slots=True)
class RelayRow:
    """One path's token-by-token figures (medians over rounds, counts summed)."""

    name: str
    connections: int
    offered_tokens_per_second: float
    tokens_per_second: float
    proxy_busy: float | None
    cpu_per_token_us: float | None
    """The proxy's CPU time per token delivered, per-request work included."""
    tokens_per_core_second: float | None
    """1e6 / :attr:`cpu_per_token_us`: what one core would relay at this cost."""
    backend_cpu_per_token_us: float
    load_busy: float
    proxy_core_busy: float
    """Busy share of the proxy's core, every process on it counted (above
    :attr:`proxy_busy`: something else ran there too)."""
    tokens_per_read: float
    """Token events per read at the client (more than 1: events arrived together)."""
    tokens: int
    streams: int
    bad_streams: int
    connection_errors: int


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarise_relay(name: str, runs: Sequence[RelayRun], scale: RelayScale) -> RelayRow:
    proxied = [r for r in runs if r.proxy_cpu is not None]
    per_token = (
        _median([(r.proxy_cpu or 0.0) * 1e6 / max(1, r.drive.tokens) for r in proxied])
        if proxied
        else None
    )
    return RelayRow(
        name=name,
        connections=scale.connections,
        offered_tokens_per_second=scale.offered,
        tokens_per_second=_median([r.tokens_per_second for r in runs]),
        proxy_busy=_median([(r.proxy_cpu or 0.0) / r.wall for r in proxied]) if proxied else None,
        cpu_per_token_us=per_token,
        tokens_per_core_second=1e6 / per_token if per_token else None,
        backend_cpu_per_token_us=_median(
            [r.backend_cpu * 1e6 / max(1, r.drive.tokens) for r in runs]
        ),
        load_busy=_median([r.load_busy for r in runs]),
        proxy_core_busy=_median([r.proxy_core_busy for r in runs]),
        tokens_per_read=_median([r.drive.tokens / max(1, r.drive.reads) for r in runs]),
        tokens=sum(r.drive.tokens for r in runs),
        streams=sum(r.drive.streams for r in runs),
        bad_streams=sum(r.drive.bad_streams for r in runs),
        connection_errors=sum(r.drive.connection_errors for r in runs),
    )


async def start_relay(
    env: SuiteEnv, cores: Cores, scale: RelayScale, procs: Processes
) -> tuple[list[Route], int]:
    """Start the ticker backend and Corral in front of it; return the paths and the
    ticker's pid once all answer."""
    work = env.work_dir / "overhead"
    port = free_port()
    ticker = procs.start("ticker", env.pin(cores.backend, [
        *harness_command("ticker"), "--port", str(port),
        "--slots", str(2 * scale.connections), "--tokens", str(scale.tokens),
        "--rate", str(scale.rate),
    ]))  # fmt: skip
    backend = f"http://127.0.0.1:{port}"
    await wait_http(f"{backend}/health", procs=procs)
    corral, balancer_pid = await start_corral(env, cores, procs, work, port, "ticker")
    return [Route("direct", backend), Route("corral", corral, balancer_pid)], ticker.pid


async def drive_once(
    env: SuiteEnv,
    cores: Cores,
    route: Route,
    backend_pid: int,
    scale: RelayScale,
    log: Path,
) -> RelayRun:
    """One run of the ticker's driver (pinned to the load core) against ``route``,
    with the CPU counters read when it says counting starts and stops."""
    command = env.pin(cores.load, [
        *harness_command("ticker"), "--drive", route.url,
        "--connections", str(scale.connections), "--tokens", str(scale.tokens),
        "--warmup", str(scale.warmup), "--seconds", str(scale.seconds),
    ])  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=child_env()
    )

    Sample = tuple[float, float, tuple[int, int], tuple[int, int], float]

    def sample() -> Sample:
        proxy = tree_cpu(route.proxy_pid) if route.proxy_pid else 0.0
        ticks = core_ticks(cores.load), core_ticks(cores.proxy)
        return proxy, tree_cpu(backend_pid), *ticks, time.monotonic()

    lines: list[str] = []
    marks: dict[str, Sample] = {}
    assert proc.stdout is not None

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line in (GO, STOP):
                marks[line] = sample()
            lines.append(line)
        await proc.wait()

    limit = scale.warmup + scale.seconds + 60
    try:
        await asyncio.wait_for(read(), limit)
    except TimeoutError:
        raise SuiteError(f"the ticker's driver did not finish within {limit:.0f} s") from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = "\n".join(lines)
    with log.open("a") as f:
        f.write(f"$ {' '.join(command)}\n{text}\n")
    if proc.returncode != 0 or GO not in marks or STOP not in marks:
        raise SuiteError(f"the ticker's driver failed (status {proc.returncode}):\n{text[-2000:]}")
    try:
        result = parse_result(text)
    except (ValueError, TypeError) as exc:
        raise SuiteError(f"cannot read the ticker driver's result: {exc}") from None
    (p0, b0, load0, core0, t0), (p1, b1, load1, core1, t1) = marks[GO], marks[STOP]

    def busy(before: tuple[int, int], after: tuple[int, int]) -> float:
        return (after[0] - before[0]) / max(1, after[1] - before[1])

    return RelayRun(
        drive=result,
        wall=t1 - t0,
        proxy_cpu=p1 - p0 if route.proxy_pid else None,
        backend_cpu=b1 - b0,
        load_busy=busy(load0, load1),
        proxy_core_busy=busy(core0, core1),
    )


async def measure_relay(
    env: SuiteEnv,
    paths: Sequence[Route],
    backend_pid: int,
    scale: RelayScale,
    cores: Cores,
    procs: Processes,
) -> dict[str, list[RelayRun]]:
    """Every path, ``scale.rounds`` times, the paths taking turns."""
    log = env.work_dir / "overhead" / "ticker-driver.log"
    runs: dict[str, list[RelayRun]] = {p.name: [] for p in paths}
    for round_ in range(scale.rounds):
        for p in paths:
            procs.check_alive()
            run = await drive_once(env, cores, p, backend_pid, scale, log)
            runs[p.name].append(run)
            busy = "" if run.proxy_cpu is None else f", proxy {run.proxy_cpu / run.wall:.0%}"
            print(
                f"  token relay round {round_ + 1}/{scale.rounds} {p.name:<7} "
                f"{run.tokens_per_second:,.0f} tokens/s{busy}",
                file=sys.stderr,
            )
    return runs


def check_relay(rows: Sequence[RelayRow], scale: RelayScale) -> None:
    """:class:`SuiteError` unless every path delivered tokens, every stream that ended
    was whole, and the tokens counted fit the streams that ended: at most one
    stream per connection can straddle each end of a window."""
    for r in rows:
        if r.tokens <= 0:
            raise SuiteError(f"token relay, {r.name}: no token arrived")
        if r.bad_streams or r.connection_errors:
            raise SuiteError(
                f"token relay, {r.name}: {r.bad_streams} streams were not whole (status, "
                f"token count or [DONE]) and {r.connection_errors} connections failed"
            )
        straddle = 2 * scale.connections * scale.rounds
        if r.tokens > (r.streams + straddle) * scale.tokens:
            raise SuiteError(
                f"token relay, {r.name}: {r.tokens:,} tokens counted, more than "
                f"{r.streams:,} streams of {scale.tokens} can hold"
            )


_RELAY_LABEL = {"direct": "direct (no proxy)", "corral": "**Corral**"}
RELAY_HEADER = ["path", "streams x tokens/s each", "offered tokens/s", "tokens/s delivered",
                "proxy core busy", "proxy CPU µs/token", "tokens/s per proxy core",
                "backend CPU µs/token", "load core busy", "tokens per read",
                "bad streams"]  # fmt: skip


def relay_table(rows: Sequence[RelayRow], scale: RelayScale) -> str:
    def opt(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    return markdown_table(RELAY_HEADER, [
        [
            _RELAY_LABEL.get(r.name, r.name), f"{r.connections} x {scale.rate:,.0f}",
            f"{r.offered_tokens_per_second:,.0f}", f"{r.tokens_per_second:,.0f}",
            opt(r.proxy_busy, ".0%"), opt(r.cpu_per_token_us, ",.1f"),
            opt(r.tokens_per_core_second, ",.0f"), f"{r.backend_cpu_per_token_us:,.1f}",
            f"{r.load_busy:.0%}", f"{r.tokens_per_read:.2f}",
            r.bad_streams + r.connection_errors,
        ]
        for r in rows
    ])  # fmt: skip


def relay_text(scale: RelayScale, cores: Cores, env: SuiteEnv) -> list[str]:
    event = len(TOKEN_EVENT)
    if env.cores == 1:
        where = "nothing is pinned (this machine has one core)"
    elif cores.load == cores.backend:
        where = (
            f"Corral's balancer is pinned to core {cores.proxy}; the ticker, the driver "
            f"and Corral's agent share core {cores.backend}"
        )
    else:
        where = (
            f"Corral's balancer is pinned to core {cores.proxy}, the driver to core "
            f"{cores.load}, the ticker and Corral's agent to core {cores.backend}"
        )
    return [
        "### Token by token",
        "",
        "The figures above are per request. Here the tokens arrive apart in time, as "
        "from a decoding server, so every token costs the proxy a read and a write. The "
        "backend is `python -m comparison.ticker` (one Python process, uvloop and "
        "httptools), which poses as a llama-server with "
        f"{2 * scale.connections} idle slots and streams paced tokens: every open "
        f"stream gets one `chat.completion.chunk` event ({event} bytes, its own write "
        f"and its own HTTP chunk) every {1000 / scale.rate:g} ms, all streams in the "
        "same tick, as llama-server's batched decoding emits a token for every busy "
        f"slot per step. A stream is {scale.tokens} tokens "
        f"({scale.tokens / scale.rate:g} s), then a last event with `timings` and "
        "`data: [DONE]`.",
        "",
        "The load generator is the same module with `--drive` (one Python process): it "
        f"keeps {scale.connections} streams open, each connection asking for the next "
        f"stream as soon as one ends, so {scale.connections} x {scale.rate:g} = "
        f"{scale.offered:,.0f} tokens/s are offered; it counts the token events as "
        f"they arrive, for {scale.seconds:g} s after {scale.warmup:g} s of warm-up, "
        f"and checks that every stream that ends is whole. Two paths, **direct** "
        f"(driver to ticker) and **Corral** (balancer and agent as above); {where}. "
        f"The paths take turns, {scale.rounds} round(s); the table shows medians.",
        "",
        "*proxy CPU µs/token*: the balancer's CPU time over the counting window divided "
        "by the tokens delivered; it includes the per-request work, spread over "
        f"{scale.tokens} tokens. *tokens/s per proxy core*: 1,000,000 / that, what "
        "one core would relay at this cost per token (measured when the core is full, "
        "extrapolated when it is not). *backend CPU µs/token*: the same for the "
        "ticker, as a yardstick. *tokens per read*: token events per read at the "
        "driver; above 1, events arrived together, which costs a proxy less per token.",
    ]


def relay_findings(
    rows: Sequence[RelayRow],
    scale: RelayScale,
    late_ticks: int,
    per_request_us: float | None = None,
    burst_tokens: int = 0,
) -> list[str]:
    """The figures in words. ``per_request_us``: Corral's CPU per request in the
    first part, whose streams carry ``burst_tokens`` tokens each."""
    by = {r.name: r for r in rows}
    direct, corral = by.get("direct"), by.get("corral")
    if direct is None or corral is None:
        return []
    lines = [
        f"- Direct, the driver received {direct.tokens_per_second:,.0f} tokens/s, "
        f"{ratio(direct.tokens_per_second, scale.offered)} the {scale.offered:,.0f} "
        f"offered; the ticker spent {direct.backend_cpu_per_token_us:,.1f} µs of CPU per "
        f"token, and {late_ticks:,} of its ticks (over the whole part) ran more than "
        "one interval late.",
    ]
    if corral.cpu_per_token_us is not None and corral.proxy_busy is not None:
        per_core = corral.tokens_per_core_second or 0.0
        verdict = "meets" if per_core >= 50_000 else "does not meet"
        full = (
            "its core was nearly full, so it could not relay much more"
            if corral.proxy_busy >= 0.9
            else "extrapolated: its core was not full"
        )
        lines.append(
            f"- Through Corral, {corral.tokens_per_second:,.0f} tokens/s arrived, "
            f"{ratio(corral.tokens_per_second, direct.tokens_per_second)} the direct "
            f"path's. Corral's core was {corral.proxy_busy:.0%} busy, "
            f"{corral.cpu_per_token_us:,.1f} µs of CPU per token: one core relays about "
            f"{per_core:,.0f} tokens/s at that cost ({full}), which {verdict} the target "
            "of 50,000 streamed tokens/s relayed on one core."
        )
        others = corral.proxy_core_busy - corral.proxy_busy
        if others >= 0.1:
            lines.append(
                f"- Corral's core was {corral.proxy_core_busy:.0%} busy in all, "
                f"{others:.0%} of it other processes of this shared machine: Corral "
                "could not have all of its core, so its tokens/s is below what it would "
                "relay alone; the CPU time per token is the figure to go by."
            )
        if per_request_us is not None:
            share = per_request_us / scale.tokens
            lines.append(
                f"- Of those µs per token, the per-request work is roughly "
                f"{share:,.1f} µs: the first table's {per_request_us:,.0f} "
                f"µs per request spread over {scale.tokens} tokens (that request also "
                f"relays {burst_tokens} tokens, so the per-token work is at least the rest)."
            )
    if corral.tokens_per_read > 1.2 * max(direct.tokens_per_read, 1.0):
        lines.append(
            f"- The driver got {corral.tokens_per_read:.2f} token events per read through "
            f"Corral against {direct.tokens_per_read:.2f} directly: Corral fell behind "
            "the ticks at times (busy, or its core taken by other processes) and then "
            "relayed several events in one write, which costs less per token than one "
            "event per write."
        )
    return lines


async def run_relay(
    env: SuiteEnv,
    cores: Cores,
    procs: Processes,
    per_request_us: float | None = None,
    burst_tokens: int = 0,
) -> tuple[list[str], dict[str, Any]]:
    """Run the part with ``procs`` (stopped by the caller); its markdown and data."""
    scale = RELAY_QUICK if env.quick else RELAY_FULL
    paths, ticker_pid = await start_relay(env, cores, scale, procs)
    runs = await measure_relay(env, paths, ticker_pid, scale, cores, procs)
    ticker = await asyncio.to_thread(get_json, f"{paths[0].url}/stats")
    rows = [summarise_relay(name, path_runs, scale) for name, path_runs in runs.items()]
    check_relay(rows, scale)
    if ticker["tokens"] < sum(r.tokens for r in rows):
        raise SuiteError("token relay: the driver counted more tokens than the ticker sent")
    md = [
        *relay_text(scale, cores, env),
        "",
        relay_table(rows, scale),
        "",
        *relay_findings(rows, scale, int(ticker["late_ticks"]), per_request_us, burst_tokens),
    ]
    data = {
        "scale": {**asdict(scale), "offered": scale.offered},
        "token_event_bytes": len(TOKEN_EVENT),
        "rows": [asdict(r) for r in rows],
        "runs": {
            name: [{**asdict(r), "tokens_per_second": r.tokens_per_second} for r in path_runs]
            for name, path_runs in runs.items()
        },
        "ticker": ticker,
    }
    return md, data
