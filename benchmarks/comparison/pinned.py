"""What runs where in the data-path benchmarks: a core for each part, the CPU each
part used, and a Corral (balancer and agent) pinned in front of a backend."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from comparison.common import (
    CORRAL,
    Processes,
    SuiteEnv,
    SuiteError,
    agents_ready,
    cpu_seconds,
    start_balancer,
    wait_http,
)


@dataclass(frozen=True, slots=True)
class Cores:
    """Which cores (taskset syntax) each part runs on."""

    proxy: str
    load: str
    backend: str


def cores_for(count: int) -> Cores:
    """The proxy gets core 0 alone. With three cores or more, wrk and the backend get
    one each; with two they share core 1 (the backend is nginx, far cheaper than
    either proxy). Corral's agent runs with the backend; it reads the backend twice
    a second and otherwise sleeps."""
    if count >= 3:
        return Cores(proxy="0", load="1", backend="2")
    return Cores(proxy="0", load="1", backend="1")


def cpu_ticks(stat: str, core: int) -> tuple[int, int]:
    """(busy, total) jiffies of ``core`` from the text of ``/proc/stat``."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == f"cpu{core}":
            values = [int(v) for v in fields[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            return sum(values[:8]) - idle, sum(values[:8])
    raise SuiteError(f"/proc/stat has no line for core {core}")


def core_ticks(cores: str) -> tuple[int, int]:
    stat = Path("/proc/stat").read_text()
    first = int(cores.split(",")[0].split("-")[0])
    return cpu_ticks(stat, first)


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx's workers are children of its master)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def tree_cpu(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


async def start_corral(
    env: SuiteEnv, cores: Cores, procs: Processes, work: Path, backend_port: int, name: str
) -> tuple[str, int]:
    """A balancer on the proxy core and an agent registering the backend at
    ``backend_port`` (on the backend core); return the balancer's URL and pid once
    the agent is ready."""
    balancer = await start_balancer(
        env, procs, cores.proxy, work / f"corral-state-{name}.json", name=f"corral-balancer-{name}"
    )
    procs.start(
        f"corral-agent-{name}",
        env.pin(cores.backend, [
            *CORRAL, "agent", "--log-level", "error", "--name", name,
            "--local-llamacpp-addr", f"127.0.0.1:{backend_port}",
            "--management-addr", f"127.0.0.1:{balancer.management_port}",
        ]),
    )  # fmt: skip
    await agents_ready(balancer.mgmt, 1, procs)
    await wait_http(f"{balancer.url}/health", procs=procs)
    return balancer.url, balancer.pid


@dataclass(slots=True)
class Route:
    """One way to the backend, and the process (tree) that relays, if any."""

    name: str
    url: str
    proxy_pid: int | None = None
