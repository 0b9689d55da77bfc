"""The supervisor: the agent's own server, started, watched and restarted.

It runs llama-server from :class:`ServerSettings` (``corral agent --model``), or any
server from its own command line, :class:`CommandSettings` (``corral agent --runner
vllm --server-addr 127.0.0.1:8000 -- vllm serve ...``), with the same restarts,
backoff and stop.

Theory of operation
-------------------
Decide without I/O, then act (h11 style): the lifecycle, its state table, the restart
backoff and the crash report are plain data in :mod:`corral.agent.lifecycle`
(:class:`~corral.agent.lifecycle.SupervisorState`); this module does the I/O and tells
that state what happened, reading back what to do (when a restart is due).

:class:`Supervisor` runs one *run* task that spawns the process (on the configured
port, else on the same free port each time if it can), polls ``/health`` only while the
model loads, then simply awaits the process's exit; one *reader* task per process copies
its merged stdout/stderr to the ``corral.llama-server`` logger and keeps the last lines
for the crash report. :meth:`Supervisor.stop` shuts down in a fixed order: cancel the
run task, SIGTERM, SIGKILL after ``stop_timeout`` (a llama-server with a request in
flight ignores SIGTERM until its clients leave), reap the process, drain the reader,
close the HTTP session.

A server never outlives the agent: the child asks the kernel (``PR_SET_PDEATHSIG``) for
SIGKILL when its parent dies. SIGKILL rather than SIGTERM because a dying agent cannot
wait out a request in flight. The signal is tied to the thread that started the child,
so run the supervisor on a thread that lives as long as the agent (the event loop's).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final

import aiohttp

from corral.agent.lifecycle import Backoff, ExitInfo, IllegalTransition, Phase, SupervisorState
from corral.core.fleet import Condition
from corral.llamacpp.binary import LlamaCppNotFound, llama_server_path
from corral.llamacpp.process import free_port, llama_server_command
from corral.protocol.messages import IssueInfo

log = logging.getLogger("corral.supervisor")
server_log = logging.getLogger("corral.llama-server")
"""llama-server's own output, one record per line, prefixed with ``[name]``."""

LAST_LINES: Final = 20
"""Lines of server output kept for a crash report (an issue quotes the last
:data:`~corral.agent.lifecycle.ISSUE_LINES` of them)."""
_DRAIN_TIMEOUT: Final = 2.0  # seconds to wait for output after an exit


@dataclass(frozen=True)
class ServerSettings:
    """How to run the supervised llama-server."""

    model: Path
    """The GGUF file to serve."""
    slots: int = 1
    """``--parallel``: requests served at once."""
    ctx_size: int = 4096
    """Context tokens *per slot* (llama-server gets ``ctx_size * slots``)."""
    threads: int | None = None
    """``--threads``; ``None`` leaves llama.cpp's default (its count of CPU cores)."""
    cache_ram_mib: int | None = None
    """``--cache-ram``: host memory for prompts evicted from the slots, MiB (-1 no
    limit, 0 off); ``None`` leaves llama-server's default (8192 MiB in the pinned
    build). See :func:`default_cache_ram_mib` for the agent's default."""
    extra_args: tuple[str, ...] = ()
    """More llama-server arguments, passed as they are, last."""
    lora: tuple[tuple[str, Path], ...] = ()
    """LoRA adapters to load, ``(name, file)``: loaded at scale 0, reported by name."""
    binary: Path | None = None
    """The llama-server to run; ``None`` finds one (see :func:`llama_server_path`)."""
    host: str = "127.0.0.1"
    """Where the server listens."""
    port: int | None = None
    """The server's port; ``None`` picks a free one at the first start and keeps it
    across restarts while it stays free."""
    api_key: str | None = field(default=None, repr=False)
    """The server's ``--api-key``, if any."""
    alias: str | None = None
    """``--alias``: the model's name in the server's answers; ``None``: the file name
    without ``.gguf``."""


