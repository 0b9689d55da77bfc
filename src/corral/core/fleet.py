"""Fleet state: the agents, their slots, and the balancer's own reservations.

Theory of operation
-------------------
Rule 1: everything that decides whether a server may get a request lives here.

Each agent reports what its llama-server says: a condition (ready, loading,
unreachable...), the model, ``slots_total`` and ``slots_processing``. The balancer
adds what only it knows: ``reserved``, the slot requests it has sent the server and
not yet seen finish. A report cannot tell the balancer's requests from requests that
reached the server some other way, so the balancer works out how many of its own were
in flight when the agent read the server (``reserved_at_report``) and estimates::

    external = max(0, slots_processing - reserved_at_report)
    free     = max(0, slots_total - reserved - external)

With no traffic from elsewhere, ``external`` is 0 and ``reserved <= slots_total``
always holds, so a server never gets more concurrent requests than it has slots. A
finished request frees its slot at once (``reserved`` drops), without waiting for a
report.

When was the server read? A report says how long ago the agent started reading
(``Report.read_at``, on the balancer's clock). The fleet keeps a short log of each
agent's reservations and releases, so ``reserved_at_report`` is the number in flight
at that moment: requests that finished while the agent was reading (and the report
travelling) still count as ours, and do not show up as phantom external load that
would leave a slot idle until the next report. A report that says nothing of its age
(or is older than the log) counts what is in flight when it arrives; then a stale
report can only overstate ``external``: slots stay unused for a while, never
overloaded.

An agent can be picked when it is *routable*: its server reports ready, its
heartbeats are on time, and no request to it failed since its last ready report
("set aside"). Routable agents with a free slot sit in a per-model index of buckets
keyed by free slots, so the policy finds the agent with the most free slots without
scanning the fleet; ties rotate because a touched agent goes to the back of its
bucket.

Every method is a state transition. An illegal one raises :class:`FleetError` and
changes nothing.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


class FleetError(Exception):
    """An illegal transition (unknown agent, double registration, no free slot...)."""


class Condition(enum.Enum):
    """What an agent says about its llama-server."""

    READY = "ready"
    LOADING = "loading"  # llama-server answers 503 while it loads the model
    UNREACHABLE = "unreachable"  # connection refused, timed out
    UNAUTHORIZED = "unauthorized"  # the API key was rejected (401)
    BAD_RESPONSE = "bad_response"  # answered, but not in llama-server's format
    ERROR = "error"  # anything else (5xx...)


class AgentState(enum.Enum):
    """What the balancer makes of an agent, as operators see it."""

    READY = "ready"
    LOADING = "loading"
    ERROR = "error"  # the server is not usable; the agent's issues say why
    UNHEALTHY = "unhealthy"  # the agent missed its heartbeats
    DRAINING = "draining"  # finishing its requests before a change of settings


@dataclass(frozen=True, slots=True)
class Issue:
    """A problem worth showing an operator, in words."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Report:
    """One status report from an agent, already validated."""

    condition: Condition
    model: str | None = None
    slots_total: int = 0
    slots_processing: int = 0
    issues: tuple[Issue, ...] = ()
    props: dict[str, Any] = field(default_factory=dict)
    model_list: dict[str, Any] = field(default_factory=dict)  # the server's /v1/models
    supervisor: dict[str, Any] | None = None  # shown to operators; not used to route
    applied_generation: int = 0  # which desired state it runs (supervisor mode)
    failed_generation: int | None = None
    applying: bool = False  # the agent is draining or restarting its server
    read_at: float | None = None
    """When the agent started reading the server, on the balancer's clock (None: unknown)."""

    def __post_init__(self) -> None:
        if self.slots_total < 0 or self.slots_processing < 0:
            raise ValueError("slot counts cannot be negative")


