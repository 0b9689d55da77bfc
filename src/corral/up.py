"""``corral up``: a whole local fleet in one command.

Starts a balancer and N agents in supervisor mode, each running its own llama-server
(the pinned llama.cpp build, the bundled model by default); waits until every server
is ready; prints where to send requests; and on Ctrl-C stops everything: the balancer
first (it takes no new request and lets those in flight finish, up to its shutdown
timeout), then the agents (which stop their servers), each with SIGTERM and SIGKILL
after a timeout. It says what it waits for (requests in flight, seconds left); a second
Ctrl-C stops everything at once, as uvicorn's does. The children run in their own
session, so the terminal's Ctrl-C reaches ``corral up`` alone and the order holds; they
get SIGTERM if their parent dies (``PR_SET_PDEATHSIG``), so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from corral.addr import Addr
from corral.config import UP, default
from corral.llamacpp import LlamaCppNotFound, ModelError, bundled_model, llama_server_path
from corral.llamacpp.base_chat import base_model_args
from corral.llamacpp.process import spawn, terminate

log = logging.getLogger("corral.up")

SHUTDOWN_TIMEOUT = 10.0
"""How long the balancer lets requests in flight finish when it stops (its default
``shutdown_timeout``); ``corral up`` gives it a few seconds more before SIGKILL."""


@dataclass(frozen=True)
class UpConfig:
    """A local fleet; the defaults are :data:`corral.config.UP`'s."""

    model: Path | None = default(UP, "model")
    agents: int = default(UP, "agents")
    slots: int | None = default(UP, "slots")
    ctx_size: int = default(UP, "ctx_size")
    inference_addr: Addr = default(UP, "inference_addr")
    management_addr: Addr = default(UP, "management_addr")
    routing: str = default(UP, "routing")
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
        self.process = spawn(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self.process, timeout)
        self._log.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


def inputs(config: UpConfig) -> tuple[Path, Path]:
    """The llama-server binary and the model file ``config`` asks for, found before
    anything starts or is printed.

    Raises:
        SystemExit: either is missing, with the reason (scripts/install brings both).
    """
    try:
        binary = llama_server_path()
        model = config.model or bundled_model()
    except (LlamaCppNotFound, ModelError) as exc:
        raise SystemExit(f"corral up: {exc}") from None
    if not model.is_file():
        raise SystemExit(f"corral up: model file not found: {model}")
    return binary, model


class Fleet:
    def __init__(self, config: UpConfig, binary: Path, model: Path) -> None:
        self.config = config
        self.binary, self.model = binary, model
        self.children: list[_Child] = []
        self.logs = Path(tempfile.mkdtemp(prefix="corral-up-"))

    def _start(self, name: str, command: list[str]) -> _Child:
        child = _Child(name, command, self.logs / f"{name}.log")
        self.children.append(child)
        return child

    @property
    def slots(self) -> int:
        """Slots per server: ``--slots``, else :func:`default_slots`."""
        return self.config.slots or default_slots()

    def commands(self) -> list[tuple[str, list[str]]]:
        """``(name, argv)`` of each process to start: the balancer, then each agent
        (which runs its llama-server)."""
        cfg = self.config
        binary, model = self.binary, self.model
        slots = self.slots
        # the bundled model is a base model: chat as questions and answers (base_chat.py);
        # --metrics: the inference listener's /metrics sums the servers' (llamacpp:*)
        server_args = ["--", "--metrics", *(base_model_args() if cfg.model is None else [])]
        threads = max(1, (os.cpu_count() or 2) // cfg.agents)
        corral = [sys.executable, "-m", "corral"]
        level = ["--log-level", cfg.log_level]
        balancer = [
            *corral, "balancer",
            "--inference-addr", str(cfg.inference_addr),
            "--management-addr", str(cfg.management_addr),
            "--state-file", str(self.logs / "desired-state.json"),
            "--routing", cfg.routing,
            *level,
        ]  # fmt: skip
        commands = [("balancer", balancer)]
        for index in range(cfg.agents):
            agent = [
                *corral, "agent",
                "--model", str(model),
                "--llama-server", str(binary),
                "--slots", str(slots),
                "--ctx-size", str(cfg.ctx_size),
                "--threads", str(threads),
                "--management-addr", str(cfg.management_addr),
                "--name", f"local-{index}",
                *level,
                *server_args,
            ]  # fmt: skip
            commands.append((f"agent-{index}", agent))
        return commands

    async def start(self) -> None:
        for name, command in self.commands():
            self._start(name, command)
        await self._wait_ready(self.config.agents * self.slots)

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

    async def in_flight(self) -> int | None:
        """Requests the balancer has sent and not seen end; None if it does not answer."""
        url = self.config.management_addr.url() + "/api/v1/agents"
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, TypeError):
            timeout = aiohttp.ClientTimeout(total=1)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url) as response,
            ):
                body = await response.json(content_type=None)
                return sum(int(a.get("reserved", 0)) for a in body["agents"])
        return None

    async def stop(
        self,
        *,
        in_flight: Callable[[], Awaitable[int | None]] | None = None,
        say: Callable[[str], None] = print,
        every: float = 2.0,
    ) -> None:
        """Stop the balancer (requests in flight finish), then the agents, saying what it
        waits for every ``every`` seconds. SIGINT meanwhile (a second Ctrl-C) kills
        every child at once. ``in_flight`` counts requests in flight (tests pass their
        own; default :meth:`in_flight`)."""
        count = in_flight or self.in_flight
        loop = asyncio.get_running_loop()
        forced = False

        def force() -> None:
            nonlocal forced
            if not forced:
                forced = True
                say("Second Ctrl-C: stopping everything now.")
                for child in self.children:
                    child.kill()

        loop.add_signal_handler(signal.SIGINT, force)
        try:
            balancer = [c for c in self.children if c.name == "balancer"]
            agents = [c for c in self.children if c.name != "balancer"]
            if balancer:
                say(stopping_message(await count(), SHUTDOWN_TIMEOUT))
                deadline = loop.time() + SHUTDOWN_TIMEOUT
                stopping = asyncio.ensure_future(
                    asyncio.to_thread(balancer[0].stop, SHUTDOWN_TIMEOUT + 5)
                )
                while not (await asyncio.wait({stopping}, timeout=every))[0]:
                    if forced:
                        continue
                    left = max(0.0, deadline - loop.time())
                    waiting = await count()
                    if waiting is not None and waiting > 0 and left > 0:
                        say(
                            f"  still waiting for {_requests(waiting)} in flight, {left:.0f} s left"
                        )
            if agents:
                say(f"Stopping {len(agents)} agent(s) and their llama-server(s)...")
                await asyncio.gather(*(asyncio.to_thread(a.stop) for a in agents))
        finally:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
            self.children.clear()