@dataclass(frozen=True)
class CommandSettings:
    """How to run a server from its own command line (any runner: vLLM, SGLang, Ollama,
    an OpenAI-compatible server, or llama-server with arguments of your own).

    The command is run as it is (no shell); it must make the server listen on
    ``host:port``, which the agent reads and balancers reach."""

    command: tuple[str, ...]
    """The program and its arguments."""
    port: int
    """Where the server listens (from ``--server-addr``)."""
    host: str = "127.0.0.1"
    """Where the server listens."""
    ready_path: str = "/health"
    """Polled while the server starts; 200 means it is up (the runner's
    :attr:`~corral.agent.runners.Runner.ready_path`)."""

    @property
    def program(self) -> str:
        """The program's file name, for messages."""
        return Path(self.command[0]).name if self.command else "?"


LLAMA_CACHE_RAM_MIB: Final = 8192
"""llama-server's own ``--cache-ram`` default in the pinned build (``--help``)."""


def default_cache_ram_mib(physical_mib: int | None = None) -> int:
    """A host prompt cache sized for this machine, MiB: an eighth of its memory, at
    most llama-server's own default (8 GiB), at least 256 MiB. An eighth leaves room
    for the model and for a few servers on one machine. ``physical_mib``: the
    machine's memory (read from the OS when None; llama-server's default if unknown)."""
    if physical_mib is None:
        try:
            physical_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        except (ValueError, OSError, AttributeError):
            return LLAMA_CACHE_RAM_MIB
    return max(256, min(LLAMA_CACHE_RAM_MIB, physical_mib // 8))


class _StartFailed(Exception):
    pass


_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when we die (Linux).

    Unlike :func:`corral.llamacpp.process.spawn`'s SIGTERM, which llama-server sits out
    while it owes a client an answer. libc is loaded here, before the fork: the child
    of a threaded parent should not take the dynamic loader's lock.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:  # runs in the child, between fork and exec
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl: nobody will tell us
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _health_url(host: str, port: int, path: str = "/health") -> str:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"


class Supervisor:
    """Starts one server, reports its state, restarts it after a crash.

    Example::

        async with Supervisor(ServerSettings(model=path), name="gemma") as server:
            while server.phase is not Phase.READY:
                await server.wait_changed()
            print(server.port, server.load_time)

    Args:
        settings: What to run: llama-server (:class:`ServerSettings`) or a command
            line (:class:`CommandSettings`).
        name: The server's name, prefixed to its log lines.
        clock: Monotonic seconds; every timestamp in the state comes from it.
        log_server_output: Copy the server's output to the ``corral.llama-server``
            logger (at INFO). The last lines are kept for crash reports either way.
        stop_timeout: Seconds between SIGTERM and SIGKILL in :meth:`stop`.
        on_change: Called (synchronously) after every transition.
        backoff: Delays between restarts (default: :class:`Backoff`'s).
        health_interval: Seconds between ``/health`` polls while the model loads.
    """

    def __init__(
        self,
        settings: ServerSettings | CommandSettings,
        *,
        name: str,
        clock: Callable[[], float] = time.monotonic,
        log_server_output: bool = True,
        stop_timeout: float = 10.0,
        on_change: Callable[[Supervisor], None] | None = None,
        backoff: Backoff | None = None,
        health_interval: float = 0.15,
    ) -> None:
        self.settings = settings
        self.name = name
        self.log_server_output = log_server_output
        self.stop_timeout = stop_timeout
        self.health_interval = health_interval
        self._clock = clock
        self._on_change = on_change
        self._state = SupervisorState(name, backoff or Backoff(), program=self.program)
        self._last_port: int | None = None
        self._changed = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._lines: deque[str] = deque(maxlen=LAST_LINES)
        # the background tasks, all of them: the run loop, the current output reader
        self._run_task: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return repr(self._state)

    # ------------------------------------------------------------ reading
    @property
    def state(self) -> SupervisorState:
        """The lifecycle state (read it; only the supervisor changes it)."""
        return self._state

    @property
    def phase(self) -> Phase:
        return self._state.phase

    @property
    def condition(self) -> Condition:
        """The phase in the agent protocol's words (``"loading"`` while starting)."""
        return self._state.condition

    @property
    def port(self) -> int | None:
        """The current process's port (kept across restarts while it is free)."""
        return self._state.port

    @property
    def pid(self) -> int | None:
        return self._state.pid

    @property
    def issues(self) -> list[IssueInfo]:
        """What is wrong now (``crashed``, ``start_failed``); empty once ready."""
        return list(self._state.issues)

    @property
    def load_time(self) -> float | None:
        """Seconds the current process took from spawn to ``/health`` 200."""
        return self._state.load_time

    @property
    def last_exit(self) -> ExitInfo | None:
        """How the last run ended (kept after the server is ready again)."""
        return self._state.last_exit

    @property
    def restarts(self) -> int:
        return self._state.restarts

    @property
    def last_lines(self) -> list[str]:
        """The end of the current (or last) process's output."""
        return list(self._lines)

    async def wait_changed(self) -> None:
        """Return after the next transition."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        if self._on_change is not None:
            try:
                self._on_change(self)
            except Exception:
                log.exception("%r: on_change failed", self)

    # ------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Spawn the server and return: the phase is then STARTING, or BACKOFF with a
        ``start_failed`` issue (it will retry). Never raises for a bad installation.

        Raises:
            IllegalTransition: It was already started.
        """
        if self._state.phase is not Phase.STOPPED or self._session is not None:
            raise IllegalTransition(f"start in {self._state.phase.name} (allowed in STOPPED)")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))
        try:
            await self._launch()
        except BaseException:  # cancelled: asyncio has killed a half-started process
            await self._session.close()
            self._session = None
            raise
        self._run_task = asyncio.create_task(self._run(), name=f"supervisor {self.name}")
        self._run_task.add_done_callback(self._run_ended)

    def _run_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%r: supervision failed", self, exc_info=task.exception())

    async def stop(self) -> None:
        """Stop the server and the supervisor's tasks; safe to call again (or at once
        from several tasks): every call returns when the process has been reaped."""
        if self._stopping is None:
            if self._state.phase is Phase.STOPPED:
                return
            self._stopping = asyncio.create_task(self._shutdown(), name=f"stop {self.name}")
        await asyncio.shield(self._stopping)

    async def _shutdown(self) -> None:
        try:
            self._state.stop_requested()
            self._notify()
            log.info("%r: stopping", self)
            # 1. no more restarts or health polls
            if self._run_task is not None:
                self._run_task.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await self._run_task  # (a failure was logged by _run_ended)
            # 2. the process: SIGTERM, then SIGKILL; reaped either way
            if self._process is not None:
                await self._terminate(self._process)
            # 3. its last words, then the HTTP session
            await self._finish_reader()
            if self._session is not None:
                await self._session.close()
        finally:
            self._run_task = self._session = self._process = None
            self._state.stopped()
            self._stopping = None
            self._notify()
            log.info("%r: stopped", self)

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                async with asyncio.timeout(self.stop_timeout):  # not wait_for (3.11)
                    await process.wait()
            except TimeoutError:
                log.warning(
                    "%r: no exit %gs after SIGTERM (a request in flight?); SIGKILL",
                    self,
                    self.stop_timeout,
                )
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        await process.wait()

    # ------------------------------------------------------------ the run task
    async def _run(self) -> None:
        while True:
            if self._process is not None:
                await self._watch(self._process)
            restart_at = self._state.restart_at
            assert restart_at is not None
            await asyncio.sleep(max(0.0, restart_at - self._clock()))
            await self._launch()

    @property
    def program(self) -> str:
        """What it runs, for messages: ``llama-server`` or the command's program."""
        settings = self.settings
        return settings.program if isinstance(settings, CommandSettings) else "llama-server"

    def _command(self, port: int) -> list[str]:
        settings = self.settings
        if isinstance(settings, CommandSettings):
            if not settings.command:
                raise _StartFailed("no command to run")
            return list(settings.command)
        try:
            binary = settings.binary or llama_server_path()
        except LlamaCppNotFound as exc:
            raise _StartFailed(str(exc)) from None
        if not binary.is_file():
            raise _StartFailed(f"llama-server binary {binary} not found")
        if not settings.model.is_file():
            raise _StartFailed(f"model file {settings.model} not found")
        for name, path in settings.lora:
            if not path.is_file():
                raise _StartFailed(f"LoRA adapter {name}: file {path} not found")
        return llama_server_command(
            binary,
            settings.model,
            host=settings.host,
            port=port,
            alias=settings.alias,
            slots=settings.slots,
            ctx_size=settings.ctx_size,
            threads=settings.threads,
            api_key=settings.api_key,
            cache_ram_mib=settings.cache_ram_mib,
            extra=settings.extra_args,
            lora=[path for _, path in settings.lora],
        )

    def _pick_port(self) -> int:
        """The configured port; else the last port again when it is free, so the server
        keeps its address across restarts (balancers keep sending to it); else a fresh
        one. A configured port that is taken fails the start (llama-server says so)."""
        if self.settings.port is not None:  # always so for a command line
            return self.settings.port
        last = self._last_port
        if last is not None:
            with socket.socket() as probe:
                # as llama-server binds: TIME_WAIT from the last run does not count
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.settings.host, last))
                    return last
                except OSError:
                    pass
        self._last_port = free_port(self.settings.host)
        return self._last_port

    async def _launch(self) -> None:
        """One start attempt: STARTING with a process, or BACKOFF with an issue."""
        try:
            port = self._pick_port()
            command = self._command(port)
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent(),
                limit=1 << 20,
            )
        except (_StartFailed, OSError) as exc:
            self._state.start_failed(f"cannot start {self.program}: {exc}", self._clock())
            self._notify()
            log.warning("%r: %s", self, self._state.issues[0].message)
            return
        self._process = process
        self._lines.clear()
        assert process.stdout is not None
        self._reader = asyncio.create_task(
            self._read_output(process.stdout), name=f"llama-server {self.name} output"
        )
        self._state.started(self._clock(), pid=process.pid, port=port)
        self._notify()
        log.info("%r: started %s", self, " ".join(command))

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        """Poll ``/health`` while the model loads, then wait for the process to end."""
        exit_wait = asyncio.create_task(process.wait())
        try:
            while self._state.phase is Phase.STARTING and not exit_wait.done():
                if await self._healthy():
                    self._state.ready(self._clock())
                    self._notify()
                    log.info("%r: ready", self)
                    break
                await asyncio.wait({exit_wait}, timeout=self.health_interval)
            code = await exit_wait
        finally:
            exit_wait.cancel()
        await self._finish_reader()
        self._process = None
        self._state.exited(code, self._clock(), self._lines)
        self._notify()
        log.warning("%r: %s", self, self._state.issues[0].message)

    async def _healthy(self) -> bool:
        assert self._session is not None and self._state.port is not None
        settings = self.settings
        path = settings.ready_path if isinstance(settings, CommandSettings) else "/health"
        url = _health_url(settings.host, self._state.port, path)
        try:
            async with self._session.get(url) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    # ------------------------------------------------------------ the output
    async def _read_output(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit; the reader skipped it
                raw = b"[a line too long to keep]\n"
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\r\n")
            self._lines.append(line)
            if self.log_server_output:
                server_log.info("[%s] %s", self.name, line)

    async def _finish_reader(self) -> None:
        """Let the reader take the process's last lines (the pipe closes at exit)."""
        reader = self._reader
        if reader is None:
            return
        await asyncio.wait({reader}, timeout=_DRAIN_TIMEOUT)  # if cancelled here, stop() ends it
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        self._reader = None


__all__ = [
    "LAST_LINES",
    "CommandSettings",
    "ServerSettings",
    "Supervisor",
]
