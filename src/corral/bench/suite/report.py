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

from corral import __version__
from corral.bench.suite.common import Section, SuiteEnv, SuiteError

SECTIONS = ("routing", "real_engine", "overhead", "control")

INTRO = """\
Corral exists because generic balancers route LLM traffic badly. This page measures
that claim, and what Corral itself costs, side by side with nginx and HAProxy on one
machine in one run. Figures move from run to run on a shared machine: compare the
ratios within a run, not absolute figures across runs. Every figure here was measured
by the command below; none is edited by hand.
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
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
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
    ran: Sequence[dict[str, str]] = (),
) -> str:
    """The whole page. ``ran[i]`` says when section ``i`` ran (date, commit, command)."""
    lines = ["# Benchmarks", "", INTRO, "Regenerate with:", "", "```sh", command, "```", ""]
    lines += ["| environment | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in env_info.items()]
    lines.append("")
    for number, section in enumerate(sections, 1):
        lines += [f"## {number}. {section.title}", ""]
        if number <= len(ran) and ran[number - 1]:
            when = ran[number - 1]
            lines += [f"*Ran {when['date']} on commit {when['commit']}: `{when['command']}`*", ""]
        lines += [section.markdown.strip(), ""]
    return "\n".join(lines)


def _save(path: Path, section: Section, when: dict[str, str]) -> None:
    document = {"title": section.title, "markdown": section.markdown, "data": section.data}
    path.write_text(json.dumps({**document, "ran": when}, indent=1, default=str))


def _load(path: Path) -> tuple[Section, dict[str, str]] | None:
    try:
        document = json.loads(path.read_text())
        section = Section(document["title"], document["markdown"], document.get("data", {}))
        return section, dict(document.get("ran", {}))
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def run_sections(env: SuiteEnv, names: Sequence[str]) -> dict[str, Section]:
    done = {}
    for name in names:
        module = importlib.import_module(f"corral.bench.suite.{name}")
        print(f"[bench] section {name}...", file=sys.stderr)
        started = time.monotonic()
        section: Section = await module.run(env)
        print(f"[bench] section {name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
        done[name] = section
    return done


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
    args = p.parse_args(argv)
    names = [n.strip() for n in args.sections.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    page = args.out.resolve()
    charts = page.parent / page.stem
    charts.mkdir(parents=True, exist_ok=True)
    env = SuiteEnv(out_dir=charts, docs_dir=page.parent, quick=args.quick, seed=args.seed)
    command = shlex.join(["python", "benchmarks/compare.py", *(argv or sys.argv[1:])])
    try:
        sections = asyncio.run(run_sections(env, names))
    except SuiteError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 1
    info = environment()
    when = {"date": info["date"], "commit": info["corral"].split("commit ")[-1], "command": command}
    shown: list[Section] = []
    ran: list[dict[str, str]] = []
    for name in SECTIONS:
        saved = charts / f"{name}.json"
        if name in sections:
            _save(saved, sections[name], when)
            shown.append(sections[name])
            ran.append(when)
        elif (kept := _load(saved)) is not None:
            shown.append(kept[0])
            ran.append(kept[1])
    page.write_text(render(command, info, shown, ran))
    print(f"[bench] wrote {page} and {charts}/", file=sys.stderr)
    return 0
