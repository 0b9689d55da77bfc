"""The supervised llama-server's lifecycle, as plain data: no processes, no I/O.

Theory of operation
-------------------
Decide without I/O, then act (h11's rule): :class:`SupervisorState` is the whole
lifecycle and its state table; :class:`corral.agent.supervisor.Supervisor` spawns,
polls and reaps, and tells this state what happened. Everything here is plain data
and methods over it, tested with plain asserts::

    STOPPED --started--> STARTING --ready--> READY
       |                  |   ^                |
       | start_failed     |   | started        | exited (a crash)
       v                  v   |                v
    BACKOFF <--exited---- + --+-------------- BACKOFF (wait, then restart)

    STARTING / READY / BACKOFF --stop_requested--> STOPPING --stopped--> STOPPED

Every transition takes the time (``now``) as an argument, so tests never sleep; an
illegal transition raises :class:`IllegalTransition` and changes nothing.
:class:`Backoff` spaces restarts: 0.5 s, 1 s, 2 s, ... up to 30 s, and starts again at
0.5 s once a server had stayed ready for ``stable_after`` seconds. An unexpected exit
becomes a ``crashed`` issue quoting the end of the server's output
(:func:`crash_issue`).
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from corral.core.fleet import Condition
from corral.protocol.messages import IssueInfo

ISSUE_LINES: Final = 10
"""Of the server's last lines, how many an issue quotes (the end of the log says why
it died)."""
_MAX_MESSAGE: Final = 4096  # IssueInfo.message's limit
_MAX_QUOTED_LINE: Final = 300


class IllegalTransition(RuntimeError):
    """A lifecycle event that cannot happen in the current phase (nothing changed)."""


class Phase(enum.Enum):
    """Where the supervised server is in its lifecycle."""

    STOPPED = "stopped"
    """No process, and none wanted."""
    STARTING = "starting"
    """The process runs and loads its model (``/health`` answers 503 or nothing)."""
    READY = "ready"
    """``/health`` answered 200."""
    BACKOFF = "backoff"
    """The process died or could not start; a restart is due at ``restart_at``."""
    STOPPING = "stopping"
    """Shutting down on request: SIGTERM sent, SIGKILL to follow."""


_CONDITIONS: Final[dict[Phase, Condition]] = {
    Phase.STOPPED: Condition.UNREACHABLE,
    Phase.STARTING: Condition.LOADING,
    Phase.READY: Condition.READY,
    Phase.BACKOFF: Condition.ERROR,
    Phase.STOPPING: Condition.UNREACHABLE,
}


@dataclass
class Backoff:
    """Delays between restarts: exponential, capped, forgiven after a stable run.

    The defaults follow common practice for supervisors (start fast, cap at half a
    minute so a broken install does not spin the CPU, yet recovers within 30 s).
    """

    initial: float = 0.5
    """The first delay, in seconds."""
    factor: float = 2.0
    """Each consecutive failure multiplies the delay by this."""
    maximum: float = 30.0
    """The delay never exceeds this, in seconds."""
    stable_after: float = 60.0
    """A server that stayed ready this long resets the delay to ``initial``."""
    next_delay: float = field(init=False)
    """The delay the next failure will get (before any reset)."""
    ready_since: float | None = field(default=None, init=False)
    """When the current server became ready, or ``None``."""

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.factor < 1 or self.stable_after < 0:
            raise ValueError(
                f"bad backoff: initial {self.initial}, factor {self.factor}, "
                f"maximum {self.maximum}, stable_after {self.stable_after}"
            )
        self.next_delay = self.initial

    def __repr__(self) -> str:
        return f"<Backoff next {self.next_delay:g}s ({self.initial:g}-{self.maximum:g}s)>"

    def ready(self, now: float) -> None:
        """The server became ready at ``now``."""
        self.ready_since = now

    def failed(self, now: float) -> float:
        """The server died (or did not start) at ``now``: the seconds to wait."""
        if self.ready_since is not None and now - self.ready_since >= self.stable_after:
            self.next_delay = self.initial
        self.ready_since = None
        delay = self.next_delay
        self.next_delay = min(delay * self.factor, self.maximum)
        return delay


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How a server process ended."""

    code: int
    """Its exit status; negative for a signal, as :mod:`subprocess` reports it."""
    runtime: float
    """Seconds from start to exit."""
    while_loading: bool
    """It died before it was ever ready."""
    last_lines: tuple[str, ...]
    """The end of its output."""
    program: str = "llama-server"
    """What ran, for the crash message (a command line's program, see
    :class:`corral.agent.supervisor.CommandSettings`)."""

    @property
    def status(self) -> str:
        """``"1"``, or ``"-9 (SIGKILL)"`` for a signal."""
        if self.code < 0:
            try:
                return f"{self.code} ({signal.Signals(-self.code).name})"
            except ValueError:
                return f"{self.code} (signal {-self.code})"
        return str(self.code)


def crash_issue(exit: ExitInfo) -> IssueInfo:
    """The ``crashed`` issue for an unexpected exit, quoting the last lines."""
    when = " while loading" if exit.while_loading else ""
    head = f"{exit.program} exited with status {exit.status}{when} after {exit.runtime:.1f}s"
    if exit.code == -signal.SIGILL:  # said before the lines, which may be clipped
        head += f" ({_SIGILL_HINT})"
    quoted = [_clip(line, _MAX_QUOTED_LINE) for line in exit.last_lines[-ISSUE_LINES:]]
    tail = f"; last lines: {' | '.join(quoted)}" if quoted else "; it wrote nothing"
    return IssueInfo("crashed", _clip(head + tail, _MAX_MESSAGE))