@dataclass(eq=False, slots=True)
class Agent:
    """One agent and its server, as the balancer sees it."""

    id: str
    name: str
    address: str  # base URL where the balancer sends requests
    api_key: str | None = field(default=None, repr=False)
    condition: Condition = Condition.LOADING
    model: str | None = None
    slots_total: int = 0
    slots_processing: int = 0
    issues: tuple[Issue, ...] = ()
    props: dict[str, Any] = field(default_factory=dict)
    model_list: dict[str, Any] = field(default_factory=dict)
    supervisor: dict[str, Any] | None = None
    applied_generation: int = 0
    failed_generation: int | None = None
    applying: bool = False
    draining: bool = False  # the balancer sends it nothing: a change is coming
    drain_started: float = 0.0
    apply_sent: int = 0  # generation of the last Apply sent to it
    reserved: int = 0
    reserved_at_report: int = 0
    # (time, +1 reserve / -1 release), newer than ``_log_from``: for Report.read_at
    _log: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    _log_from: float = -math.inf
    registered_at: float = 0.0
    last_seen: float = 0.0
    last_report: float = 0.0
    heartbeat_ok: bool = True
    set_aside: bool = False
    failures: int = 0
    _slot: tuple[str | None, int] | None = None  # where it sits in the index

    @property
    def external(self) -> int:
        """Slots estimated busy with requests that did not come through us."""
        return max(0, self.slots_processing - self.reserved_at_report)

    @property
    def free(self) -> int:
        return max(0, self.slots_total - self.reserved - self.external)

    @property
    def busy(self) -> int:
        return self.slots_total - self.free

    @property
    def routable(self) -> bool:
        return (
            self.condition is Condition.READY
            and self.heartbeat_ok
            and not self.set_aside
            and not self.draining
            and not self.applying
        )

    @property
    def supervised(self) -> bool:
        return self.supervisor is not None

    @property
    def state(self) -> AgentState:
        if not self.heartbeat_ok:
            return AgentState.UNHEALTHY
        if self.draining or self.applying:
            return AgentState.DRAINING
        if self.condition is Condition.READY:
            return AgentState.READY
        if self.condition is Condition.LOADING:
            return AgentState.LOADING
        return AgentState.ERROR

    def __repr__(self) -> str:
        flags = " set-aside" if self.set_aside else ""
        return (
            f"<Agent {self.name} {self.state.name}{flags} slots {self.busy}/{self.slots_total}"
            f" busy (reserved {self.reserved}) model={self.model}>"
        )


