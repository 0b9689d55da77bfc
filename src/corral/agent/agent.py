"""The agent process: watch one llama-server, report to one or more balancers.

Two kinds of task, kept in one place (:class:`Agent`):

- the **monitor** asks its runner (:mod:`corral.agent.runners`: llama-server, vLLM,
  SGLang, Ollama, any OpenAI-compatible server) to read the server every
  ``poll_interval`` (and at once when a balancer asks, after a failed request; for
  llama-server, ``/slots`` only as
  :class:`~corral.agent.runners.llamacpp.ReadSchedule` allows: reading it too often
  stops llama-server from noticing clients that left), and keeps the latest
  :class:`~corral.protocol.messages.ServerStatus`;
- one **link** per balancer keeps a WebSocket open: register, then a status on every
  change and a heartbeat every interval the balancer asked for. A lost link is
  reopened with exponential backoff. Reporting to two balancers gives high
  availability: each knows the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp
import msgspec

from corral.addr import Addr
from corral.agent.lifecycle import crash_issue
from corral.agent.probes import ProbeListener
from corral.agent.runners import Fetched, Runner, RunnerOptions, make_runner
from corral.config import AGENT, default
from corral.core.fleet import Condition
from corral.llamacpp.sources import PROGRESS_EVERY, Copy
from corral.protocol import messages as m
from corral.shutdown import requests, talking
from corral.tls import TLSError, client_context

log = logging.getLogger("corral.agent")


@dataclass(frozen=True)
class AgentConfig:
    """How an agent runs. Fields that are ``corral agent`` settings take their defaults
    from :data:`corral.config.AGENT`, which declares each one's flag, environment
    variable and help."""

    local_llamacpp_addr: Addr | None = None
    """Where the agent reads its llama-server (None: the agent runs its own)."""
    management_addrs: tuple[Addr, ...] = ()
    """Balancers to report to (their management listeners)."""
    external_llamacpp_addr: Addr | None = None
    """Where balancers send requests; defaults to the local address."""
    name: str = field(default_factory=lambda: socket.gethostname())
    """Shown on dashboards."""
    llamacpp_api_key: str | None = field(default=None, repr=False)
    """The server's ``--api-key``, if it has one (sent to balancers for upstream use)."""
    agent_token: str | None = field(default=None, repr=False)
    """The balancers' ``--agent-token``."""
    tls: bool = False
    """Connect to balancers over ``wss://``, verifying their certificates."""
    tls_ca: Path | None = None
    """PEM file of the CAs to verify balancers against (implies ``tls``; None: the
    system's CAs)."""
    poll_interval: float = default(AGENT, "poll_interval")
    """Seconds between reads of the server's ``/health``."""
    slots_gap: float = default(AGENT, "slots_gap")
    """Seconds from one ``/slots`` answer to the next ``/slots`` request; must exceed
    llama-server's 1 s wait for a client that left (see :mod:`corral.agent.runners.llamacpp`)."""
    idle_slots_interval: float = default(AGENT, "idle_slots_interval")
    """Seconds between ``/slots`` reads while every slot is idle; 0: none (a server with
    ``--sleep-idle-seconds`` can then fall asleep)."""
    read_timeout: float = default(AGENT, "read_timeout")
    """Seconds a read of the server (``/health``, ``/props``, ``/slots``) may take before
    the server counts as unreachable: a hung server (a GPU hang, a deadlock, ``kill
    -STOP``) is reported at once and the balancer breaks off the requests it holds. A
    busy server still answers ``/health`` at once (llama-server answers it outside
    its task queue), so a long generation is never mistaken for a hang."""
    reconnect_min: float = default(AGENT, "reconnect_min")
    """Seconds before the first reconnect to a balancer; each failed attempt doubles the
    wait, with +-20% jitter (gRPC's connection backoff, sooner: see the setting)."""
    reconnect_max: float = default(AGENT, "reconnect_max")
    """The cap, in seconds, of the reconnect backoff; at least ``reconnect_min``."""
    socket_heartbeat: float = 5.0
    """Seconds between WebSocket pings; a balancer that stops answering them is
    dropped and reconnected (a vanished peer is otherwise noticed only by TCP)."""
    runner: str = default(AGENT, "runner")
    """Which kind of server the agent reads (:data:`corral.agent.runners.RUNNERS`)."""
    concurrency: int | None = default(AGENT, "concurrency")
    """Requests the server runs at once, for runners that do not report slots (vLLM's
    ``--max-num-seqs``...); None: the runner's documented default."""
    probe_addr: Addr | None = default(AGENT, "probe_addr")
    """Where to answer liveness and readiness probes (``GET /livez``, ``GET /readyz``;
    see :mod:`corral.agent.probes`); None: no probe listener."""

    def __post_init__(self) -> None:
        """Check the reconnect backoff.

        Raises:
            ValueError: not 0 < ``reconnect_min`` <= ``reconnect_max`` < infinity.
        """
        if not 0 < self.reconnect_min <= self.reconnect_max < math.inf:
            raise ValueError(reconnect_error(self.reconnect_min, self.reconnect_max))