_SIGILL_HINT = (
    "an illegal instruction: the binary was built for instructions this CPU, or its "
    "hypervisor, does not enable; build it on and for this machine (a native llama.cpp "
    "build on a CPU that advertises AMX it may not use: build with -mno-amx-tile "
    "-mno-amx-int8 -mno-amx-bf16, as scripts/install does)"
)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(eq=True)
class SupervisorState:
    """The supervised server's lifecycle, without I/O (see the module docstring).

    Compare whole states in tests; read ``repr()`` in logs.
    """

    name: str
    """The server's name, shown in logs and dashboards."""
    backoff: Backoff = field(default_factory=Backoff)
    phase: Phase = Phase.STOPPED
    pid: int | None = None
    port: int | None = None
    started_at: float | None = None
    """When the current process was started."""
    load_time: float | None = None
    """Seconds the current process took to become ready; ``None`` until it is."""
    restarts: int = 0
    """Start attempts after a crash or a failed start."""
    last_exit: ExitInfo | None = None
    """How the last process ended unexpectedly."""
    issues: list[IssueInfo] = field(default_factory=list)
    """What is wrong now; emptied when a server becomes ready (or is stopped)."""
    delay: float | None = None
    """In BACKOFF: the seconds waited before the restart."""
    restart_at: float | None = None
    """In BACKOFF: when the restart is due."""
    program: str = "llama-server"
    """What the server process runs, for messages."""

    def __repr__(self) -> str:
        parts = [f"<Supervisor {self.name} {self.phase.name}"]
        if self.pid is not None:
            parts.append(f"pid {self.pid} port {self.port}")
        if self.phase is Phase.BACKOFF and self.delay is not None:
            parts.append(f"delay {self.delay:g}s")
        parts.append(f"restarts {self.restarts}")
        if self.load_time is not None:
            parts.append(f"load {self.load_time:.1f}s")
        if self.issues:
            parts.append(f"issues {','.join(issue.code for issue in self.issues)}")
        return " ".join(parts) + ">"

    @property
    def condition(self) -> Condition:
        """The phase as the agent protocol's condition (STARTING is ``"loading"``)."""
        return _CONDITIONS[self.phase]

    # ------------------------------------------------------------ transitions
    def _expect(self, event: str, *phases: Phase) -> None:
        if self.phase not in phases:
            allowed = ", ".join(phase.name for phase in phases)
            raise IllegalTransition(f"{event} in {self.phase.name} (allowed in {allowed})")

    def started(self, now: float, *, pid: int, port: int) -> None:
        """A process was spawned; its model loads."""
        self._expect("started", Phase.STOPPED, Phase.BACKOFF)
        if self.phase is Phase.BACKOFF:
            self.restarts += 1
        self.phase = Phase.STARTING
        self.pid, self.port = pid, port
        self.started_at, self.load_time = now, None
        self.delay = self.restart_at = None

    def start_failed(self, reason: str, now: float) -> None:
        """No process could be spawned (missing binary or model, exec error)."""
        self._expect("start_failed", Phase.STOPPED, Phase.BACKOFF)
        if self.phase is Phase.BACKOFF:
            self.restarts += 1
        self._back_off(IssueInfo("start_failed", _clip(reason, _MAX_MESSAGE)), now)

    def ready(self, now: float) -> None:
        """``/health`` answered 200: records the load time, clears the issues."""
        self._expect("ready", Phase.STARTING)
        assert self.started_at is not None
        self.phase = Phase.READY
        self.load_time = now - self.started_at
        self.issues = []
        self.backoff.ready(now)

    def exited(self, code: int, now: float, last_lines: Sequence[str] = ()) -> None:
        """The process ended without being asked to: a ``crashed`` issue, then BACKOFF."""
        self._expect("exited", Phase.STARTING, Phase.READY)
        assert self.started_at is not None
        self.last_exit = ExitInfo(
            code=code,
            runtime=now - self.started_at,
            while_loading=self.phase is Phase.STARTING,
            last_lines=tuple(last_lines),
            program=self.program,
        )
        self._back_off(crash_issue(self.last_exit), now)

    def _back_off(self, issue: IssueInfo, now: float) -> None:
        self.phase = Phase.BACKOFF
        self.pid = self.port = self.started_at = None
        self.issues = [issue]
        self.delay = self.backoff.failed(now)
        self.restart_at = now + self.delay

    def restart_due(self, now: float) -> bool:
        """Whether a server in BACKOFF should be started again now."""
        return (
            self.phase is Phase.BACKOFF and self.restart_at is not None and now >= self.restart_at
        )

    def stop_requested(self) -> None:
        """Someone asked to stop; the process (if any) is about to be terminated."""
        self._expect("stop_requested", Phase.STARTING, Phase.READY, Phase.BACKOFF)
        self.phase = Phase.STOPPING
        self.delay = self.restart_at = None

    def stopped(self) -> None:
        """The process is gone (reaped)."""
        self._expect("stopped", Phase.STOPPING)
        self.phase = Phase.STOPPED
        self.pid = self.port = self.started_at = None
        self.issues = []


__all__ = [
    "ISSUE_LINES",
    "Backoff",
    "ExitInfo",
    "IllegalTransition",
    "Phase",
    "SupervisorState",
    "crash_issue",
]