def _requests(n: int) -> str:
    return f"{n} request" + ("" if n == 1 else "s")


def stopping_message(in_flight: int | None, timeout: float) -> str:
    """What Ctrl-C prints first: what the stop waits for, and how to skip the wait."""
    if in_flight is None:
        what = "Stopping the fleet: the balancer lets requests in flight finish"
    elif in_flight == 0:
        what = "Stopping the fleet: no request in flight"
    else:
        what = f"Stopping the fleet: waiting for {_requests(in_flight)} in flight to finish"
    return f"{what} (up to {timeout:.0f} s). Press Ctrl-C again to stop at once."


def banner(config: UpConfig, slots: int) -> str:
    """What ``corral up`` prints once the fleet is ready: where it listens, and two
    examples that answer sensibly from the bundled base model (a text completion, and
    a chat question it answers under :mod:`corral.llamacpp.base_chat`'s template)."""
    api = config.inference_addr.url()
    mgmt = config.management_addr.url()
    model = (
        "the bundled Gemma 3 270M base model, a tiny test model: it continues text\n"
        "and answers simple questions. Pass --model for a real one (README: the bundled model)."
        if config.model is None
        else str(config.model)
    )
    return f"""
Corral is up: {config.agents} llama-server(s) with {slots} slot(s) each, behind one balancer
(--routing {config.routing}).
Model: {model}

  Inference (llama.cpp and OpenAI API): {api}
  Dashboard:                            {mgmt}/dashboard
  Fleet state (JSON), metrics:          {mgmt}/api/v1/agents, {mgmt}/metrics

Try it:

  curl {api}/v1/completions -H 'Content-Type: application/json' \\
    -d '{{"prompt": "Once upon a time", "max_tokens": 32}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{api}/v1', api_key='none'); \\
print(c.chat.completions.create(model='any', max_tokens=32, \\
messages=[{{'role': 'user', 'content': 'What do llamas eat?'}}]).choices[0].message.content)"

Press Ctrl-C to stop everything.
"""


async def run(config: UpConfig) -> None:
    fleet = Fleet(config, *inputs(config))
    try:
        print(f"Starting a balancer and {config.agents} agent(s); logs in {fleet.logs}")
        await fleet.start()
        print(banner(config, fleet.slots), flush=True)
        await asyncio.Event().wait()
    finally:
        await fleet.stop(say=lambda line: print(line, flush=True))
        print("Stopped.", flush=True)