def reconnect_error(low: float, high: float) -> str:
    """Why a reconnect backoff of ``low`` to ``high`` seconds is refused."""
    return (
        f"the reconnect backoff must start above 0 and not exceed its cap: "
        f"--reconnect-min {low:g} s, --reconnect-max {high:g} s"
    )


def reconnect_wait(
    backoff: float, cap: float, uniform: Callable[[float, float], float] = random.uniform
) -> float:
    """Seconds to wait before reconnecting to a balancer: ``backoff`` (the current step
    of the doubling backoff, seconds) +-20% jitter as gRPC's connection backoff, never
    more than ``cap`` (``--reconnect-max``). Near the cap the wait spreads over 80-100%
    of it, so the agents of a balancer that comes back do not all return at once."""
    return min(backoff * uniform(0.8, 1.2), cap * uniform(0.8, 1.0))


class ServerProcess(Protocol):
    """What the agent needs of a supervisor (:class:`corral.agent.supervisor.Supervisor`)."""

    @property
    def port(self) -> int | None: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def phase(self) -> Any: ...  # an enum whose value is a SupervisorInfo state
    @property
    def restarts(self) -> int: ...
    @property
    def last_exit(self) -> Any: ...  # an ExitInfo, or None
    @property
    def load_time(self) -> float | None: ...
    @property
    def issues(self) -> list[m.IssueInfo]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def wait_changed(self) -> None: ...


def supervisor_info(server: ServerProcess, copy: CopyState | None = None) -> m.SupervisorInfo:
    """What the agent reports of its server: its lifecycle, and the step of a start
    (``copying`` the model while ``copy`` runs, then ``loading`` until ready)."""
    load = server.load_time
    last = server.last_exit
    state = server.phase.value
    step: Literal["copying", "loading"] | None = "loading" if state == "starting" else None
    copied = total = copy_time = None
    if copy is not None:
        copy_time = copy.seconds
        if copy.running:  # the server is not started yet
            state, step, copied, total = "starting", "copying", copy.done, copy.total
    return m.SupervisorInfo(
        state=state,
        restarts=server.restarts,
        load_time_s=round(load, 3) if load is not None else None,
        pid=server.pid,
        last_crash=crash_issue(last).message if last is not None else None,
        step=step,
        copied_bytes=copied,
        copy_bytes=total,
        copy_time_s=round(copy_time, 3) if copy_time is not None else None,
    )


