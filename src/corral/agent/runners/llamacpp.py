"""The ``llamacpp`` runner: what a llama-server answers, and when to read what.

:class:`LlamaCppRunner` fetches ``/health``, ``/props``, ``/slots``, ``/v1/models``
and ``/lora-adapters`` and hands the raw results to :func:`interpret` (pure: responses
in, a status out), which recognises the cases operators need to see in words:

========================  =========================================================
what the server did       what the agent reports
========================  =========================================================
connection failed         ``unreachable``, with the error
``/health`` 503           ``loading`` (llama-server says "Loading model")
401 on any endpoint       ``unauthorized``: the API key is missing or wrong
``/slots`` 501            ``ready`` with issue ``slots_disabled`` (slots counted by
                          the balancer's own reservations only)
not llama-server's JSON   ``bad_response``, with what was wrong
anything else non-200     ``error``, with the status and message
========================  =========================================================

A balancer answers these endpoints in the same format, so an agent can watch a
balancer (a tree of balancers).

When to read what (:class:`ReadSchedule`)
-----------------------------------------
Watching a server must never change how it behaves. One read does: ``/slots``.
llama-server answers it through its task queue, and every task result wakes every
HTTP handler that waits on that queue. A handler waiting for a non-streamed
generation checks whether its client left only when its wait of
``HTTP_POLLING_SECONDS`` (1 s, ``tools/server/server-context.cpp``) ends with no
result at all; each wake starts a new second. Read ``/slots`` every 0.5 s and that
second never ends: a client that gives up is never noticed, and its slot generates
until ``n_predict`` or the context runs out. ``/metrics`` goes through the same
queue (and also resets the gauges that the server averages between two scrapes).
``/health``, ``/props`` and ``/v1/models`` are answered without a task and are safe
at any rate. The figures are in docs/llamacpp.md ("Cancellation"), measured with
``benchmarks/agent_reads.py``.

So the agent reads:

- ``/health`` every ``poll_interval`` (0.5 s): crashes, restarts and loading are
  seen at once;
- ``/props`` at the same rate (its changing fields, such as ``is_sleeping``, stay
  current), and ``/v1/models`` and ``/lora-adapters`` (the LoRA adapters it loaded,
  each reported by name: :func:`adapters_of`) once per start of the server and on a
  change of model;
- ``/slots`` only ``slots_gap`` seconds (1.25 s) after its previous answer arrived,
  never sooner, by anyone in the agent (the monitor, a balancer's refresh, a drain).
  The server posted that answer before the agent got it, and posts the next one
  after the agent asks, so the server sees a quiet stretch longer than its 1 s wait:
  every waiting handler wakes once, checks its client, and an abandoned request is
  cancelled at most ``slots_gap`` seconds after its client left (1 s on a server
  nobody watches). Busy slots are reported at most about 1.3 s late; the balancer
  counts its own requests at once and uses the report only for load from elsewhere.
  Not while ``/props`` says the server sleeps: a ``/slots`` read wakes it.
- while the last ``/slots`` answer showed every slot idle, ``/slots`` only every
  ``idle_interval`` (30 s), or never (``--idle-slots-interval 0``, and the default in
  supervisor mode when the server runs with ``--sleep-idle-seconds``). A ``/slots``
  read is a task, and llama-server counts tasks as activity: read every 1.25 s, an
  idle server would never fall asleep. The balancer counts its own requests at once,
  so an idle server's stale report costs nothing but a late view of requests that
  reach it from elsewhere.

``/metrics`` is never read.

Router mode (llama.cpp's ``--models-dir``/``--models-preset``: one server, many
models, each loaded on demand) is told by ``/props`` (``"role": "router"``); then
the agent reads ``/models`` every round instead of ``/v1/models`` and reads the
``/slots`` of each loaded model on the same schedule, without ever loading or
waking one (:mod:`corral.agent.runners._router`).
"""

from __future__ import annotations

import asyncio
import math
from typing import ClassVar

from corral.agent.runners._router import interpret_router, is_router, loaded, slots_path
from corral.agent.runners.base import (
    Clock,
    Fetched,
    Get,
    Reading,
    Runner,
    RunnerOptions,
    bounded,
    failure,
    message_of,
    openai_model_ids,
    status_with,
)
from corral.core.fleet import Condition
from corral.protocol.messages import IssueInfo, LoraAdapterInfo, ServerStatus

SERVER_WAIT = 1.0
"""Seconds llama-server waits on its result queue before it checks whether a client
left (``HTTP_POLLING_SECONDS`` in llama.cpp's ``tools/server/server-context.cpp``)."""

