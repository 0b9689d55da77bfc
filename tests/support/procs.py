"""Tier 3 helpers: real processes on loopback (llama-server, corral agent/balancer)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from corral.llamacpp import bundled_model, llama_server_command, llama_server_path
from corral.llamacpp.process import free_port, spawn, terminate

HAPROXY = "/usr/sbin/haproxy"


def get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Proc:
    def __init__(self, name: str, command: list[str], logs: Path) -> None:
        self.name = name
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        self.log_path = logs / f"{safe}.log"
        self._log = self.log_path.open("wb")
        self.process = spawn(command, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        terminate(self.process, timeout=5)
        self._log.close()

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Fleet:
    """Starts real processes; stops them all, printing their logs on failure."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[Proc] = []

    def _start(self, name: str, command: list[str]) -> Proc:
        proc = Proc(name, command, self.logs)
        self.procs.append(proc)
        return proc

    def llama_server(
        self, name: str, slots: int = 2, ctx: int = 1024, *extra: str
    ) -> tuple[Proc, int]:
        port = free_port()
        command = llama_server_command(
            llama_server_path(), bundled_model(), port=port, slots=slots, ctx_size=ctx, threads=1
        )
        proc = self._start(name, [*command, *extra])
        wait_until(
            lambda: get_json(f"http://127.0.0.1:{port}/health")[0] == 200,
            120,
            f"{name} ready",
        )
        return proc, port

    def balancer(
        self, name: str = "balancer", *extra: str, ports: tuple[int, int] | None = None
    ) -> tuple[Proc, int, int]:
        """A balancer; ``ports``: (inference, management) to reuse (a restart)."""
        inference, management = ports or (free_port(), free_port())
        proc = self._start(
            name,
            [
                sys.executable, "-m", "corral", "balancer",
                "--inference-addr", f"127.0.0.1:{inference}",
                "--management-addr", f"127.0.0.1:{management}",
                "--state-file", str(self.logs / f"{name}-state.json"),
                *extra,
            ],
        )  # fmt: skip
        wait_until(
            lambda: get_json(f"http://127.0.0.1:{management}/health")[0] == 200,
            30,
            f"{name} up",
        )
        return proc, inference, management

    def agent(self, name: str, server_port: int, management_port: int, *extra: str) -> Proc:
        proc = self._start(
            f"agent-{name}",
            [
                sys.executable, "-m", "corral", "agent",
                "--local-llamacpp-addr", f"127.0.0.1:{server_port}",
                "--management-addr", f"127.0.0.1:{management_port}",
                "--name", name,
                "--poll-interval", "0.1",
                *extra,
            ],
        )  # fmt: skip
        wait_until(
            lambda: any(
                a["name"] == name and a["state"] == "ready"
                for a in get_json(f"http://127.0.0.1:{management_port}/api/v1/agents")[1]["agents"]
            ),
            30,
            f"agent {name} ready",
        )
        return proc

    def supervised_agent(
        self, name: str, management_port: int, slots: int = 2, ctx: int = 1024
    ) -> Proc:
        """An agent in supervisor mode: it runs its own llama-server."""
        proc = self._start(
            f"agent-{name}",
            [
                sys.executable, "-m", "corral", "agent",
                "--model", str(bundled_model()),
                "--slots", str(slots), "--ctx-size", str(ctx), "--threads", "1",
                "--management-addr", f"127.0.0.1:{management_port}",
                "--name", name,
                "--poll-interval", "0.1",
            ],
        )  # fmt: skip
        wait_until(lambda: agent_state(management_port, name) == "ready", 120, f"{name} ready")
        return proc

    def sim(
        self, name: str, slots: int = 2, *extra: str, model: str = "gemma-3-270m-q4_k_m"
    ) -> tuple[Proc, int]:
        """A simulated llama-server process (``extra``: more `corral sim` flags)."""
        port = free_port()
        proc = self._start(
            name,
            [
                sys.executable, "-m", "corral", "sim", "--addr", f"127.0.0.1:{port}",
                "--slots", str(slots), "--name", name, "--model", model, *extra,
            ],
        )  # fmt: skip
        wait_until(lambda: get_json(f"http://127.0.0.1:{port}/health")[0] == 200, 30, name)
        return proc, port

    def haproxy(self, config: str) -> Proc:
        """HAProxy in the foreground with ``config`` (a haproxy.cfg text)."""
        path = self.logs / "haproxy.cfg"
        path.write_text(config)
        proc = self._start("haproxy", [HAPROXY, "-db", "-f", str(path)])
        return proc

    def stop(self, failed: bool) -> None:
        for proc in reversed(self.procs):
            proc.stop()
            if failed:
                print(f"---- {proc.name} ({proc.log_path}) ----\n{proc.tail()}", file=sys.stderr)


def models_dir(tmp: Path, names: tuple[str, ...] = ("alpha", "beta")) -> Path:
    """A models folder for a router-mode llama-server: the bundled model under each of
    ``names`` (``NAME.gguf``, a hard link where it can)."""
    folder = tmp / "models"
    folder.mkdir()
    for name in names:
        try:
            os.link(bundled_model(), folder / f"{name}.gguf")
        except OSError:  # another file system: a copy
            (folder / f"{name}.gguf").write_bytes(Path(bundled_model()).read_bytes())
    return folder


def no_process_left(marker: str) -> list[str]:
    """Processes whose command line contains ``marker`` (zombies excluded)."""
    left = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            left.append(f"{pid} {cmdline}")
    return left


def agents(management_port: int) -> dict[str, dict[str, Any]]:
    listing = get_json(f"http://127.0.0.1:{management_port}/api/v1/agents")[1]["agents"]
    return {a["name"]: a for a in listing}


def agent_state(management_port: int, name: str) -> str | None:
    agent = agents(management_port).get(name)
    return agent["state"] if agent else None


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting to be reaped does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except OSError:
        return False
    return state != "Z"


def children(parent: int | None = None) -> set[int]:
    """Process ids whose parent is ``parent`` (this process by default)."""
    parent = os.getpid() if parent is None else parent
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.add(int(entry))
    return found


FULL_LENGTH = {"ignore_eos": True}
"""An OpenAI SDK ``extra_body`` for llama-server: generate ``max_tokens`` whatever the
model samples (a base model may emit its end of sequence early, and did: 91 of 120
tokens in one CI run), so a test can count the tokens of an answer."""
