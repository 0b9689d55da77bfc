"""What every section of the comparison suite shares: processes, pinning, readings.

A section is a module in this package with ``async def run(env: SuiteEnv) -> Section``.
It starts what it measures (simulated servers, Corral, nginx, HAProxy...), measures,
stops everything it started (also when it fails) and returns Markdown for
``docs/benchmarks.md`` plus the raw figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.llamacpp.process import free_port, spawn, terminate

CORRAL = [sys.executable, "-m", "corral"]
"""How a section starts Corral's own commands (balancer, agent, sim, bench)."""

BENCHMARKS_DIR = Path(__file__).resolve().parents[1]
"""``benchmarks/``, the directory that holds this package (it is not installed)."""


def harness_command(module: str) -> list[str]:
    """How a section starts one of this package's own programs (``ticker``,
    ``fakeagents``, ``simfleet``): ``python -m comparison.<module>``. Start it with
    :func:`child_env` (:class:`Processes` does), so that it finds the package."""
    return [sys.executable, "-m", f"{__package__}.{module}"]


def child_env() -> dict[str, str]:
    """This process's environment with :data:`BENCHMARKS_DIR` first on ``PYTHONPATH``."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(BENCHMARKS_DIR), *([path] if path else [])])
    return env


class SuiteError(RuntimeError):
    """A section cannot run (a missing program, a process that did not come up)."""


@dataclass(frozen=True, slots=True)
class Section:
    """What a section returns: its Markdown and the figures behind it."""

    title: str
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class SuiteEnv:
    """Where a section writes and how big it runs."""

    out_dir: Path
    """Charts go here (PNG); the Markdown links them relative to ``docs_dir``."""
    docs_dir: Path
    """Where ``benchmarks.md`` is written (links to charts are relative to it)."""
    quick: bool = False
    """Tiny scale, a few seconds per section: for the harness tests, not for figures."""
    seed: int = 1
    repeat: int = 1
    """Runs of each contender at each load (real-server sections): the tables show
    each figure's median over the runs with its range (min-max), so a difference can
    be told from run-to-run noise."""
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="corral-bench-")))
    """Scratch space: proxy configs, logs."""

    def pin(self, cores: str, command: Sequence[str]) -> list[str]:
        """``command`` pinned to ``cores`` (taskset's list syntax, e.g. "0" or "1-3"),
        or unchanged where taskset is missing or the machine has one core."""
        taskset = shutil.which("taskset")
        if taskset and self.cores > 1:
            return [taskset, "-c", cores, *command]
        return list(command)

    def chart_link(self, name: str) -> str:
        """The Markdown path of chart file ``name`` (in :attr:`out_dir`)."""
        return os.path.relpath(self.out_dir / name, self.docs_dir)


def require(program: str) -> str:
    """The path of ``program``, or :class:`SuiteError` saying how to install it."""
    found = shutil.which(program) or next(
        (p for p in (f"/usr/sbin/{program}", f"/usr/bin/{program}") if os.path.exists(p)), None
    )
    if found is None:
        raise SuiteError(
            f"{program} is not installed; scripts/install installs it (apt-get install {program})"
        )
    return found


class Processes:
    """Processes a section started; :meth:`stop_all` ends them, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, command: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start ``command`` (with :func:`child_env`); its output goes to
        ``<log_dir>/<name>.log``, after that of any earlier process of that name (a
        contender that runs again, once per load and run, keeps its earlier logs)."""
        log = (self._log_dir / f"{name}.log").open("ab")
        proc = spawn(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(),
        )
        log.close()
        self._procs.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self._log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        terminate(proc)
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def mark(self) -> int:
        """A mark for :meth:`stop_since`: how many processes run now."""
        return len(self._procs)

    def pids_since(self, mark: int) -> list[int]:
        """The process ids of those started after :meth:`mark` returned ``mark``."""
        return [proc.pid for _, proc in self._procs[mark:]]

    def stop_since(self, mark: int) -> None:
        """Stop the processes started after :meth:`mark` returned ``mark``, newest first."""
        while len(self._procs) > mark:
            _, proc = self._procs.pop()
            terminate(proc)

    def stop_all(self) -> None:
        while self._procs:
            _, proc = self._procs.pop()
            terminate(proc)

    def check_alive(self) -> None:
        """:class:`SuiteError` with the log tail if a started process has exited."""
        for name, proc in self._procs:
            if proc.poll() is not None:
                raise SuiteError(
                    f"{name} exited with status {proc.returncode}:\n{self.log_tail(name)}"
                )


@contextlib.contextmanager
def processes(env: SuiteEnv, section: str) -> Iterator[Processes]:
    procs = Processes(env.work_dir / section)
    try:
        yield procs
    finally:
        procs.stop_all()


async def wait_http(
    url: str,
    timeout: float = 30.0,  # noqa: ASYNC109 (a deadline for the whole wait, not one call)
    procs: Processes | None = None,
) -> None:
    """Wait until ``url`` answers 200 (checking that ``procs`` still run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procs is not None:
            procs.check_alive()
        try:
            status = await asyncio.to_thread(_get_status, url)
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise SuiteError(f"{url} did not answer 200 within {timeout:.0f} s")


def get_json(url: str) -> Any:
    """GET ``url`` and decode its JSON (blocking: call it with ``asyncio.to_thread``)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


async def agents_ready(mgmt: str, count: int, procs: Processes, within: float = 60.0) -> None:
    """Wait until the balancer at ``mgmt`` lists ``count`` ready agents."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        procs.check_alive()
        with contextlib.suppress(OSError, ValueError, KeyError):
            body = await asyncio.to_thread(get_json, f"{mgmt}/api/v1/agents")
            if sum(1 for a in body["agents"] if a.get("state") == "ready") >= count:
                return
        await asyncio.sleep(0.1)
    raise SuiteError(f"{count} agent(s) did not all report ready within {within:.0f} s")


def busy_slots(slots: Any) -> int:
    """Busy slots in a ``/slots`` answer (a list of slots with ``is_processing``).

    Raises ValueError when ``slots`` is not such a list."""
    if not isinstance(slots, list) or not all(isinstance(s, dict) for s in slots):
        raise ValueError(f"not a /slots answer: {str(slots)[:200]}")
    return sum(1 for s in slots if s.get("is_processing"))


async def wait_idle(
    addrs: Sequence[str],
    within: float = 120.0,
    procs: Processes | None = None,
) -> float:
    """Wait until every server at ``addrs`` (``host:port``) reports all its slots idle;
    returns the seconds waited.

    Every contender must start in front of idle servers. A request an earlier
    contender abandoned (a client error, a timeout, a killed proxy) may still be
    generating: llama-server notices a client that left only on its next write, or
    after its 1 s wait for a queued request. Corral counts such a slot as busy (load
    from elsewhere) while nginx and HAProxy ignore it, so without this wait the
    contender that follows a failed run is measured on fewer slots.

    Raises :class:`SuiteError` if a server is still busy after ``within`` seconds
    (restart the servers) or answers ``/slots`` with something else. ``/slots`` is read
    at most every 1.25 s, never faster, so that the wait itself lets llama-server
    notice clients that left (see ``corral.agent.runners.llamacpp``).
    """
    started = time.monotonic()
    deadline = started + within
    busy: dict[str, int] = {}
    while True:
        if procs is not None:
            procs.check_alive()
        for addr in addrs:
            try:
                answer = await asyncio.to_thread(get_json, f"http://{addr}/slots")
                busy[addr] = busy_slots(answer)
            except (OSError, ValueError) as exc:
                raise SuiteError(f"{addr}/slots: {exc}") from None
        if not any(busy.values()):
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            still = ", ".join(f"{a}: {n} busy" for a, n in busy.items() if n)
            raise SuiteError(
                f"servers still generating {within:.0f} s after the last contender ({still}); "
                "restart them"
            )
        await asyncio.sleep(1.25)


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def children_of(pids: Sequence[int]) -> list[int]:
    """The live processes whose parent is one of ``pids`` (Linux ``/proc``)."""
    parents, found = set(pids), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) in parents:
            found.append(int(entry))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, in seconds (Linux)."""
    fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields_[11]) + int(fields_[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def section_main(
    name: str,
    doc: str | None,
    run: Callable[..., Coroutine[Any, Any, Section]],
    argv: Sequence[str] | None = None,
    contenders: Sequence[str] | None = None,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> int:
    """``python -m comparison.<name> [--quick] [--out DIR]``: run one section
    alone and print its Markdown (charts and ``<name>.json``, its data, go to
    ``--out``). ``parents``: parsers (made with ``add_help=False``) of the section's
    own options, which it has already read: ``--help`` lists them too."""
    p = argparse.ArgumentParser(
        prog=f"python -m comparison.{name}",
        description=doc.split("\n\n")[0] if doc else None,
        parents=list(parents),
    )
    p.add_argument("--quick", action="store_true", help="tiny scale, a few seconds per run")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="where charts go")
    p.add_argument("--repeat", type=int, default=1, help="runs per contender and load")
    if contenders is not None:
        p.add_argument("--contenders", default=",".join(contenders), help="comma-separated")
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    env = SuiteEnv(out_dir=out, docs_dir=out, quick=args.quick, repeat=args.repeat)
    extra = [args.contenders.split(",")] if contenders is not None else []
    try:
        section = asyncio.run(run(env, *extra))
    except SuiteError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    print(f"## {section.title}\n\n{section.markdown}")
    data = {"title": section.title, "data": section.data}
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    return 0


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; the first column is left-aligned, the rest right."""
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


__all__ = [
    "BENCHMARKS_DIR",
    "CORRAL",
    "Processes",
    "Section",
    "SuiteEnv",
    "SuiteError",
    "agents_ready",
    "busy_slots",
    "child_env",
    "children_of",
    "cpu_seconds",
    "free_port",
    "get_json",
    "harness_command",
    "markdown_table",
    "processes",
    "require",
    "rss_bytes",
    "section_main",
    "wait_http",
    "wait_idle",
]


def ratio(a: float, b: float) -> str:
    """``a`` as a multiple of ``b`` (``1.50x``), or ``n/a`` when ``b`` is zero."""
    return f"{a / b:.2f}x" if b > 0 else "n/a"


@dataclass(frozen=True, slots=True)
class StartedBalancer:
    pid: int
    url: str
    """The inference listener, ``http://127.0.0.1:PORT``."""
    management_port: int
    mgmt: str
    """The management listener's URL."""


async def start_balancer(
    env: SuiteEnv,
    procs: Processes,
    core: str,
    state_file: Path,
    *options: str,
    name: str = "corral-balancer",
    log_level: str = "error",
) -> StartedBalancer:
    """``corral balancer`` pinned to ``core`` on free ports, with extra ``options``;
    returns once its management listener answers."""
    port, management = free_port(), free_port()
    balancer = procs.start(
        name,
        env.pin(core, [
            *CORRAL, "balancer", "--log-level", log_level,
            "--inference-addr", f"127.0.0.1:{port}",
            "--management-addr", f"127.0.0.1:{management}",
            "--state-file", str(state_file), *options,
        ]),
    )  # fmt: skip
    mgmt = f"http://127.0.0.1:{management}"
    await wait_http(f"{mgmt}/health", procs=procs)
    return StartedBalancer(balancer.pid, f"http://127.0.0.1:{port}", management, mgmt)