APIS = ("openai", "llamacpp")
"""llama-server answers OpenAI's routes and its own (``/completion``, ``/slots``...)."""


class ReadSchedule:
    """When the agent may read ``/slots``. Pure: times in, waits out.

    Times are seconds on one monotonic clock (the agent's event loop). See the module
    docstring for why ``/slots`` needs a quiet gap, and why an idle server is read
    rarely.

    Args:
        slots_gap: Seconds from one ``/slots`` answer to the next ``/slots`` request;
            must exceed :data:`SERVER_WAIT` (else ``ValueError``).
        idle_interval: Seconds from a ``/slots`` answer that showed every slot idle to
            the monitor's next read; ``None``: none while it stays idle (a server with
            ``--sleep-idle-seconds`` then falls asleep). Must not be below
            ``slots_gap`` (else ``ValueError``).
    """

    def __init__(self, slots_gap: float = 1.25, idle_interval: float | None = 30.0) -> None:
        if not slots_gap > SERVER_WAIT:
            raise ValueError(
                f"slots_gap must exceed {SERVER_WAIT:g} s (llama-server's wait for a "
                f"client that left); got {slots_gap!r}"
            )
        if idle_interval is not None and idle_interval < slots_gap:
            raise ValueError(f"idle_interval must be at least slots_gap; got {idle_interval!r}")
        self.slots_gap = slots_gap
        self.idle_interval = idle_interval
        self._slots_answered = -math.inf  # when the last /slots answer arrived
        self._slots_asking = False  # a /slots read is under way
        self._idle = False  # the last answer showed every slot idle

    def slots_wait(self, now: float) -> float:
        """Seconds until ``/slots`` may be asked at all (0: now), for reads that must
        happen (a drain before a restart). ``inf`` while a read of it is under way (its
        answer starts the next gap)."""
        if self._slots_asking:
            return math.inf
        return max(0.0, self._slots_answered + self.slots_gap - now)

    def slots_due(self, now: float) -> float:
        """Seconds until the monitor's next ``/slots`` read (0: now; ``inf``: not while
        the server stays idle)."""
        if not self._idle:
            return self.slots_wait(now)
        if self._slots_asking or self.idle_interval is None:
            return math.inf
        return max(0.0, self._slots_answered + self.idle_interval - now)

    def slots_asked(self, now: float) -> None:
        """A ``/slots`` request goes out now. Raises ``ValueError`` if it is too soon."""
        wait = self.slots_wait(now)
        if wait > 0:
            raise ValueError(f"/slots asked {wait:.3f} s too soon")
        self._slots_asking = True

    def slots_answered(self, now: float, *, idle: bool = False) -> None:
        """The ``/slots`` read ended now (answered or failed): the gap starts. ``idle``:
        the answer showed every slot idle."""
        self._slots_asking = False
        self._slots_answered = now
        self._idle = idle

    def __repr__(self) -> str:
        idle = "never" if self.idle_interval is None else f"{self.idle_interval:g} s"
        return (
            f"<ReadSchedule /slots {self.slots_gap:g} s after answer, {idle} when idle"
            f"{' (idle)' if self._idle else ''}{' (asking)' if self._slots_asking else ''}>"
        )


def adapter_name(path: str, names: dict[str, str] | None = None) -> str:
    """What clients call the adapter loaded from ``path``: the name given for that path
    (supervisor mode's ``--lora NAME=PATH``), else the file's stem
    (``/models/sql-v2.gguf`` -> ``sql-v2``)."""
    if names and path in names:
        return names[path]
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base[: -len(".gguf")] if base.lower().endswith(".gguf") else base
    return stem or path


def adapters_of(
    fetched: Fetched | None, names: dict[str, str] | None = None
) -> list[LoraAdapterInfo]:
    """The adapters in a ``/lora-adapters`` answer (a list of ``{id, path, scale}``),
    named by :func:`adapter_name`. Not read, failed (a server without the endpoint) or
    malformed: none. Entries without an integer id or a path are skipped, and a name
    already taken keeps its first adapter."""
    if fetched is None or not fetched.ok or not isinstance(fetched.body, list):
        return []
    out: dict[str, LoraAdapterInfo] = {}
    for entry in fetched.body:
        if not isinstance(entry, dict):
            continue
        ident, path, scale = entry.get("id"), entry.get("path"), entry.get("scale", 0.0)
        if type(ident) is not int or ident < 0 or not isinstance(path, str) or not path:
            continue
        name = adapter_name(path, names)[:256]
        scale = float(scale) if isinstance(scale, int | float) else 0.0
        out.setdefault(name, LoraAdapterInfo(name, ident, path[:4096], scale))
    return list(out.values())


