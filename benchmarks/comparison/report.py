"""Run the comparison suite and write ``docs/benchmarks.md``.

    .venv/bin/python benchmarks/compare.py            # everything, about 40 minutes
    .venv/bin/python benchmarks/compare.py --quick    # tiny scale: checks the harness
    .venv/bin/python benchmarks/compare.py --sections routing,overhead

The page records the exact command, the machine and the versions of every contender,
then each section's tables and charts (PNG files in ``docs/benchmarks/``). Each
section's Markdown and raw figures are kept in ``docs/benchmarks/<section>.json``, so
``--sections`` reruns some sections and the page keeps the others from their last run
(each section says when and on which commit it ran).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from comparison.common import Section, SuiteEnv, SuiteError, markdown_table
from corral import __version__

SECTIONS = ("routing", "real_engine", "overhead", "control", "prefix")

INTRO = """\
Corral exists because generic balancers route LLM traffic badly. This page measures
that claim, and what Corral itself costs, side by side with nginx and HAProxy on one
machine in one run. Figures move from run to run on a shared machine: compare the
ratios within a run, not absolute figures across runs. Every figure here was measured
by the command below; none is edited by hand.

How to read it. Section 1 is the large, repeatable comparison: the same simulated
servers, requests and arrival trace for every contender. Section 2 repeats it on real
llama-servers at the only scale this CPU machine allows (two servers with two slots);
there a few long answers decide the tail of a run of a few dozen requests, so treat
differences within a row as noise unless they are large. Sections 3 and 4 are about
Corral's own cost. Section 5 is about the prompt cache: where a request is sent
decides whether a server reads a long history again or reuses it. Every contender
starts in front of idle servers (checked on `/slots`) with prompts of its own (a salt
before each, so none finds the previous contender's prompts in the servers' caches),
and real-server capacity comes from speeds measured on the servers directly, not
through any contender. HAProxy is given each
server's slot count by hand and is the only client of those servers, which is the
best case for a static configuration; Corral learns the slots from its agents,
follows servers as they come and go, and counts requests that reach a server from
elsewhere, which no contender here does.
"""


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        )
        dirty = subprocess.run(  # the page and charts this run rewrites do not count
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!docs/benchmarks.md",
                ":!docs/benchmarks",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, str]:
    return {
        "date": datetime.date.today().isoformat(),
        "corral": f"{__version__}, commit {_commit()}",
        "cpu": f"{_cpu()}, {os.cpu_count()} cores",
        "os": platform.platform(),
        "python": platform.python_version(),
        "nginx": _version(["nginx", "-v"]).removeprefix("nginx version: "),
        "haproxy": _version(["haproxy", "-v"]).split(" - ")[0],
        "wrk": _version(["wrk", "-v"]).split(" [")[0],
    }


def render(
    command: str,
    env_info: dict[str, str],
    sections: Sequence[Section],
    ran: Sequence[dict[str, Any]] = (),
) -> str:
    """The whole page. ``ran[i]`` says when section ``i`` ran (date, commit, command)."""
    lines = ["# Benchmarks", "", INTRO, "Regenerate with:", "", "```sh", command, "```", ""]
    lines += ["| environment | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in env_info.items()]
    lines.append("")
    for number, section in enumerate(sections, 1):
        lines += [f"## {number}. {section.title}", ""]
        if number <= len(ran) and ran[number - 1]:
            lines += [ran_line(ran[number - 1]), ""]
        lines += [section.markdown.strip(), ""]
    return "\n".join(lines)


def ran_line(when: dict[str, Any]) -> str:
    """The line under a section's title that says when and how it ran: from ``date``,
    ``commit`` and ``command`` (compare.py's own runs), or ``text`` for a section put
    together from several runs (section 5: parts on several commits), which then says
    it all itself. Raises KeyError when ``when`` has neither."""
    if "text" in when:
        return f"*{when['text']}*"
    return f"*Ran {when['date']} on commit {when['commit']}: `{when['command']}`*"


def targets(data: dict[str, dict[str, Any]]) -> str:
    """The speed targets of the foundation issue, against this page's figures."""
    rows: list[list[str]] = []
    overhead = {r["name"]: r for r in data.get("overhead", {}).get("rows", [])}
    if "corral" in overhead and "direct" in overhead:
        c, d = overhead["corral"], overhead["direct"]
        p50, p99 = c["p50_us"] - d["p50_us"], c["p99_us"] - d["p99_us"]
        rows.append(
            [
                "added latency p50 <= 0.5 ms, p99 <= 2 ms (section 3)",
                f"p50 +{p50 / 1000:.2f} ms, p99 +{p99 / 1000:.2f} ms",
                _met(p50 <= 500 and p99 <= 2000, p99 <= 2000 and p50 > 500, "p99 met, p50 not"),
            ]
        )
        relay = {r["name"]: r for r in data["overhead"].get("token_relay", {}).get("rows", [])}
        token = relay.get("corral")
        if token is not None and token.get("tokens_per_core_second"):
            per_core = token["tokens_per_core_second"]
            rows.append(
                [
                    "50,000 streamed tokens/s relayed on one core (section 3)",
                    f"{per_core:,.0f} tokens/s per core ({token['cpu_per_token_us']:.1f} µs of "
                    f"CPU per token, one event per write; {token['tokens_per_second']:,.0f} "
                    f"tokens/s delivered in the run)",
                    _met(per_core >= 50_000),
                ]
            )
        else:
            tps = c["tokens_per_second"]
            rows.append(
                [
                    "50,000 streamed tokens/s relayed on one core (section 3)",
                    f"{tps:,.0f} tokens/s, "
                    f"{data['overhead'].get('tokens_per_response', '?')}-token streams that "
                    "arrive in one burst (token by token is not measured)",
                    _met(tps >= 50_000),
                ]
            )
    control = data.get("control", {})
    biggest = max(control.get("rows", []), key=lambda r: r["agents"], default=None)
    if biggest is not None:
        p99 = biggest["pick_p99"] * 1e6
        rows.append(
            [
                "a pick under 50 µs p99 with 1,000 agents (section 4)",
                f"{p99:.1f} µs p99 with {biggest['agents']:,} agents (in-process)",
                _met(p99 < 50 and biggest["agents"] >= 1000),
            ]
        )
    memory = control.get("buffer_memory")
    if memory:
        total = memory["per_request_bytes"] * 10_000 / 1e6
        whole = memory.get("after_mib", 0) * 2**20 / 1e6
        rows.append(
            [
                "10,000 waiting requests in under 100 MB (section 4)",
                f"{total:.0f} MB for the requests ({memory['per_request_bytes']:,.0f} bytes "
                f"each); the balancer's whole RSS with them {whole:.0f} MB",
                _met(total < 100),
            ]
        )
    if not rows:
        return ""
    return markdown_table(["target (issue #2)", "measured here", "met?"], rows)


def _met(ok: bool, partly: bool = False, words: str = "") -> str:
    return "yes" if ok else (words if partly else "**no**")


def _save(path: Path, section: Section, when: dict[str, Any]) -> None:
    document = {"title": section.title, "markdown": section.markdown, "data": section.data}
    path.write_text(json.dumps({**document, "ran": when}, indent=1, default=str))


def _load(path: Path) -> tuple[Section, dict[str, Any]] | None:
    try:
        document = json.loads(path.read_text())
        section = Section(document["title"], document["markdown"], document.get("data", {}))
        return section, dict(document.get("ran", {}))
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def run_sections(env: SuiteEnv, names: Sequence[str]) -> dict[str, Section]:
    done = {}
    for name in names:
        module = importlib.import_module(f"comparison.{name}")
        print(f"[bench] section {name}...", file=sys.stderr)
        started = time.monotonic()
        section: Section = await module.run(env)
        print(f"[bench] section {name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
        done[name] = section
    return done


KEPT = (
    "<!-- Below this line: sections other scripts measure (queueing.py, fuzz.py, chaos.py), "
    "written by hand from their output. compare.py keeps them as they are. -->"
)
"""The line after which ``docs/benchmarks.md`` is not compare.py's to rewrite."""


def with_kept(text: str, old_page: str | None) -> str:
    """The generated ``text``, followed by the part of ``old_page`` from :data:`KEPT` on
    (the sections other scripts measured; rewriting the page once lost three of them).
    ``old_page`` None: ``text`` and an empty kept part. Raises ValueError for an old
    page without the line (what follows the generated sections there would be lost:
    the line went missing once, and the page could no longer be regenerated)."""
    if old_page is None:
        return text.rstrip("\n") + "\n\n" + KEPT + "\n"
    at = old_page.find(KEPT)
    if at < 0:
        raise ValueError(
            "the page has no line marking where the hand-written sections begin; "
            f"add this line above them, then run again:\n{KEPT}"
        )
    return text.rstrip("\n") + "\n\n" + old_page[at:]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="benchmarks/compare.py",
        description="Run Corral's comparison suite and write the benchmarks page.",
    )
    p.add_argument("--quick", action="store_true", help="tiny scale (checks the harness only)")
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, from {', '.join(SECTIONS)} (default: all)",
    )
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="the page")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each contender at each load in the real-server sections (real_engine, "
        "prefix): the tables give each figure's median and its range over the runs",
    )
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    names = [n.strip() for n in args.sections.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    page = args.out.resolve()
    charts = page.parent / page.stem
    try:  # before hours of runs, not after: the page and the saved sections
        with_kept("", page.read_text() if page.exists() else None)
        for name in SECTIONS:
            if (kept := _load(charts / f"{name}.json")) is not None and kept[1]:
                ran_line(kept[1])
    except (ValueError, KeyError) as exc:
        print(f"compare: {page}: cannot be written again: {exc}", file=sys.stderr)
        return 1
    charts.mkdir(parents=True, exist_ok=True)
    env = SuiteEnv(
        out_dir=charts,
        docs_dir=page.parent,
        quick=args.quick,
        seed=args.seed,
        repeat=args.repeat,
    )
    command = shlex.join(["python", "benchmarks/compare.py", *(argv or sys.argv[1:])])
    info = environment()  # before the run: the commit measured, not the one after it
    try:
        sections = asyncio.run(run_sections(env, names))
    except SuiteError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 1
    when = {"date": info["date"], "commit": info["corral"].split("commit ")[-1], "command": command}
    shown: list[Section] = []
    ran: list[dict[str, Any]] = []
    for name in SECTIONS:
        saved = charts / f"{name}.json"
        if name in sections:
            _save(saved, sections[name], when)
            shown.append(sections[name])
            ran.append(when)
        elif (kept := _load(saved)) is not None:
            shown.append(kept[0])
            ran.append(kept[1])
    # the page names the command that regenerates all of it; each section names its own
    text = render("python benchmarks/compare.py", info, shown, ran)
    saved = {n: (_load(charts / f"{n}.json") or (Section("", ""), {}))[0].data for n in SECTIONS}
    summary = targets(saved)
    if summary:
        text += "\n## The foundation's speed targets\n\n" + summary + "\n"
    try:  # the page as it is now: it may have been edited during the run
        page.write_text(with_kept(text, page.read_text() if page.exists() else None))
    except ValueError as exc:
        print(f"compare: {page}: {exc}", file=sys.stderr)
        return 1
    print(f"[bench] wrote {page} and {charts}/", file=sys.stderr)
    return 0
