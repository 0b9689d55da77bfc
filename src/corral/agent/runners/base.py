"""The one small interface every runner adapter implements, and what they share.

A *runner* is a kind of inference server (llama-server, vLLM, SGLang, Ollama, any
OpenAI-compatible server). The agent knows none of them: it hands its runner a way
to read the server (:data:`Get`: a path in, a :class:`Fetched` out) and gets back a
:class:`Reading`, whose :class:`~corral.protocol.messages.ServerStatus` says the same
things whatever the runner: ready or loading, the models, slots in total and busy,
the issues in words, and which APIs the server answers (``apis``). The balancer
routes on that report alone, so a new runner changes nothing there.

Each adapter is split the same way: a pure ``interpret(...)`` (answers in, a status
out; tested on canned answers) and a :class:`Runner` subclass that decides what to
read when and calls it.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from corral.core.fleet import Condition
from corral.protocol.messages import IssueInfo, ServerStatus

MAX_TEXT = 256 * 1024
"""Longest text kept from the server's answers (a chat template is a few KiB)."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """One HTTP exchange: a status and the decoded body, or the error that prevented it.

    ``body`` is decoded JSON, or the text of a ``text/plain`` answer (Prometheus
    ``/metrics``) when the agent asked for text."""

    status: int = 0
    body: Any = None
    error: str | None = None  # connection failure or undecodable body

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200


Get = Callable[[str], Awaitable[Fetched]]
"""Read one path of the server: ``await get("/health")``. Never raises for a failed
read: the failure is in the :class:`Fetched`. Paths ending in ``/metrics`` are read as
text, every other path as JSON."""

Clock = Callable[[], float]
"""Monotonic seconds (the agent's event loop clock)."""


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """What the agent's configuration tells its runner.

    Args:
        poll_interval: Seconds between the agent's reads of the server.
        slots_gap: llama.cpp: seconds from one ``/slots`` answer to the next request.
        idle_slots_interval: llama.cpp: seconds between ``/slots`` reads while every
            slot is idle; 0: none.
        concurrency: Requests the server runs at once, for runners that do not say
            (vLLM's ``--max-num-seqs``, SGLang's ``--max-running-requests``,
            ``OLLAMA_NUM_PARALLEL``); ``None``: the runner's documented default.
    """

    poll_interval: float = 0.5
    slots_gap: float = 1.25
    idle_slots_interval: float = 30.0
    concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    """What one read of the server found, and when the read its busy slots come from
    began and ended (``began`` and ``ended``, on the :data:`Clock`; ``ended`` None: when
    :meth:`Runner.read` returned). The server counted its busy slots between the two:
    the balancer uses the span to tell its own requests that started or finished
    meanwhile from load that came from elsewhere."""

    status: ServerStatus
    began: float
    ended: float | None = None


class Runner(abc.ABC):
    """Reads one kind of server. One instance per agent; it may keep what it read
    last (a model list, a schedule) between reads.

    Subclasses set :attr:`name` (the ``--runner`` value) and :attr:`apis`, and are
    registered in :data:`corral.agent.runners.RUNNERS`.
    """

    name: ClassVar[str]
    apis: ClassVar[tuple[str, ...]]
    """The API families the server answers (``openai``, ``llamacpp``, ``ollama``); the
    balancer sends a route only to servers that answer its family
    (:mod:`corral.core.endpoints`)."""
    ready_path: ClassVar[str] = "/health"
    """What a supervisor polls while the server starts (200: it is up), when the agent
    runs the server from a command line (:class:`corral.agent.supervisor.CommandSettings`)."""
    default_concurrency: ClassVar[int] = 1
    """Slots reported when :attr:`RunnerOptions.concurrency` is not given: the
    server's own documented default."""

    def __init__(self, options: RunnerOptions | None = None) -> None:
        self.options = options or RunnerOptions()

    @property
    def concurrency(self) -> int:
        """The slots this server has, from configuration (runners without slots)."""
        return self.options.concurrency or self.default_concurrency

    @abc.abstractmethod
    async def read(self, get: Get, clock: Clock) -> Reading:
        """Read the server once (what the schedule allows) and say what it is."""

    def next_read_in(self, now: float) -> float:
        """Seconds until a read would learn something new (``inf``: no sooner than the
        agent's own poll interval)."""
        return math.inf

    def forget(self) -> None:  # noqa: B027 - a hook; most runners keep nothing
        """The server is down or restarting: read everything anew next time."""

    @abc.abstractmethod
    async def in_flight(self, get: Get, clock: Clock) -> int | None:
        """Requests the server runs now, from anywhere, for a drain before a restart;
        ``None``: it cannot tell (the drain then ends). May wait first, so that calling
        it in a loop reads at a pace the server bears."""

    def __repr__(self) -> str:
        return f"<Runner {self.name} apis={','.join(self.apis)}>"


# ----------------------------------------------------------- shared interpretation
def message_of(fetched: Fetched) -> str:
    """The error message in a server's answer (OpenAI's ``{"error": {"message"}}``,
    a plain ``{"error": "..."}``, or the body), at most 300 characters."""
    body = fetched.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))[:300]
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])[:300]
    return str(body)[:300] if body is not None else ""


def status_with(condition: Condition, code: str, message: str, **kw: Any) -> ServerStatus:
    """A status with one issue."""
    return ServerStatus(condition=condition, issues=[IssueInfo(code, message)], **kw)


def failure(
    endpoint: str, fetched: Fetched, key_hint: str = "--llamacpp-api-key"
) -> ServerStatus | None:
    """The status to report when ``fetched`` failed, or ``None`` if it is fine."""
    if fetched.error is not None and fetched.status == 0:
        return status_with(Condition.UNREACHABLE, "unreachable", f"{endpoint}: {fetched.error}")
    if fetched.status == 401:
        return status_with(
            Condition.UNAUTHORIZED,
            "api_key_rejected",
            f"{endpoint} answered 401: the API key is missing or wrong ({key_hint})",
        )
    if fetched.error is not None:
        return status_with(Condition.BAD_RESPONSE, "bad_response", f"{endpoint}: {fetched.error}")
    if fetched.status != 200:
        return status_with(
            Condition.ERROR,
            "http_error",
            f"{endpoint} answered {fetched.status}: {message_of(fetched)}",
        )
    return None


def openai_model_ids(models: Fetched) -> list[str]:
    """The ids in an OpenAI ``/v1/models`` answer (``{"data": [{"id": ...}]}``), in
    order; ``[]`` when it is not one."""
    if not models.ok or not isinstance(models.body, dict):
        return []
    data = models.body.get("data")
    if not isinstance(data, list):
        return []
    return [
        item["id"][:1024]
        for item in data
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]
    ]


def bounded(value: Any) -> Any:
    """``value`` (decoded JSON) whole, with texts longer than :data:`MAX_TEXT` trimmed,
    so one odd answer cannot make every report huge. Non-objects become ``{}``."""
    if not isinstance(value, dict):
        return {}
    return _trim(value)


def _trim(value: Any) -> Any:
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, dict):
        return {key: _trim(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_trim(item) for item in value]
    return value