class _Pool:
    """The routable agents of one model with a free slot, bucketed by free slots."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        # free slots -> agents, in insertion order (dicts keep it; used as ordered sets)
        self.buckets: dict[int, dict[str, Agent]] = {}

    def add(self, agent: Agent, free: int) -> None:
        self.buckets.setdefault(free, {})[agent.id] = agent

    def remove(self, agent_id: str, free: int) -> None:
        bucket = self.buckets[free]
        del bucket[agent_id]
        if not bucket:
            del self.buckets[free]

    def __bool__(self) -> bool:
        return bool(self.buckets)


class Fleet:
    """All agents known to one balancer. Pure state: no I/O, time passed in."""

    def __init__(self) -> None:
        self._agents: dict[str, Agent] = {}
        self._pools: dict[str | None, _Pool] = {}
        # model (None: the server named none) -> number of agents reporting it
        self._model_refs: dict[str | None, int] = {}
        self._models: list[str] | None = None  # sorted named models, cached
        self.version = 0  # bumped on every change, for watchers
        self.membership = 0
        """Bumped when agents join, leave or drain, or a report changes what a rollout
        looks at (condition, model, generations, applying): not per request, and not for
        busy-slot counts, so a rollout's scan of the fleet stays off the hot paths."""

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._agents)

    def __iter__(self) -> Iterator[Agent]:
        return iter(self._agents.values())

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._agents

    def get(self, agent_id: str) -> Agent:
        try:
            return self._agents[agent_id]
        except KeyError:
            raise FleetError(f"unknown agent {agent_id!r}") from None

    def models(self) -> list[str]:
        """Models named by any registered agent (ready or not), sorted."""
        if self._models is None:
            self._models = sorted(m for m in self._model_refs if m is not None)
        return self._models

    def has_unnamed_model(self) -> bool:
        """Whether some agent's server did not say which model it runs."""
        return None in self._model_refs

    def candidates(self, models: Iterable[str | None]) -> Iterator[Agent]:
        """Routable agents of these models with a free slot, most free slots first.

        Cost is proportional to the number of distinct free-slot counts, not to the
        size of the fleet. Stop iterating before changing the fleet.
        """
        pools = [p for p in (self._pools.get(m) for m in models) if p]
        if len(pools) == 1:
            buckets = pools[0].buckets
            for free in sorted(buckets, reverse=True):
                yield from buckets[free].values()
            return
        levels = sorted({free for p in pools for free in p.buckets}, reverse=True)
        for free in levels:
            for pool in pools:
                bucket = pool.buckets.get(free)
                if bucket:
                    yield from bucket.values()

    def has_free_slot(self) -> bool:
        return any(self._pools.values())

    def totals(self) -> tuple[int, int]:
        """``(slots_idle, slots_processing)`` over ready agents."""
        idle = processing = 0
        for agent in self._agents.values():
            if agent.routable:
                idle += agent.free
                processing += agent.busy
        return idle, processing

    def __repr__(self) -> str:
        idle, processing = self.totals()
        ready = sum(1 for a in self._agents.values() if a.routable)
        return (
            f"<Fleet [Agents: {len(self._agents)}, {ready} ready | "
            f"Slots: {processing} busy, {idle} idle | Models: {', '.join(self.models()) or '-'}]>"
        )

    # -------------------------------------------------------------- transitions
    def register(
        self, agent_id: str, *, name: str, address: str, api_key: str | None, now: float
    ) -> Agent:
        if agent_id in self._agents:
            raise FleetError(f"agent {agent_id!r} is already registered")
        agent = Agent(
            id=agent_id,
            name=name,
            address=address,
            api_key=api_key,
            registered_at=now,
            last_seen=now,
        )
        self._agents[agent_id] = agent
        self._ref_model(None)
        self.membership += 1
        self._changed()
        return agent

    def report(self, agent_id: str, report: Report, now: float) -> Agent:
        """Apply a status report. A ready report clears "set aside"."""
        agent = self.get(agent_id)
        self._unindex(agent)
        before = _rollout_view(agent)
        if agent.model != report.model:
            self._unref_model(agent.model)
            self._ref_model(report.model)
        agent.condition = report.condition
        agent.model = report.model
        agent.slots_total = report.slots_total
        agent.slots_processing = report.slots_processing
        agent.issues = report.issues
        agent.supervisor = report.supervisor
        agent.applied_generation = report.applied_generation
        agent.failed_generation = report.failed_generation
        agent.applying = report.applying
        if report.props:
            agent.props = report.props
        if report.model_list:
            agent.model_list = report.model_list
        agent.reserved_at_report = _in_flight_at(agent, report.read_at)
        agent.last_seen = agent.last_report = now
        agent.heartbeat_ok = True
        if report.condition is Condition.READY:
            agent.set_aside = False
        if _rollout_view(agent) != before:
            self.membership += 1
        self._index(agent)
        self._changed()
        return agent

    def heartbeat(self, agent_id: str, now: float) -> bool:
        """Note that the agent is alive; ``True`` if that changed its state."""
        agent = self.get(agent_id)
        agent.last_seen = now
        if agent.heartbeat_ok:
            return False
        agent.heartbeat_ok = True
        self._reindex(agent)
        self._changed()
        return True

    def remove(self, agent_id: str) -> Agent:
        agent = self.get(agent_id)
        self._unindex(agent)
        self._unref_model(agent.model)
        del self._agents[agent_id]
        self.membership += 1
        self._changed()
        return agent

    def reserve(self, agent_id: str, now: float | None = None) -> Agent:
        """Take one slot on this agent for a request the balancer is about to send.

        ``now`` (the balancer's clock) lets later reports place it in time."""
        agent = self.get(agent_id)
        if not agent.routable:
            raise FleetError(f"cannot reserve on {agent!r}: not routable")
        if agent.free < 1:
            raise FleetError(f"cannot reserve on {agent!r}: no free slot")
        self._unindex(agent)
        agent.reserved += 1
        _log(agent, now, +1)
        self._index(agent)
        self._changed()
        return agent

    def release(self, agent_id: str, now: float | None = None) -> Agent | None:
        """Give back a slot taken by :meth:`reserve`. ``None`` if the agent has left."""
        agent = self._agents.get(agent_id)
        if agent is None:
            return None
        if agent.reserved < 1:
            raise FleetError(f"release on {agent!r} without a reservation")
        self._unindex(agent)
        agent.reserved -= 1
        _log(agent, now, -1)
        # reserved_at_report stays: the last report still counts this request as busy
        # if it had reached the server, and the two cancel out in ``external``.
        self._index(agent)
        self._changed()
        return agent

    def set_aside(self, agent_id: str) -> Agent | None:
        """A request to this agent's server failed: send nothing until it reports ready."""
        agent = self._agents.get(agent_id)
        if agent is None:
            return None
        agent.failures += 1
        if not agent.set_aside:
            agent.set_aside = True
            self._reindex(agent)
            self._changed()
        return agent

    def drain(self, agent_id: str, now: float) -> Agent:
        """Send this agent nothing more: its settings are about to change."""
        agent = self.get(agent_id)
        if agent.draining:
            raise FleetError(f"{agent!r} is already draining")
        agent.draining = True
        agent.drain_started = now
        self.membership += 1
        self._reindex(agent)
        self._changed()
        return agent

    def undrain(self, agent_id: str) -> Agent:
        agent = self.get(agent_id)
        if agent.draining:
            agent.draining = False
            self.membership += 1
            self._reindex(agent)
            self._changed()
        return agent

    def succeeded(self, agent_id: str) -> None:
        agent = self._agents.get(agent_id)
        if agent is not None:
            agent.failures = 0

    def expire(self, now: float, timeout: float) -> list[Agent]:
        """Mark agents not heard from for ``timeout`` seconds unhealthy; return them."""
        stale = [a for a in self._agents.values() if a.heartbeat_ok and now - a.last_seen > timeout]
        for agent in stale:
            agent.heartbeat_ok = False
            self._reindex(agent)
        if stale:
            self._changed()
        return stale

    # ------------------------------------------------------------------- index
    def _changed(self) -> None:
        self.version += 1

    def _ref_model(self, model: str | None) -> None:
        count = self._model_refs.get(model, 0)
        self._model_refs[model] = count + 1
        if not count:
            self._models = None

    def _unref_model(self, model: str | None) -> None:
        left = self._model_refs[model] - 1
        if left:
            self._model_refs[model] = left
        else:
            del self._model_refs[model]
            self._models = None

    def _index(self, agent: Agent) -> None:
        free = agent.free
        if agent.routable and free > 0:
            self._pools.setdefault(agent.model, _Pool()).add(agent, free)
            agent._slot = (agent.model, free)

    def _unindex(self, agent: Agent) -> None:
        if agent._slot is not None:
            model, free = agent._slot
            pool = self._pools[model]
            pool.remove(agent.id, free)
            if not pool:
                del self._pools[model]
            agent._slot = None

    def _reindex(self, agent: Agent) -> None:
        self._unindex(agent)
        self._index(agent)

    def check_index(self) -> None:
        """Assert the index matches the agents (for tests)."""
        seen = set()
        for model, pool in self._pools.items():
            for free, bucket in pool.buckets.items():
                assert bucket, "empty bucket left behind"
                for agent_id, agent in bucket.items():
                    assert self._agents.get(agent_id) is agent, f"stale {agent_id}"
                    assert agent.model == model and agent.free == free, repr(agent)
                    assert agent.routable, repr(agent)
                    seen.add(agent_id)
        for agent in self._agents.values():
            assert (agent.id in seen) == (agent.routable and agent.free > 0), repr(agent)