def interpret(
    health: Fetched,
    props: Fetched | None = None,
    slots: Fetched | None = None,
    models: Fetched | None = None,
    adapters: list[LoraAdapterInfo] | None = None,
) -> ServerStatus:
    """Turn the server's answers into one :class:`ServerStatus`.

    ``props``, ``slots`` and ``models`` are ``None`` when not fetched (the server is
    not healthy, so the agent did not ask); ``adapters`` are its LoRA adapters
    (:func:`adapters_of`).
    """
    if health.status == 503:
        message = message_of(health) or "server unavailable"
        if "loading" in message.lower():
            return status_with(Condition.LOADING, "loading", message)
        return status_with(Condition.ERROR, "unavailable", f"/health answered 503: {message}")
    failed = failure("/health", health)
    if failed is not None:
        return failed
    if props is None or slots is None:
        return ServerStatus(condition=Condition.LOADING)

    failed = failure("/props", props)
    if failed is not None:
        return failed
    if not isinstance(props.body, dict):
        return status_with(Condition.BAD_RESPONSE, "bad_response", "/props is not a JSON object")
    total = props.body.get("total_slots")
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        return status_with(
            Condition.BAD_RESPONSE,
            "bad_response",
            f"/props has no valid total_slots (got {total!r})",
        )

    issues: list[IssueInfo] = []
    processing = 0
    if slots.status == 501:
        issues.append(
            IssueInfo(
                "slots_disabled",
                "the server's /slots endpoint is disabled; start llama-server with --slots. "
                "Busy slots are counted from the balancer's own requests only.",
            )
        )
    else:
        failed = failure("/slots", slots)
        if failed is not None:
            return failed
        if not isinstance(slots.body, list) or not all(isinstance(s, dict) for s in slots.body):
            return status_with(
                Condition.BAD_RESPONSE, "bad_response", "/slots is not a list of objects"
            )
        if not all(isinstance(s.get("is_processing"), bool) for s in slots.body):
            return status_with(
                Condition.BAD_RESPONSE,
                "bad_response",
                "/slots entries lack a boolean is_processing",
            )
        processing = sum(1 for s in slots.body if s["is_processing"])
        total = len(slots.body)

    model: str | None = None
    if models is not None:
        ids = openai_model_ids(models)
        model = ids[0] if ids else None
        if model is None:
            issues.append(IssueInfo("no_model_id", "/v1/models did not name a model"))

    return ServerStatus(
        condition=Condition.READY,
        model=model,
        slots_total=total,
        slots_processing=min(processing, total),
        issues=issues,
        props=bounded(props.body),
        model_list=bounded(models.body) if models is not None and models.ok else {},
        adapters=adapters or [],
    )


