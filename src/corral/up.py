"""``corral up``: a whole local fleet in one command.

Starts a balancer and N agents in supervisor mode, each running its own llama-server
(the pinned llama.cpp build, the bundled model by default); waits until every server
is ready; prints where to send requests; and on Ctrl-C stops everything: the agents
(which stop their servers), then the balancer, each with SIGTERM and SIGKILL after a
timeout. Children get SIGTERM if their parent dies (``PR_SET_PDEATHSIG``), so nothing
is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from corral.addr import Addr
from corral.config import UP, default
from corral.llamacpp import bundled_model, llama_server_path
from corral.llamacpp.process import spawn, terminate

log = logging.getLogger("corral.up")


@dataclass(frozen=True)
class UpConfig:
    """A local fleet; the defaults are :data:`corral.config.UP`'s."""

    model: Path | None = default(UP, "model")
    agents: int = default(UP, "agents")
    slots: int | None = default(UP, "slots")
    ctx_size: int = default(UP, "ctx_size")
    inference_addr: Addr = default(UP, "inference_addr")
    management_addr: Addr = default(UP, "management_addr")
    ready_timeout: float = default(UP, "ready_timeout")
    log_level: str = default(UP, "log_level")


def default_slots() -> int:
    """Slots per server for this machine: CPU inference gains little past 4."""
    cpus = os.cpu_count() or 2
    return 2 if cpus <= 4 else 4


class _Child:
    def __init__(self, name: str, command: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = spawn(command, stdout=self._log, stderr=subprocess.STDOUT)

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        terminate(self.process)
        self._log.close()


class Fleet:
    def __init__(self, config: UpConfig) -> None:
        self.config = config
        self.children: list[_Child] = []
        self.logs = Path(tempfile.mkdtemp(prefix="corral-up-"))

    def _start(self, name: str, command: list[str]) -> _Child:
        child = _Child(name, command, self.logs / f"{name}.log")
        self.children.append(child)
        return child

    async def start(self) -> None:
        cfg = self.config
        binary = llama_server_path()  # fail here, with the reason, if there is none
        model = cfg.model or bundled_model()
        if not model.is_file():
            raise SystemExit(f"corral up: model file not found: {model}")
        slots = cfg.slots or default_slots()
        threads = max(1, (os.cpu_count() or 2) // cfg.agents)
        corral = [sys.executable, "-m", "corral"]
        level = ["--log-level", cfg.log_level]
        self._start(
            "balancer",
            [
                *corral,
                "balancer",
                "--inference-addr",
                str(cfg.inference_addr),
                "--management-addr",
                str(cfg.management_addr),
                "--state-file",
                str(self.logs / "desired-state.json"),
                *level,
            ],
        )
        for index in range(cfg.agents):
            self._start(
                f"agent-{index}",
                [
                    *corral, "agent",
                    "--model", str(model),
                    "--llama-server", str(binary),
                    "--slots", str(slots),
                    "--ctx-size", str(cfg.ctx_size),
                    "--threads", str(threads),
                    "--management-addr", str(cfg.management_addr),
                    "--name", f"local-{index}",
                    *level,
                ],
            )  # fmt: skip
        await self._wait_ready(cfg.agents * slots)

    async def _wait_ready(self, slots: int) -> None:
        url = self.config.inference_addr.url() + "/health"
        deadline = asyncio.get_running_loop().time() + self.config.ready_timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                for child in self.children:
                    if child.process.poll() is not None:
                        raise SystemExit(
                            f"corral up: {child.name} exited with status "
                            f"{child.process.returncode}. Last lines of {child.log_path}:\n"
                            f"{child.tail()}"
                        )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as response:
                        body = await response.json(content_type=None)
                        ready = body.get("slots_idle", 0) + body.get("slots_processing", 0)
                        if response.status == 200 and ready >= slots:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    raise SystemExit(
                        f"corral up: the fleet was not ready after {self.config.ready_timeout}s; "
                        f"logs are in {self.logs}"
                    )
                await asyncio.sleep(0.25)

    def stop(self) -> None:
        order = [c for c in self.children if c.name.startswith("agent")] + [
            c for c in self.children if c.name == "balancer"
        ]
        for child in order:
            child.stop()
        self.children.clear()


def banner(config: UpConfig, slots: int) -> str:
    api = config.inference_addr.url()
    mgmt = config.management_addr.url()
    return f"""
Corral is up: {config.agents} llama-server(s) with {slots} slot(s) each, behind one balancer.

  Inference (llama.cpp and OpenAI API): {api}
  Dashboard:                            {mgmt}/dashboard
  Fleet state (JSON), metrics:          {mgmt}/api/v1/agents, {mgmt}/metrics

Try it:

  curl {api}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"messages": [{{"role": "user", "content": "Say hello"}}], "max_tokens": 32}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{api}/v1', api_key='none'); \\
print(c.chat.completions.create(model='any', max_tokens=32, \\
messages=[{{'role': 'user', 'content': 'Say hello'}}]).choices[0].message.content)"

Press Ctrl-C to stop everything.
"""


async def run(config: UpConfig) -> None:
    fleet = Fleet(config)
    try:
        print(f"Starting a balancer and {config.agents} agent(s); logs in {fleet.logs}")
        await fleet.start()
        print(banner(config, config.slots or default_slots()), flush=True)
        await asyncio.Event().wait()
    finally:
        print("Stopping the fleet...", flush=True)
        fleet.stop()
        print("Stopped.", flush=True)