@dataclass
class CopyState:
    """The copy of the model into the cache before its server starts (supervisor mode)."""

    done: int = 0
    """Bytes copied so far."""
    total: int | None = None
    """The model's size in bytes, if known."""
    seconds: float | None = None
    """How long it took, once it is over (0: nothing was copied); None while it runs."""
    error: str | None = None
    """Why it failed (then the server is not started)."""

    @property
    def running(self) -> bool:
        return self.seconds is None and self.error is None


class Agent:
    """Watches one server; in supervisor mode it also runs it (``server``).

    The server is read at ``config.local_llamacpp_addr``, or, when that is None, on
    the supervised server's port on 127.0.0.1 (a llama-server the agent started on a
    port of its choosing). A server run from a command line has both: the agent runs
    it and reads it where the command makes it listen."""

    def __init__(
        self,
        config: AgentConfig,
        server: ServerProcess | None = None,
        copy: Copy | None = None,
    ) -> None:
        """``copy``: the model's copy into the cache to make before ``server`` starts
        (:func:`corral.llamacpp.sources.plan`); the agent reports its progress.

        Raises :class:`corral.tls.TLSError` when ``config.tls_ca`` cannot be used,
        ValueError when there is neither an address to read nor a server to run."""
        if config.local_llamacpp_addr is None and server is None:
            raise ValueError("give a local server address, a server to run, or both")
        self.config = config
        self.ssl = (
            client_context(config.tls_ca) if config.tls or config.tls_ca is not None else None
        )
        """How links verify balancers (None: plain ``ws://``)."""
        self.server = server
        self._copy = copy
        self.copy: CopyState | None = None
        """The model's copy into the cache (supervisor mode; None: the model is a local
        file, nothing is copied)."""
        self.status = m.ServerStatus(condition=Condition.LOADING, issues=[])
        self._changed = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.runner: Runner = make_runner(
            config.runner,
            RunnerOptions(
                poll_interval=config.poll_interval,
                slots_gap=config.slots_gap,
                idle_slots_interval=config.idle_slots_interval,
                concurrency=config.concurrency,
            ),
        )
        self._poll_lock = asyncio.Lock()
        self._reading_at = 0.0  # when the read of the server's slots began
        self._reading_end = 0.0  # and when it ended
        self.status_read_at = 0.0
        """When the read that produced :attr:`status` began (event loop clock)."""
        self.status_read_end = 0.0
        """When that read ended (its answer came; event loop clock)."""
        self._server_port = 0
        self._applied: m.Applied | None = None
        self._failed_generation: int | None = None
        self._apply_issues: list[m.IssueInfo] = []
        self._applying = False
        self._apply_task: asyncio.Task[None] | None = None
        self.links: dict[str, str] = {}  # balancer URL -> "connected" / reason
        self.monitor_round_at: float | None = None
        """When the monitor last finished a round (event loop clock; for ``/livez``)."""
        self._monitor_task: asyncio.Task[None] | None = None
        self.probes: ProbeListener | None = None
        self._delay: dict[str, float] = {}  # balancer URL -> next reconnect delay

    # ------------------------------------------------------------ monitor
    @property
    def local_url(self) -> str:
        if self.server is not None and self.config.local_llamacpp_addr is None:
            # between two runs of the server, its address stays the last one it had
            self._server_port = self.server.port or self._server_port
            return f"http://127.0.0.1:{self._server_port}"
        assert self.config.local_llamacpp_addr is not None
        return self.config.local_llamacpp_addr.url()

    @property
    def external_url(self) -> str:
        if self.config.external_llamacpp_addr is not None:
            return self.config.external_llamacpp_addr.url()
        return self.local_url

    async def _get(self, path: str) -> Fetched:
        assert self._session is not None
        url = self.local_url + path
        headers = {}
        if self.config.llamacpp_api_key:
            headers["Authorization"] = f"Bearer {self.config.llamacpp_api_key}"
        try:
            async with self._session.get(url, headers=headers) as response:
                data = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Fetched(error=str(exc) or type(exc).__name__)
        if path.endswith("/metrics"):  # Prometheus text
            return Fetched(response.status, data[: 4 << 20].decode(errors="replace"))
        try:
            return Fetched(response.status, json.loads(data) if data else None)
        except (ValueError, RecursionError):
            text = data[:200].decode(errors="replace")
            return Fetched(response.status, text, error="answer is not JSON")

    async def poll(self) -> m.ServerStatus:
        """Read the server once and publish the status if it changed."""
        async with self._poll_lock:
            if self.server is not None and hasattr(self.runner, "adapter_names"):
                lora = getattr(getattr(self.server, "settings", None), "lora", ())
                self.runner.adapter_names = {str(path): name for name, path in lora}
            status = await self._read()
            if self.server is not None:
                status = self._with_supervisor(status)
            if status != self.status:
                self._log_change(status)
                self.status = status
                self.status_read_at = self._reading_at
                self.status_read_end = self._reading_end
                self._notify()
            return status

    def _notify(self) -> None:
        """Wake the links: the status or the shares changed."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def share(self, url: str) -> int | None:
        """The slots the balancer at ``url`` may use: the server's slots split evenly
        between the connected balancers, in the order of their URLs (the first ones
        get one more when they do not divide evenly). None with one balancer
        configured (it may use all of them, as before shares existed)."""
        if len(self.config.management_addrs) <= 1:
            return None
        connected = sorted({u for u, r in self.links.items() if r == "connected"} | {url})
        total = self.status.slots_total
        count = len(connected)
        return total // count + (1 if connected.index(url) < total % count else 0)

    def _with_supervisor(self, status: m.ServerStatus) -> m.ServerStatus:
        assert self.server is not None
        info = supervisor_info(self.server, self.copy)
        issues = [*self._apply_issues, *self.server.issues, *status.issues]
        if self.copy is not None and self.copy.error is not None:
            issues.insert(
                0, m.IssueInfo("copy_failed", f"copying the model failed: {self.copy.error}")
            )
        if info.state == "ready" and not self._applying:
            settings = getattr(self.server, "settings", None)
            return msgspec.structs.replace(
                status,
                cache_ram_mib=getattr(settings, "cache_ram_mib", None),
                supervisor=info,
                issues=issues,
                applied=self._applied,
                failed_generation=self._failed_generation,
            )
        if self._applying:
            return m.ServerStatus(
                condition=Condition.LOADING,
                issues=issues,
                supervisor=info,
                applied=self._applied,
                failed_generation=self._failed_generation,
                applying=True,
            )
        if info.state == "starting":
            return m.ServerStatus(condition=Condition.LOADING, issues=issues, supervisor=info)
        return m.ServerStatus(condition=Condition.ERROR, issues=issues, supervisor=info)

    async def _read(self) -> m.ServerStatus:
        loop = asyncio.get_running_loop()
        self._reading_at = self._reading_end = loop.time()
        if self.server is not None and self.server.phase.value != "ready":
            self.runner.forget()
            return self._stamped(m.ServerStatus(condition=Condition.LOADING))
        reading = await self.runner.read(self._get, loop.time)
        self._reading_at = reading.began
        self._reading_end = loop.time() if reading.ended is None else reading.ended
        return self._stamped(reading.status)

    def _stamped(self, status: m.ServerStatus) -> m.ServerStatus:
        """The status with the runner's name and the APIs its server answers."""
        return msgspec.structs.replace(status, runner=self.runner.name, apis=list(self.runner.apis))

    def _next_poll_in(self) -> float:
        """Seconds to the next read: ``poll_interval``, or sooner when the runner has
        something new to read (llama-server: ``/slots`` may be read again)."""
        now = asyncio.get_running_loop().time()
        delay = min(self.config.poll_interval, self.runner.next_read_in(now))
        return max(delay, 0.01)

    def _log_change(self, status: m.ServerStatus) -> None:
        if status.condition != self.status.condition or status.issues != self.status.issues:
            issues = "; ".join(i.message for i in status.issues)
            level = (
                logging.INFO
                if status.condition in (Condition.READY, Condition.LOADING)
                else logging.WARNING
            )
            where = self.local_url
            if (  # a supervised llama-server that never got a port (a command's is set)
                self.server is not None
                and self.config.local_llamacpp_addr is None
                and self._server_port == 0
            ):
                where = f"{getattr(self.server, 'program', 'the supervised server')} (not started)"
            log.log(
                level,
                "server %s: %s%s (slots %d/%d busy, model %s)",
                where,
                status.condition,
                f" - {issues}" if issues else "",
                status.slots_processing,
                status.slots_total,
                status.model,
            )

    async def _monitor(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # never let one odd answer stop the monitor
                log.exception("reading the server failed")
            self.monitor_round_at = asyncio.get_running_loop().time()
            if self.server is None:
                await asyncio.sleep(self._next_poll_in())
                continue
            # a supervised server's changes (crash, ready) are reported at once
            changed = asyncio.ensure_future(self.server.wait_changed())
            await asyncio.wait({changed}, timeout=self._next_poll_in())
            changed.cancel()

    # --------------------------------------------------------------- links
    async def _link(self, addr: Addr) -> None:
        url = addr.url("https" if self.ssl is not None else "http") + "/api/v1/agent-socket"
        self._delay[url] = self.config.reconnect_min
        while True:
            try:
                moved = await self._session_with(url)
                reason = "server moved" if moved else "connection closed"
            except aiohttp.WSServerHandshakeError as exc:
                reason = handshake_reason(exc.status, exc.message)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
            except m.ProtocolError as exc:
                reason = str(exc)
            except Exception as exc:  # a bug must not end the link for good
                log.exception("link to %s failed", url)
                reason = f"{type(exc).__name__}: {exc}"
            self.links[url] = reason
            self._notify()  # the other links' shares change
            if reason == "server moved":
                continue
            delay = reconnect_wait(self._delay[url], self.config.reconnect_max)
            log.warning("balancer %s: %s; reconnecting in %.1fs", addr, reason, delay)
            await asyncio.sleep(delay)
            self._delay[url] = min(self.config.reconnect_max, self._delay[url] * 2)

    async def _session_with(self, url: str) -> bool:
        """One registration; ``True`` if it ended because the server's address changed."""
        assert self._session is not None
        headers = {}
        if self.config.agent_token:
            headers["Authorization"] = f"Bearer {self.config.agent_token}"
        async with self._session.ws_connect(
            url,
            headers=headers,
            heartbeat=self.config.socket_heartbeat,
            ssl=self.ssl if self.ssl is not None else True,
        ) as ws:
            register = m.Register(
                version=m.PROTOCOL_VERSION,
                name=self.config.name,
                address=self.external_url,
                status=self.status,
                api_key=self.config.llamacpp_api_key,
                share=self.share(url),
            )
            await ws.send_bytes(m.encode(register))
            reply = await ws.receive(timeout=10)
            if reply.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                raise m.ProtocolError(f"balancer closed the socket ({ws.close_code})")
            answer = m.decode_balancer_message(reply.data)
            if isinstance(answer, m.Error):
                raise m.ProtocolError(f"balancer refused registration: {answer.message}")
            if not isinstance(answer, m.Registered):
                raise m.ProtocolError(f"expected registered, got {type(answer).__name__}")
            self.links[url] = "connected"
            self._notify()  # the other links' shares change
            self._delay[url] = self.config.reconnect_min
            log.info("registered with %s as %s", url, answer.agent_id)
            receiver = asyncio.create_task(self._receive(ws, url))
            try:
                await self._report(ws, url, answer.heartbeat_interval, receiver, register)
            finally:
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiver
                if not ws.closed:
                    with contextlib.suppress(Exception):
                        await ws.send_bytes(m.encode(m.Deregister("agent stopping")))
            return register.address != self.external_url

    async def _report(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        url: str,
        interval: float,
        receiver: asyncio.Task[Any],
        register: m.Register,
    ) -> None:
        """Send the status (and this balancer's share) when it differs from the last
        one sent, else a heartbeat."""
        sent = register.status, register.share
        while not receiver.done():
            if (self.status, self.share(url)) != sent:
                sent = self.status, self.share(url)
                status = self._timed(sent[0], sent[1])
                await ws.send_bytes(m.encode(status))
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                done, _ = await asyncio.wait({changed, receiver}, timeout=interval)
            finally:  # also when this is cancelled: no task left pending behind
                changed.cancel()
            if receiver in done:
                return
            if register.address != self.external_url:  # the server moved (restarted)
                return  # close this session; the link registers again at once
            if not done:  # nothing changed for a whole interval
                await ws.send_bytes(m.encode(m.Heartbeat()))

    def _timed(self, status: m.ServerStatus, share: int | None) -> m.Status:
        """A status message saying how long ago the read behind :attr:`status` began and
        ended (for the balancer: the server counted its busy slots between the two)."""
        now = asyncio.get_running_loop().time()
        began = max(0.0, now - self.status_read_at)
        return m.Status(
            status,
            read_age=began,
            read_end_age=min(began, max(0.0, now - self.status_read_end)),
            share=share,
        )

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, url: str) -> None:
        async for frame in ws:
            if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                break
            try:
                message = m.decode_balancer_message(frame.data)
            except m.ProtocolError as exc:
                log.warning("ignored a bad frame from the balancer: %s", exc)
                continue
            if isinstance(message, m.Refresh):
                try:
                    status = await self.poll()
                except Exception:
                    log.exception("reading the server failed")
                    status = self.status
                reply = self._timed(status, self.share(url))
                await ws.send_bytes(m.encode(reply))
            elif isinstance(message, m.Apply):
                self.apply(message)
            elif isinstance(message, m.Error):
                log.warning("balancer says: %s", message.message)
                if message.fatal:
                    break

    # ------------------------------------------------------- desired state
    def apply(self, command: m.Apply) -> None:
        """Start applying a desired state (ignored if it is applied or applying)."""
        if self.server is None:
            log.warning("ignored a desired state: this agent does not run its server")
            return
        if self._applied is not None and self._applied.generation >= command.generation:
            return
        if self._apply_task is not None and not self._apply_task.done():
            return
        if not hasattr(getattr(self.server, "settings", None), "model"):
            # a command line (--runner X -- COMMAND): nothing to change in it
            self._failed_generation = command.generation
            self._apply_issues = [
                m.IssueInfo(
                    "apply_failed",
                    f"desired state {command.generation} not applied: this agent runs its "
                    "server from a command line; a desired state applies to a llama-server "
                    "the agent starts from --model",
                )
            ]
            log.warning("%s", self._apply_issues[0].message)
            return
        self._apply_task = asyncio.create_task(self._apply(command))
        self._tasks.append(self._apply_task)

    async def _apply(self, command: m.Apply) -> None:
        assert self.server is not None
        server: Any = self.server
        self._applying = True
        await self.poll()  # tell the balancers: draining
        try:
            await self._drain(command.drain_timeout)
            old = server.settings
            try:
                new = settings_for(command.state, old)
            except ValueError as exc:
                ok, reason = False, str(exc)
            else:
                log.info("applying generation %d: %s", command.generation, command.state)
                ok, reason = await self._restart(new)
            if ok:
                self._applied = m.Applied(command.generation, command.state)
                self._apply_issues = []
            else:
                log.warning(
                    "generation %d failed (%s); back to the last settings",
                    command.generation,
                    reason,
                )
                self._failed_generation = command.generation
                self._apply_issues = [
                    m.IssueInfo(
                        "apply_failed",
                        f"desired state {command.generation} failed: {reason}; "
                        "running the last working settings",
                    )
                ]
                if server.settings != old:
                    await self._restart(old)
        finally:
            self._applying = False
            await self.poll()

    async def drain(self, limit: float) -> float:
        """Drain before the agent goes (Kubernetes' preStop, ``POST /drain``): tell the
        balancers to send nothing new (the backend shows as draining), then wait up to
        ``limit`` seconds until the server has no request in flight. The agent stays
        draining until it stops. Returns the seconds it took.

        Only a supervised server can be drained (in attach mode the server is not
        the agent's to hold back); an attached agent returns at once.
        """
        started = asyncio.get_running_loop().time()
        if self.server is None:
            return 0.0
        self._applying = True
        await self.poll()  # tell the balancers: draining
        await self._drain(limit)
        return asyncio.get_running_loop().time() - started

    async def _drain(self, limit: float) -> None:
        """Wait until the server has no request in flight (from anywhere)."""
        deadline = asyncio.get_running_loop().time() + limit
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            busy = await self.runner.in_flight(self._get, loop.time)  # paced by the runner
            if not busy:
                return
        log.warning("drain timed out after %.0fs: restarting anyway", limit)

    async def _restart(self, settings: Any, limit: float = 300.0) -> tuple[bool, str]:
        """Restart the server with these settings; ``(ready?, reason if not)``."""
        server: Any = self.server
        await server.stop()
        server.settings = settings
        await server.start()
        deadline = asyncio.get_running_loop().time() + limit
        while server.phase.value == "starting":
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False, f"not ready after {limit:.0f}s"
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):  # not wait_for (3.11)
                    await server.wait_changed()
        if server.phase.value == "ready":
            return True, ""
        reason = "; ".join(i.message for i in server.issues) or f"server {server.phase.value}"
        return False, reason

    # ----------------------------------------------------------- lifecycle
    @property
    def monitor_running(self) -> bool:
        """Whether the monitor task runs (for ``/livez``)."""
        return self._monitor_task is not None and not self._monitor_task.done()

    async def start(self) -> None:
        """Start the probe listener (if configured), the server (in supervisor mode),
        the monitor and one link per balancer.

        Raises:
            OSError: The probe address cannot be bound (nothing else was started).
        """
        if self.config.probe_addr is not None:
            self.probes = ProbeListener(self, self.config.probe_addr)
            await self.probes.start()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.read_timeout)
        )
        if self.server is not None:
            if self._copy is None:
                await self.server.start()
            else:
                self.copy = CopyState()  # reported as copying from the first status on
        await self.poll()
        self._monitor_task = asyncio.create_task(self._monitor())
        self._tasks.append(self._monitor_task)
        for addr in self.config.management_addrs:
            self._tasks.append(asyncio.create_task(self._link(addr)))
        if self.server is not None and self._copy is not None:
            self._tasks.append(asyncio.create_task(self._copy_then_start(self._copy)))

    async def _copy_then_start(self, copy: Copy) -> None:
        """Copy the model into the cache (in a thread), reporting its progress to the
        balancers, then start the server on the copy. A failed copy is reported as a
        ``copy_failed`` issue (condition error); the server is not started."""
        from corral.llamacpp.sources import ModelSourceError

        server: Any = self.server
        loop = asyncio.get_running_loop()
        state = self.copy = self.copy or CopyState()
        started = loop.time()

        told: list[tuple[int, int | None]] = []

        def progress(done: int, total: int | None) -> None:  # on the copy's thread
            told.append((done, total))  # read, and published, by the loop below

        await self.poll()
        copying = asyncio.ensure_future(asyncio.to_thread(copy, progress))
        try:
            while not (await asyncio.wait({copying}, timeout=PROGRESS_EVERY))[0]:
                if told:
                    self._copied(*told[-1])
            path = copying.result()
        except ModelSourceError as exc:
            log.error("copying the model failed: %s", exc)
            state.error = str(exc)
            await self.poll()
            return
        state.seconds = loop.time() - started
        log.info("model copied into the cache in %.2fs: %s", state.seconds, path)
        server.settings = dataclasses.replace(server.settings, model=path)
        await server.start()
        await self.poll()

    def _copied(self, done: int, total: int | None) -> None:
        """The copy's progress, published at once: while copying, the status is the
        copy's (there is no server to read), so no read is needed and none is skipped."""
        if self.copy is None or not self.copy.running:
            return
        self.copy.done, self.copy.total = done, total
        status = self._with_supervisor(self._stamped(m.ServerStatus(condition=Condition.LOADING)))
        if status != self.status:
            self.status = status
            self.status_read_at = asyncio.get_running_loop().time()
            self._notify()

    async def stop(self) -> None:
        if self.probes is not None:  # listeners first: probes then fail to connect
            await self.probes.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.server is not None:
            await self.server.stop()
        if self._session is not None:
            await self._session.close()

    @property
    def stop_timeout(self) -> float:
        """Seconds :meth:`stop` may take at most: its server's SIGTERM-to-SIGKILL wait."""
        return float(getattr(self.server, "stop_timeout", 0.0)) if self.server else 0.0

    def waiting_for(self) -> str | None:
        """What :meth:`stop` waits for now, in words; None for nothing (an attached
        server is not the agent's to stop, and a stopped one is gone)."""
        if self.server is None or self.server.pid is None:
            return None
        busy = self.status.slots_processing
        what = f"llama-server (pid {self.server.pid})"
        if busy:
            return f"{what} to finish its {requests(busy)} in flight and exit"
        return f"{what} to exit"

    def __repr__(self) -> str:
        s = self.status
        return (
            f"<Agent {self.config.name} {s.condition} slots {s.slots_processing}/{s.slots_total}"
            f" model={s.model} balancers={len(self.config.management_addrs)}>"
        )