class LlamaCppRunner(Runner):
    """Reads a llama-server (``--runner llamacpp``, the default) on the schedule the
    module docstring explains: ``/health`` and ``/props`` every round, ``/v1/models``
    once per start and change of model, ``/slots`` after a quiet gap only."""

    name: ClassVar[str] = "llamacpp"
    apis: ClassVar[tuple[str, ...]] = APIS

    def __init__(self, options: RunnerOptions | None = None) -> None:
        super().__init__(options)
        self.schedule = ReadSchedule(
            self.options.slots_gap, self.options.idle_slots_interval or None
        )
        self._models: Fetched | None = None
        self._models_of: str | None = None  # the model_path /v1/models was read for
        self._adapters: list[LoraAdapterInfo] = []  # read with /v1/models
        self.adapter_names: dict[str, str] = {}
        """Adapter file path -> the name to report it by (supervisor mode's
        ``--lora NAME=PATH``); other adapters are called by their file's stem."""
        self._ready = False  # the last reading said ready
        self._slots: Fetched | None = None  # the last /slots read, None: read anew
        self._slots_at = 0.0  # when that read began
        self._slots_end = 0.0  # when its answer came
        self._slots_lock = asyncio.Lock()
        self._router_slots: dict[str, Fetched] | None = None  # router mode: model -> /slots
        self._router_loaded: list[str] = []  # router mode: the models loaded last read

    def forget(self) -> None:
        self._slots = None  # what comes back may be another server
        self._models = None  # down or loading: read it again once it is back
        self._router_slots = None

    async def read(self, get: Get, clock: Clock) -> Reading:
        began = clock()
        health = await get("/health")
        if not health.ok:
            self.forget()
            self._ready = False
            return Reading(interpret(health), began)
        # /props every round (answered without a task: safe at any rate, and it keeps
        # changing fields such as is_sleeping current); /v1/models once per start of
        # the server and on a change of model; /slots on its schedule, and not while
        # the server sleeps (a /slots read wakes it).
        props = await get("/props")
        if is_router(props):
            return await self._read_router(get, clock, props)
        self._router_slots = None
        if self._models is None or not self._ready or _model_path(props) != self._models_of:
            self._models = await get("/v1/models")
            self._models_of = _model_path(props)
            self._adapters = adapters_of(await get("/lora-adapters"), self.adapter_names)
        if self._slots is None or (not _sleeping(props) and self.schedule.slots_due(clock()) == 0):
            await self.read_slots(get, clock)
        assert self._slots is not None
        status = interpret(health, props, self._slots, self._models, self._adapters)
        self._ready = status.condition == Condition.READY
        return Reading(status, self._slots_at, self._slots_end)

    async def _read_router(self, get: Get, clock: Clock, props: Fetched) -> Reading:
        models = await get("/models")  # the router's own answer: no task, safe
        self._router_loaded = loaded(models)
        if self._router_slots is None or self.schedule.slots_due(clock()) == 0:
            await self._read_router_slots(get, clock)
        status = interpret_router(props, models, self._router_slots)
        self._ready = status.condition == Condition.READY
        return Reading(status, self._slots_at)

    async def _read_router_slots(self, get: Get, clock: Clock) -> dict[str, Fetched]:
        """``/slots`` of each loaded model (never one that is not: it would load)."""
        async with self._slots_lock:
            wait = self.schedule.slots_wait(clock())
            if wait > 0:
                await asyncio.sleep(wait)
            started = clock()
            self.schedule.slots_asked(started)
            answers: dict[str, Fetched] = {}
            try:
                for model in self._router_loaded:
                    answers[model] = await get(slots_path(model))
            finally:
                idle = all(_all_idle(answer) for answer in answers.values())
                self.schedule.slots_answered(clock(), idle=idle)
            self._router_slots, self._slots_at = answers, started
            self._slots = Fetched(status=200, body=[])  # read once: next_read_in applies
            return answers

    async def read_slots(self, get: Get, clock: Clock) -> Fetched:
        """Read ``/slots`` as soon as the schedule allows (waiting for it if need be)."""
        async with self._slots_lock:
            wait = self.schedule.slots_wait(clock())
            if wait > 0:
                await asyncio.sleep(wait)
            started = clock()
            self.schedule.slots_asked(started)
            fetched = Fetched(error="not read")
            answered = started
            try:
                fetched = await get("/slots")
            finally:
                answered = clock()
                self.schedule.slots_answered(answered, idle=_all_idle(fetched))
            # llama-server counted its busy slots somewhere between the two, when its
            # task queue got to the read (between two batches): the balancer needs both
            self._slots, self._slots_at, self._slots_end = fetched, started, answered
            return fetched

    def next_read_in(self, now: float) -> float:
        """As soon as ``/slots`` may be read again (busy slots reported early)."""
        if self._slots is None:
            return math.inf
        return self.schedule.slots_due(now)

    async def in_flight(self, get: Get, clock: Clock) -> int | None:
        """Busy slots from ``/slots``, no sooner than the schedule allows."""
        if self._router_slots is not None:  # router mode: every loaded model's
            answers = await self._read_router_slots(get, clock)
            if not all(a.ok and isinstance(a.body, list) for a in answers.values()):
                return None
            return sum(
                1
                for a in answers.values()
                for s in a.body
                if isinstance(s, dict) and s.get("is_processing")
            )
        slots = await self.read_slots(get, clock)
        if not slots.ok or not isinstance(slots.body, list):
            return None
        return sum(1 for s in slots.body if isinstance(s, dict) and s.get("is_processing"))


def _all_idle(slots: Fetched) -> bool:
    """Whether a ``/slots`` answer shows every slot idle."""
    body = slots.body
    return (
        slots.ok
        and isinstance(body, list)
        and all(isinstance(s, dict) and s.get("is_processing") is False for s in body)
    )


def _sleeping(props: Fetched) -> bool:
    """Whether ``/props`` says the server sleeps (``--sleep-idle-seconds``)."""
    return props.ok and isinstance(props.body, dict) and props.body.get("is_sleeping") is True


def _model_path(props: Fetched) -> str | None:
    body = props.body
    path = body.get("model_path") if props.ok and isinstance(body, dict) else None
    return path if isinstance(path, str) else None
