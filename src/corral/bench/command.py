"""``corral bench``: point a load generator at any OpenAI-compatible or llama.cpp endpoint."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from corral.bench.api import APIS
from corral.bench.driver import Load, Runner, Target
from corral.bench.stats import Outcome, Summary, format_table, summarise
from corral.bench.workload import HISTORIES, SHAPES, Workload, WorkloadError, WorkloadSpec
from corral.config.schema import number
from corral.writable import cannot_write_file, cannot_write_into

DEFAULT_REQUESTS = 100
_SPEC = WorkloadSpec()  # the defaults of the workload's fields

SHAPE_FLAGS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "tail_sigma": (
        "--tail-sigma",
        "tail_sigma",
        ("heavy-tail", "multi-turn", "shared-prefix", "no-sharing"),
    ),
    "sessions": ("--sessions", "sessions", ("multi-turn",)),
    "turns": ("--turns", "turns", ("multi-turn",)),
    "turn_tokens": ("--turn-tokens", "turn_tokens", ("multi-turn",)),
    "history": ("--history", "history", ("multi-turn",)),
    "groups": ("--groups", "groups", ("shared-prefix",)),
    "group_users": ("--group-users", "users", ("shared-prefix",)),
    "prefix_tokens": ("--prefix-tokens", "prefix_tokens", ("shared-prefix", "no-sharing")),
}
"""The workload flags that only some workloads use: parsed name -> (flag,
:class:`WorkloadSpec` field, the workloads that use it). Given for another workload,
they are refused, not ignored."""
CHARTS_MISSING = "--charts needs matplotlib, which is not installed: pip install 'corral[charts]'"


def add_arguments(p: argparse.ArgumentParser, flag: Callable[..., None]) -> None:
    """The bench options; ``flag`` adds one that may also come from the environment."""
    p.add_argument(
        "url",
        help="base URL of the endpoint: Corral's inference listener, a llama-server, or any "
        "OpenAI-compatible server (e.g. http://127.0.0.1:8061)",
    )
    flag(p, "--api", "which API to call", choices=APIS, default="chat")
    flag(p, "--model", "model to ask for (default: none sent; one-model servers accept that)")
    flag(p, "--api-key", "sent as Authorization: Bearer KEY")
    how = p.add_argument_group("load (closed loop: --users; open loop: --rate)")
    loop = how.add_mutually_exclusive_group()
    loop.add_argument("--users", type=_int(1), help="concurrent users, closed loop (default 4)")
    loop.add_argument("--rate", type=number(0), help="requests per second, Poisson arrivals")
    how.add_argument(
        "--duration", type=number(0), help="seconds to issue requests for (then wait for answers)"
    )
    how.add_argument(
        "--requests",
        type=_int(1),
        help=f"requests to send (default {DEFAULT_REQUESTS} when no --duration)",
    )
    how.add_argument(
        "--request-timeout",
        type=number(0),
        default=600.0,
        help="seconds one request may take (default %(default)s)",
    )
    w = p.add_argument_group("workload (seeded: the same seed sends the same requests)")
    w.add_argument(
        "--workload",
        choices=SHAPES,
        default="fixed",
        help="fixed: every answer --output-tokens long; heavy-tail: mostly short answers "
        "and a few very long ones (log-normal, median --output-tokens); multi-turn: chats "
        "whose whole growing history is resent each turn (prefixes shared within a "
        "conversation); shared-prefix: groups of users sharing a long document, each "
        "asking short questions after it; no-sharing: the same lengths with nothing to "
        "reuse, the control (default %(default)s)",
    )
    w.add_argument("--prompt-tokens", type=_int(1), default=32, help="default %(default)s")
    w.add_argument(
        "--output-tokens",
        type=_int(1),
        default=64,
        help="tokens per answer; the median for heavy-tail and multi-turn (default %(default)s)",
    )
    w.add_argument(
        "--max-output-tokens", type=_int(1), default=2048, help="cap (default %(default)s)"
    )
    w.add_argument(
        "--tail-sigma",
        type=number(0, inclusive=True),
        help="answer lengths' spread, log-normal sigma; not for fixed "
        f"(default {_SPEC.tail_sigma})",
    )
    w.add_argument(
        "--stream-share",
        type=number(0, inclusive=True),
        default=1.0,
        help="share of streamed requests, 0..1 (default %(default)s)",
    )
    w.add_argument(
        "--sessions",
        type=_int(1),
        help=f"multi-turn: open conversations (default {_SPEC.sessions})",
    )
    w.add_argument(
        "--turns",
        type=_int(1),
        help=f"multi-turn: turns per conversation (default {_SPEC.turns})",
    )
    w.add_argument(
        "--turn-tokens",
        type=_int(1),
        help="multi-turn: words in each user turn (default: a quarter of --prompt-tokens)",
    )
    w.add_argument(
        "--history",
        choices=HISTORIES,
        help="multi-turn: the earlier answers a turn resends: planned (text of the planned "
        "length, the same every run) or served (the server's own words, as a chat client "
        "sends them back; each turn waits for the answer before it, so an open loop's "
        f"turn may go later than its arrival) (default {_SPEC.history})",
    )
    w.add_argument("--groups", type=_int(1), help=f"shared-prefix: groups (default {_SPEC.groups})")
    w.add_argument(
        "--group-users",
        type=_int(1),
        help=f"shared-prefix: users per group (default {_SPEC.users})",
    )
    w.add_argument(
        "--prefix-tokens",
        type=_int(1),
        help="shared-prefix, no-sharing: words of the document before each question "
        f"(default {_SPEC.prefix_tokens})",
    )
    w.add_argument("--seed", type=int, default=1, help="default %(default)s")
    w.add_argument(
        "--no-ignore-eos",
        dest="ignore_eos",
        action="store_false",
        help="let the model stop early (by default llama.cpp's ignore_eos asks for exactly "
        "the planned number of tokens)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the summary and every request here")
    out.add_argument(
        "--charts",
        type=Path,
        help="write PNG charts into this directory (needs the charts extra: "
        "pip install 'corral[charts]')",
    )
    out.add_argument("--title", default="", help="title for the charts")
    out.add_argument("--no-progress", dest="progress", action="store_false")


def _int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
        return value

    parse.__name__ = "integer"
    return parse


def charts_unavailable() -> str | None:
    """Why ``--charts`` cannot work here, or None when it can. It imports
    :mod:`corral.bench.charts` (matplotlib, the ``charts`` extra); :func:`run` asks
    before the run, so that a missing extra is said at once, not after a long run.

    Raises:
        ImportError: for anything missing other than matplotlib itself.
    """
    try:
        importlib.import_module("corral.bench.charts")
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] != "matplotlib":
            raise
        return CHARTS_MISSING
    return None


def plan(args: argparse.Namespace) -> tuple[Target, WorkloadSpec, Load]:
    """What the options ask for. Raises :class:`WorkloadError` for combinations that
    cannot work."""
    if not args.url.startswith(("http://", "https://")):
        raise WorkloadError(f"the URL must start with http:// or https://, got {args.url!r}")
    target = Target(
        url=args.url,
        api=args.api,
        model=args.model or None,
        api_key=args.api_key or None,
        ignore_eos=args.ignore_eos,
        timeout=args.request_timeout,
    )
    shaped: dict[str, Any] = {}
    for name, (flag, field, shapes) in SHAPE_FLAGS.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if args.workload not in shapes:
            raise WorkloadError(
                f"{flag} is for --workload {' or '.join(shapes)}, not {args.workload}"
            )
        shaped[field] = value
    spec = WorkloadSpec(
        shape=args.workload,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        max_output_tokens=args.max_output_tokens,
        stream_share=args.stream_share,
        seed=args.seed,
        **shaped,
    )
    requests = args.requests
    if requests is None and args.duration is None:
        requests = DEFAULT_REQUESTS
    users = args.users if args.users is not None or args.rate is not None else 4
    load = Load(users=users, rate=args.rate, duration=args.duration, requests=requests)
    return target, spec, load


async def run(args: argparse.Namespace) -> int:
    """Run the benchmark the options describe; print the table; the exit code."""
    try:
        target, spec, load = plan(args)
    except WorkloadError as exc:
        print(f"corral bench: {exc}", file=sys.stderr)
        return 2
    missing = charts_unavailable() if args.charts else None
    if missing:
        print(f"corral bench: {missing}", file=sys.stderr)
        return 2
    for flag, why in (
        ("--json", args.json and cannot_write_file(args.json)),
        ("--charts", args.charts and cannot_write_into(args.charts)),
    ):
        if why:  # said now, not after the run
            print(f"corral bench: {flag}: {why}", file=sys.stderr)
            return 2
    print(f"corral bench: {target.endpoint}, {spec.shape} workload, {load.describe()}")
    show = args.progress and sys.stderr.isatty()
    runner = Runner(target, Workload(spec), load)
    started = time.time()
    interrupted = False
    with _progress(runner, load, show):
        try:
            outcomes = await runner.run()
        except asyncio.CancelledError:  # Ctrl-C: report what finished
            interrupted = True
            outcomes = sorted(runner.outcomes, key=lambda o: o.index)
    summary = summarise(outcomes)
    print(format_table(summary))
    if args.json:
        _write_json(args.json, target, spec, load, summary, outcomes, started)
        print(f"wrote {args.json}")
    if args.charts:
        from corral.bench import charts

        args.charts.mkdir(parents=True, exist_ok=True)
        title = args.title or f"{spec.shape}, {load.describe()}"
        for path in (
            charts.latency_cdfs({"run": outcomes}, args.charts / "latency.png", title),
            charts.timeline(outcomes, args.charts / "timeline.png", title),
        ):
            print(f"wrote {path}")
    if interrupted:
        print("corral bench: interrupted; the figures cover the requests that finished")
        return 130
    if outcomes and summary.succeeded == 0:
        print("corral bench: no request succeeded (see errors above)", file=sys.stderr)
        return 1
    return 0


def _write_json(
    path: Path,
    target: Target,
    spec: WorkloadSpec,
    load: Load,
    summary: Summary,
    outcomes: list[Outcome],
    started: float,
) -> None:
    target_info = asdict(target)
    if target_info.get("api_key"):
        target_info["api_key"] = "***"
    document: dict[str, Any] = {
        "started_at": started,
        "target": target_info,
        "workload": asdict(spec),
        "load": asdict(load),
        "summary": summary.to_dict(),
        "requests": [asdict(o) for o in outcomes],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1))


@contextlib.contextmanager
def _progress(runner: Runner, load: Load, show: bool, stream: TextIO | None = None) -> Any:
    """A progress bar on stderr while the run goes (nothing when not a terminal)."""
    if not show:
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    by_time = load.requests is None
    total = load.duration if by_time else load.requests
    progress = Progress(
        TextColumn("[bold]bench"),
        BarColumn(),
        TextColumn("{task.fields[what]}"),
        TimeElapsedColumn(),
        console=Console(file=stream or sys.stderr),
        transient=True,
    )
    task = progress.add_task("bench", total=total, what="")

    def update() -> None:
        done = len(runner.outcomes)
        failed = sum(1 for o in runner.outcomes if not o.ok)
        completed = min(runner.elapsed(), total or 0) if by_time else done
        what = f"{done:,} done, {failed:,} failed, {runner.in_flight:,} in flight"
        progress.update(task, completed=completed, what=what)

    async def tick() -> None:
        while True:
            update()
            await asyncio.sleep(0.2)

    with progress:
        ticker = asyncio.get_running_loop().create_task(tick())
        try:
            yield
        finally:
            ticker.cancel()