def settings_for(state: m.DesiredState, current: Any) -> Any:
    """The supervisor settings for a desired state (unset fields keep their value).

    Raises ValueError when the model cannot be had (with the reason)."""
    from corral.llamacpp.sources import ModelSourceError, resolve

    try:
        model = resolve(state.model)
    except ModelSourceError as exc:
        raise ValueError(str(exc)) from None
    return dataclasses.replace(
        current,
        model=model,
        slots=state.slots or current.slots,
        ctx_size=state.ctx_size or current.ctx_size,
        extra_args=tuple(state.extra_args),
        lora=tuple((name, Path(path)) for name, path in state.lora.items()),
    )


async def run(
    config: AgentConfig, server: ServerProcess | None = None, copy: Copy | None = None
) -> None:
    """Run an agent until cancelled (the CLI cancels on SIGINT/SIGTERM); ``copy``: see
    :class:`Agent`. Raises SystemExit when it cannot start or its model's copy fails."""
    try:
        agent = Agent(config, server, copy)
    except TLSError as exc:
        raise SystemExit(f"corral agent: {exc}") from None
    await agent.start()
    try:
        await asyncio.Event().wait()
    finally:
        # says what the stop waits for, with a countdown (a second Ctrl-C: corral.cli._run)
        async with talking("the agent", agent.waiting_for, agent.stop_timeout):
            await agent.stop()


def handshake_reason(status: int, message: str) -> str:
    """Why a balancer refused an agent's WebSocket, in words a person can act on."""
    if status == 401:
        return "the balancer refused the agent token (--agent-token)"
    if status == 404:  # no agent socket there: another server, or the inference listener
        return (
            f"handshake failed: {status} {message}: no agent socket there; is it the "
            "balancer's management address (--management-addr, port 8060 by default), "
            "not its inference address (8061)?"
        )
    return f"handshake failed: {status} {message}"