def _rollout_view(agent: Agent) -> tuple[object, ...]:
    """What of an agent's report the rollout reads (see :attr:`Fleet.membership`)."""
    return (
        agent.condition,
        agent.model,
        agent.supervisor is None,
        agent.applied_generation,
        agent.failed_generation,
        agent.applying,
        agent.set_aside,
        agent.heartbeat_ok,
    )


LOG_SECONDS = 10.0
"""How long each agent's reservations and releases are remembered, for reports that
say when their reading began (a report read longer ago counts as read on arrival)."""


def _log(agent: Agent, now: float | None, delta: int) -> None:
    if now is None:  # an event at an unknown time: reads before the next known event
        agent._log.clear()  # fall back to counting on arrival
        agent._log_from = math.inf
        return
    if agent._log_from == math.inf:
        agent._log_from = now
    log = agent._log
    log.append((now, delta))
    horizon = now - LOG_SECONDS
    while log and log[0][0] < horizon:
        agent._log_from = log.popleft()[0]


def _in_flight_at(agent: Agent, read_at: float | None) -> int:
    """The balancer's requests in flight on ``agent`` at ``read_at`` (now if unknown)."""
    if read_at is None or read_at < agent._log_from:
        return agent.reserved
    after = 0
    for when, delta in reversed(agent._log):
        if when <= read_at:
            break
        after += delta
    return max(0, agent.reserved - after)
