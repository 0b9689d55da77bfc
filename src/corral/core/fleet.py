"""Fleet state: the backends (each a llama-server and its agent), their slots, and the
balancer's own reservations.

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

When was the server read? A read is not an instant: the agent asks ``/slots`` at one
time and gets the answer later (llama-server answers between two batches, so tens of
milliseconds or more under load), and the server counted its busy slots somewhere
between. A report says when the read began and ended (``Report.read_at`` and
``Report.read_end``, on the balancer's clock; an agent that says only when it began
has read no later than its report arrived). The fleet keeps a short log of each
agent's reservations and releases, and counts the most of its requests in flight at
any moment of that span::

    reserved_at_report = max(reserved(t) for t in [read_at, read_end])

Why the most? Say the server counted at some ``t`` in the span, when ``X`` requests
from elsewhere and ``O`` of ours ran on it. Each of our requests runs on the server
inside its reservation (sent after it is reserved, released after its answer ends),
so ``O <= reserved(t) <= reserved_at_report`` and::

    X - (reserved_at_report - O)  <=  external  <=  X

- ``external`` never exceeds the load from elsewhere, so a request of ours that
  started or finished while the agent read never shows up as phantom outside load,
  which would leave a slot idle (while requests wait in the buffer) until the next
  report, 1.25 s or more later. With no outside load ``external`` is exactly 0.
- It falls short of the outside load by at most ``reserved_at_report - O``: our
  requests reserved or released inside the span (at most one per log entry in it),
  plus ours on the way to or from the server at ``t``, which every estimate shares.
  Only then, and only with outside load, can the server get more requests than it
  has slots; llama-server queues the extra one, and the next report sets it right.
  The least in flight over the span would err the other way (phantom load), and
  under steady load most reads would cost an idle slot for a whole read gap.

The agent sends the span as ages, so it lands on the balancer's clock late by the
report's time on the wire (well under a millisecond on a LAN): only a request that
ends within that much of the count can still look like outside load. A report that
says nothing of when it was read (or began before the log's horizon) counts what is
in flight when it arrives.

A finished request's slot is free at once, even when the last report showed it busy:
``reserved`` drops and ``reserved_at_report`` stays, so ``external`` does not move.

Several balancers (high availability) cannot see each other's requests but through
reports, which lag. So an agent that reports to several gives each a share of its
server's slots (``slots_share``; the shares sum to ``slots_total``), and a balancer
never holds more than its share::

    free = max(0, min(slots_total - reserved - external, slots_share - reserved))

The server then never gets more requests than it has slots, whatever the lag; the
price is fragmentation (a balancer with no free share waits while the other's share
idles). When a balancer leaves, its agent gives its share to the others at once.

A backend can be picked when it is *routable*: its server reports ready, its
heartbeats are on time, and no request to it failed since its last ready report
("set aside"). Routable backends with a free slot sit in a per-model index of buckets
keyed by free slots, so the policy finds the backend with the most free slots without
scanning the fleet; ties rotate because a touched backend goes to the back of its
bucket.

**Several models per backend** (llama.cpp's router mode: one llama-server that loads
and unloads models on demand). Such a backend reports every model it can serve and
its state (:class:`ModelState`). A model loaded (or asleep: a request wakes it) is
*hot*: the backend sits in that model's index of free slots, so it competes with
single-model servers of the model on the same terms. A model it can load but has
not is *cold*: the backend is a *loader* of it (:meth:`Fleet.loaders`), asked only
when no routable backend has the model hot; the request is sent, and the router
loads the model before it answers (the slot stays reserved meanwhile). A router's
models share the backend's slot count: each model instance has ``--parallel`` slots
and the balancer holds at most that many across all of them, so no instance is ever
overloaded, at the price of idle slots while several models are busy at once.

Every method is a state transition. An illegal one raises :class:`FleetError` and
changes nothing.

Those who keep their own view of the backends (the prefix index) subscribe and are
told what happens as events (:mod:`corral.core.events`): a request dispatched or
finished, a server that left, restarted (its agent says it came back ready, or its
supervisor restarted it) or changed model.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from corral.core.endpoints import DEFAULT_APIS
from corral.core.events import Dispatched, Finished, FleetEvent, Reset, Timings


class FleetError(Exception):
    """An illegal transition (unknown backend, double registration, no free slot...)."""


class Condition(enum.StrEnum):
    """What an agent says about its llama-server: one type for the fleet state and the
    agent protocol (where it travels as its value, ``"ready"``...)."""

    READY = "ready"
    LOADING = "loading"  # llama-server answers 503 while it loads the model
    UNREACHABLE = "unreachable"  # connection refused, timed out
    UNAUTHORIZED = "unauthorized"  # the API key was rejected (401)
    BAD_RESPONSE = "bad_response"  # answered, but not in llama-server's format
    ERROR = "error"  # anything else (5xx...)


class ModelState(enum.StrEnum):
    """A model's state on a server that loads models on demand (llama.cpp's router
    mode, ``GET /models``'s ``status.value``); also on the wire."""

    LOADED = "loaded"
    SLEEPING = "sleeping"  # loaded, asleep (--sleep-idle-seconds): a request wakes it
    LOADING = "loading"
    UNLOADED = "unloaded"  # on disk: the server loads it when asked

    @property
    def hot(self) -> bool:
        """Whether a request is answered without loading the model first."""
        return self is ModelState.LOADED or self is ModelState.SLEEPING


class BackendState(enum.Enum):
    """What the balancer makes of a backend, as operators see it."""

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
class Adapter:
    """A LoRA adapter a server has loaded (llama-server ``--lora``, listed by its
    ``GET /lora-adapters``).

    Attributes:
        name: what clients ask for (``"model": name``): the file's stem, or the name
            given in supervisor mode (``--lora NAME=PATH``).
        id: the server's own id for it (the ``id`` of a request's ``lora`` entries).
        path: the file the server loaded it from (for operators).
        scale: the scale the server applies when a request does not say (0: off).
    """

    name: str
    id: int
    path: str = ""
    scale: float = 0.0


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
    apis: frozenset[str] = DEFAULT_APIS
    """The API families the server answers (:func:`corral.core.endpoints.api_of`)."""
    runner: str | None = None  # the kind of server, for operators
    supervisor: dict[str, Any] | None = None  # shown to operators; not used to route
    applied_generation: int = 0  # which desired state it runs (supervisor mode)
    failed_generation: int | None = None
    applying: bool = False  # the agent is draining or restarting its server
    cache_ram_mib: int | None = None
    """The server's host prompt cache (``--cache-ram``), MiB; -1 unlimited, 0 off, None unknown."""
    read_at: float | None = None
    """When the agent started reading the server, on the balancer's clock (None: unknown)."""
    read_end: float | None = None
    """When that read's answer came, on the balancer's clock (None: no later than the
    report arrived). Between ``read_at`` and this, the server counted its busy slots."""
    slots_share: int | None = None
    """Slots of the server this balancer may use (its agent reports to several
    balancers and gives each a share); None: all of them."""
    models: tuple[tuple[str, ModelState], ...] = ()
    """Every model a server that loads models on demand can serve, with its state
    (llama.cpp's router mode); empty: the server serves ``model`` only."""
    models_max: int | None = None
    """How many models such a server keeps loaded at once (``--models-max``); None:
    no limit said."""
    adapters: tuple[Adapter, ...] = ()
    """The LoRA adapters the server has loaded (none: it has none, or its agent does
    not say)."""

    def __post_init__(self) -> None:
        if self.slots_total < 0 or self.slots_processing < 0:
            raise ValueError("slot counts cannot be negative")
        if self.slots_share is not None and self.slots_share < 0:
            raise ValueError("a share of slots cannot be negative")
        if self.read_end is not None and (self.read_at is None or self.read_end < self.read_at):
            raise ValueError("a read cannot end before it began")


@dataclass(eq=False, slots=True)
class Backend:
    """One backend: a llama-server and the agent that reports it, as the balancer sees
    them. Its ``id`` is the id its agent registered with (the API's agent id)."""

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
    apis: frozenset[str] = DEFAULT_APIS
    runner: str | None = None
    supervisor: dict[str, Any] | None = None
    applied_generation: int = 0
    failed_generation: int | None = None
    applying: bool = False
    cache_ram_mib: int | None = None  # host prompt cache, MiB (see Report)
    cordoned: bool = False  # the balancer sends it nothing: a change is coming
    cordoned_at: float = 0.0
    apply_sent: int = 0  # generation of the last Apply sent to it
    slots_share: int | None = None  # this balancer's share of the slots (None: all)
    adapters: tuple[Adapter, ...] = ()  # LoRA adapters its server has loaded
    running: collections.Counter[str | None] = field(default_factory=collections.Counter)
    """The balancer's requests in flight here, by adapter name (None: the base model)."""
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
    models: dict[str, ModelState] = field(default_factory=dict)
    """Router mode: every model it can serve, and its state (empty: ``model`` only)."""
    models_max: int | None = None  # router mode: models loaded at once at most
    _bucket: tuple[tuple[str | None, ...], int] | None = None  # where it sits in the index

    @property
    def serves(self) -> tuple[str | None, ...]:
        """Every model it can serve (router mode), else its one model."""
        return tuple(self.models) if self.models else (self.model,)

    @property
    def hot(self) -> tuple[str | None, ...]:
        """The models it answers without loading one first."""
        if not self.models:
            return (self.model,)
        return tuple(name for name, state in self.models.items() if state.hot)

    @property
    def room(self) -> float:
        """Models it can load before it must unload one (router mode; inf: no limit)."""
        if not self.models_max:
            return math.inf
        running = sum(1 for state in self.models.values() if state is not ModelState.UNLOADED)
        return max(0, self.models_max - running)

    def model_for(self, requested: str | None) -> str | None:
        """The model that answers a request for ``requested`` here."""
        return requested if requested is not None and requested in self.models else self.model

    @property
    def external(self) -> int:
        """Slots estimated busy with requests that did not come through us."""
        return max(0, self.slots_processing - self.reserved_at_report)

    @property
    def free(self) -> int:
        # ``external`` and max/min written out: routing reads this for every candidate
        external = self.slots_processing - self.reserved_at_report
        free = self.slots_total - self.reserved - (external if external > 0 else 0)
        share = self.slots_share
        if share is not None and share - self.reserved < free:  # never more than our share
            free = share - self.reserved
        return free if free > 0 else 0

    @property
    def busy(self) -> int:
        return self.slots_total - self.free

    def adapter(self, name: str) -> Adapter | None:
        """The loaded adapter called ``name``, or None."""
        for adapter in self.adapters:
            if adapter.name == name:
                return adapter
        return None

    @property
    def routable(self) -> bool:
        return (
            self.condition is Condition.READY
            and self.heartbeat_ok
            and not self.set_aside
            and not self.cordoned
            and not self.applying
        )

    @property
    def supervised(self) -> bool:
        return self.supervisor is not None

    @property
    def state(self) -> BackendState:
        if not self.heartbeat_ok:
            return BackendState.UNHEALTHY
        if self.cordoned or self.applying:
            return BackendState.DRAINING
        if self.condition is Condition.READY:
            return BackendState.READY
        if self.condition is Condition.LOADING:
            return BackendState.LOADING
        return BackendState.ERROR

    def __repr__(self) -> str:
        flags = " set-aside" if self.set_aside else ""
        return (
            f"<Backend {self.name} {self.state.name}{flags} slots {self.busy}/{self.slots_total}"
            f" busy (reserved {self.reserved}) model={self.model}>"
        )


class _Pool:
    """The routable backends of one model with a free slot, bucketed by free slots."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        # free slots -> backends, in insertion order (dicts keep it; used as ordered sets)
        self.buckets: dict[int, dict[str, Backend]] = {}

    def add(self, backend: Backend, free: int) -> None:
        bucket = self.buckets.get(free)
        if bucket is None:
            bucket = self.buckets[free] = {}
        bucket[backend.id] = backend

    def remove(self, backend_id: str, free: int) -> None:
        bucket = self.buckets[free]
        del bucket[backend_id]
        if not bucket:
            del self.buckets[free]

    def __bool__(self) -> bool:
        return bool(self.buckets)


class Fleet:
    """All backends known to one balancer. Pure state: no I/O, time passed in."""

    def __init__(self) -> None:
        self._backends: dict[str, Backend] = {}
        self._pools: dict[str | None, _Pool] = {}
        # model -> routable backends with it hot, any free slots (router mode and not)
        self._hot: dict[str | None, dict[str, Backend]] = {}
        # model -> backends that can load it (router mode), whatever their state
        self._cold: dict[str, dict[str, Backend]] = {}
        # model (None: the server named none) -> number of backends reporting it
        self._model_refs: dict[str | None, int] = {}
        self._models: list[str] | None = None  # sorted named models, cached
        self._seen: set[str] = set()  # every model any backend ever named
        self._seen_sorted: list[str] | None = None
        self._api_refs: collections.Counter[tuple[str | None, str]] = collections.Counter()
        """(model, API family) -> number of backends of that model that answer it."""
        self._adapter_refs: collections.Counter[tuple[str, str | None]] = collections.Counter()
        """(adapter name, model) -> number of backends of that model that have it loaded."""
        self._seen_adapters: set[str] = set()  # every adapter any backend ever had
        self.version = 0  # bumped on every change, for watchers
        self.membership = 0
        """Bumped when backends join, leave or are cordoned, or a report changes what a rollout
        looks at (condition, model, generations, applying): not per request, and not for
        busy-slot counts, so a rollout's scan of the fleet stays off the hot paths."""
        self._observers: list[Callable[[FleetEvent], None]] = []

    def subscribe(self, observer: Callable[[FleetEvent], None]) -> None:
        """Tell ``observer`` every :mod:`~corral.core.events` event from now on, in order."""
        self._observers.append(observer)

    def _emit(self, event: FleetEvent) -> None:
        for observer in self._observers:
            observer(event)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._backends)

    def __iter__(self) -> Iterator[Backend]:
        return iter(self._backends.values())

    def __contains__(self, backend_id: object) -> bool:
        return backend_id in self._backends

    def get(self, backend_id: str) -> Backend:
        try:
            return self._backends[backend_id]
        except KeyError:
            raise FleetError(f"unknown backend {backend_id!r}") from None

    def models(self) -> list[str]:
        """Models named by any registered backend (ready or not), sorted."""
        if self._models is None:
            self._models = sorted(m for m in self._model_refs if m is not None)
        return self._models

    def seen_models(self) -> list[str]:
        """Models any backend has ever named, sorted, including those whose servers
        are gone: a request naming one waits for it rather than going to another."""
        if self._seen_sorted is None:
            self._seen_sorted = sorted(self._seen)
        return self._seen_sorted

    def expect(self, models: Iterable[str]) -> None:
        """Models that may have no server now (scaled to zero: ``--scaled-model``),
        known as if seen: a request naming one waits in the buffer for a server of it,
        instead of getting 404 or another model."""
        for model in models:
            if model not in self._seen:
                self._seen.add(model)
                self._seen_sorted = None

    def has_seen(self, model: str) -> bool:
        """Whether any backend has ever named this model (see :meth:`seen_models`)."""
        return model in self._seen

    def has_backends(self, models: Iterable[str | None]) -> bool:
        """Whether some registered backend serves one of these models (None: names none)."""
        return any(self._model_refs.get(model, 0) > 0 for model in models)

    def answers(self, api: str, models: Iterable[str | None] | None = None) -> bool:
        """Whether some registered backend (of one of these models; None: of any model)
        answers this API family."""
        if models is None:
            return any(n > 0 and key[1] == api for key, n in self._api_refs.items())
        return any(self._api_refs[(model, api)] > 0 for model in models)

    def is_adapter(self, name: str) -> bool:
        """Whether ``name`` is a LoRA adapter some backend has ever had loaded, and no
        backend's model: a request naming it goes to a server that has it, and waits
        for one while none is ready (a model's name wins over an adapter's)."""
        return name in self._seen_adapters and name not in self._seen

    def adapter_models(self, name: str) -> list[str | None]:
        """The models of the registered backends that have adapter ``name`` loaded."""
        return sorted(
            (model for (adapter, model), n in self._adapter_refs.items() if adapter == name and n),
            key=lambda m: (m is None, m or ""),
        )

    def adapters(self) -> dict[str, list[str | None]]:
        """Every adapter registered backends have loaded -> the models they run, sorted."""
        out: dict[str, list[str | None]] = {}
        for (adapter, model), n in sorted(
            self._adapter_refs.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
        ):
            if n > 0:
                out.setdefault(adapter, []).append(model)
        return out

    def has_unnamed_model(self) -> bool:
        """Whether some backend's server did not say which model it runs."""
        return None in self._model_refs

    def candidates(self, models: Iterable[str | None]) -> Iterator[Backend]:
        """Routable backends of these models with a free slot, most free slots first.

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

    def has_hot(self, models: Iterable[str | None]) -> bool:
        """Whether some routable backend has one of these models hot (loaded or asleep),
        with a free slot or not."""
        return any(self._hot.get(model) for model in models)

    def loaders(self, models: Iterable[str | None]) -> list[Backend]:
        """Routable backends with a free slot that can load one of these models but
        have not (router mode): those already loading it first, then the most room
        (``models_max`` less the models they run), then the most free slots.

        Scans the backends that list the model, not the fleet; asked only when no
        backend has the model hot (:meth:`has_hot`)."""
        found: dict[str, tuple[tuple[float, float, int], Backend]] = {}
        for model in models:
            if model is None:
                continue
            for backend in self._cold.get(model, {}).values():
                if backend.routable and backend.free > 0 and backend.id not in found:
                    loading = backend.models.get(model) is ModelState.LOADING
                    key = (-float(loading), -backend.room, -backend.free)
                    found[backend.id] = (key, backend)
        return [backend for _, backend in sorted(found.values(), key=lambda kb: kb[0])]

    def has_free_slot(self) -> bool:
        return any(self._pools.values())

    def totals(self) -> tuple[int, int]:
        """``(slots_idle, slots_processing)`` over ready backends."""
        idle = processing = 0
        for backend in self._backends.values():
            if backend.routable:
                idle += backend.free
                processing += backend.busy
        return idle, processing

    def __repr__(self) -> str:
        idle, processing = self.totals()
        ready = sum(1 for a in self._backends.values() if a.routable)
        return (
            f"<Fleet [Backends: {len(self._backends)}, {ready} ready | "
            f"Slots: {processing} busy, {idle} idle | Models: {', '.join(self.models()) or '-'}]>"
        )

    # -------------------------------------------------------------- transitions
    def register(
        self, backend_id: str, *, name: str, address: str, api_key: str | None, now: float
    ) -> Backend:
        if backend_id in self._backends:
            raise FleetError(f"backend {backend_id!r} is already registered")
        backend = Backend(
            id=backend_id,
            name=name,
            address=address,
            api_key=api_key,
            registered_at=now,
            last_seen=now,
        )
        self._backends[backend_id] = backend
        self._ref_models(backend)
        self.membership += 1
        self._changed()
        return backend

    def report(self, backend_id: str, report: Report, now: float) -> Backend:
        """Apply a status report. A ready report clears "set aside"."""
        backend = self.get(backend_id)
        self._unindex(backend)
        before = _rollout_view(backend)
        reset = _reset_reason(backend, report) if self._observers else None
        models = dict(report.models)
        if backend.adapters != report.adapters or backend.model != report.model:
            self._adapter_refs.subtract((a.name, backend.model) for a in backend.adapters)
            self._adapter_refs.update((a.name, report.model) for a in report.adapters)
            self._seen_adapters.update(a.name for a in report.adapters)
            backend.adapters = report.adapters
        if (
            backend.model != report.model
            or backend.apis != report.apis
            or backend.models.keys() != models.keys()
        ):
            self._unref_models(backend)
            backend.model, backend.apis, backend.models = report.model, report.apis, models
            self._ref_models(backend)
        backend.models = models
        backend.models_max = report.models_max
        backend.runner = report.runner
        backend.condition = report.condition
        backend.model = report.model
        backend.slots_total = report.slots_total
        backend.slots_processing = report.slots_processing
        backend.slots_share = report.slots_share
        backend.issues = report.issues
        backend.supervisor = report.supervisor
        backend.applied_generation = report.applied_generation
        backend.failed_generation = report.failed_generation
        backend.applying = report.applying
        backend.cache_ram_mib = report.cache_ram_mib
        if report.props:
            backend.props = report.props
        if report.model_list:
            backend.model_list = report.model_list
        backend.reserved_at_report = _most_in_flight(backend, report.read_at, report.read_end, now)
        backend.last_seen = backend.last_report = now
        backend.heartbeat_ok = True
        if report.condition is Condition.READY:
            backend.set_aside = False
        if _rollout_view(backend) != before:
            self.membership += 1
        self._index(backend)
        self._changed()
        if reset is not None:
            self._emit(Reset(backend.id, reset))
        return backend

    def heartbeat(self, backend_id: str, now: float) -> bool:
        """Note that the agent is alive; ``True`` if that changed its state."""
        backend = self.get(backend_id)
        backend.last_seen = now
        if backend.heartbeat_ok:
            return False
        backend.heartbeat_ok = True
        self._reindex(backend)
        self._changed()
        return True

    def remove(self, backend_id: str) -> Backend:
        backend = self.get(backend_id)
        self._unindex(backend)
        self._unref_models(backend)
        self._adapter_refs.subtract((a.name, backend.model) for a in backend.adapters)
        del self._backends[backend_id]
        self.membership += 1
        self._changed()
        if self._observers:
            self._emit(Reset(backend_id, "left"))
        return backend

    def reserve(
        self,
        backend_id: str,
        now: float | None = None,
        request: object = None,
        adapter: str | None = None,
    ) -> Backend:
        """Take one slot on this backend for a request the balancer is about to send.

        ``now`` (the balancer's clock) lets later reports place it in time; ``request``
        (a ``RequestInfo``) goes to subscribers in a :class:`Dispatched` event;
        ``adapter``: the LoRA adapter it asks for (None: the base model), counted in
        :attr:`Backend.running` until the release that names it too."""
        backend = self.get(backend_id)
        if not backend.routable:
            raise FleetError(f"cannot reserve on {backend!r}: not routable")
        if backend.free < 1:
            raise FleetError(f"cannot reserve on {backend!r}: no free slot")
        self._unindex(backend)
        backend.reserved += 1
        backend.running[adapter] += 1
        _log(backend, now, +1)
        self._index(backend)
        self._changed()
        if self._observers:
            self._emit(Dispatched(backend, request, now))
        return backend

    def release(
        self,
        backend_id: str,
        now: float | None = None,
        request: object = None,
        timings: Timings | None = None,
        adapter: str | None = None,
        *,
        sent: bool = True,
    ) -> Backend | None:
        """Give back a slot taken by :meth:`reserve`. ``None`` if the backend has left.

        ``request`` and the answer's ``timings`` go to subscribers in a
        :class:`Finished` event; ``adapter`` is the one the reservation named;
        ``sent=False``: the request never reached the server (see :class:`Finished`)."""
        backend = self._backends.get(backend_id)
        if backend is None:
            return None
        if backend.reserved < 1:
            raise FleetError(f"release on {backend!r} without a reservation")
        self._unindex(backend)
        backend.reserved -= 1
        if backend.running[adapter] > 1:
            backend.running[adapter] -= 1
        else:
            del backend.running[adapter]
        _log(backend, now, -1)
        # reserved_at_report stays: the last report still counts this request as busy
        # if it had reached the server, and the two cancel out in ``external``; its
        # slot is free at once, not at the next report.
        self._index(backend)
        self._changed()
        if self._observers:
            self._emit(Finished(backend, request, timings, now, sent))
        return backend

    def set_aside(self, backend_id: str) -> Backend | None:
        """A request to this backend failed: send nothing until it reports ready."""
        backend = self._backends.get(backend_id)
        if backend is None:
            return None
        backend.failures += 1
        if not backend.set_aside:
            backend.set_aside = True
            self._reindex(backend)
            self._changed()
        return backend

    def cordon(self, backend_id: str, now: float) -> Backend:
        """Cordon this backend: send it nothing new (its settings are about to change).

        Its requests in flight run to their end; the rollout waits for them (cordon
        and wait: a drain, in Kubernetes' words)."""
        backend = self.get(backend_id)
        if backend.cordoned:
            raise FleetError(f"{backend!r} is already draining")
        backend.cordoned = True
        backend.cordoned_at = now
        self.membership += 1
        self._reindex(backend)
        self._changed()
        return backend

    def uncordon(self, backend_id: str) -> Backend:
        backend = self.get(backend_id)
        if backend.cordoned:
            backend.cordoned = False
            self.membership += 1
            self._reindex(backend)
            self._changed()
        return backend

    def succeeded(self, backend_id: str) -> None:
        backend = self._backends.get(backend_id)
        if backend is not None:
            backend.failures = 0

    def expire(self, now: float, timeout: float) -> list[Backend]:
        """Mark backends not heard from for ``timeout`` seconds unhealthy; return them."""
        stale = [
            a for a in self._backends.values() if a.heartbeat_ok and now - a.last_seen > timeout
        ]
        for backend in stale:
            backend.heartbeat_ok = False
            self._reindex(backend)
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
        if model is not None and model not in self._seen:
            self._seen.add(model)
            self._seen_sorted = None

    def _ref_models(self, backend: Backend) -> None:
        for model in backend.serves:
            self._ref_model(model)
            self._api_refs.update((model, api) for api in backend.apis)
            if model is not None and backend.models:
                self._cold.setdefault(model, {})[backend.id] = backend

    def _unref_models(self, backend: Backend) -> None:
        for model in backend.serves:
            self._unref_model(model)
            self._api_refs.subtract((model, api) for api in backend.apis)
            if model is not None and backend.models:
                cold = self._cold[model]
                del cold[backend.id]
                if not cold:
                    del self._cold[model]

    def _unref_model(self, model: str | None) -> None:
        left = self._model_refs[model] - 1
        if left:
            self._model_refs[model] = left
        else:
            del self._model_refs[model]
            self._models = None

    def _index(self, backend: Backend) -> None:
        if not backend.routable:
            return
        free = backend.free
        hot = backend.hot
        for model in hot:  # get, then create: setdefault would build its default each time
            backends = self._hot.get(model)
            if backends is None:
                backends = self._hot[model] = {}
            backends[backend.id] = backend
            if free > 0:
                pool = self._pools.get(model)
                if pool is None:
                    pool = self._pools[model] = _Pool()
                pool.add(backend, free)
        backend._bucket = (hot, free)

    def _unindex(self, backend: Backend) -> None:
        if backend._bucket is not None:
            models, free = backend._bucket
            for model in models:
                hot = self._hot[model]
                del hot[backend.id]
                if not hot:
                    del self._hot[model]
                if free > 0:
                    pool = self._pools[model]
                    pool.remove(backend.id, free)
                    if not pool:
                        del self._pools[model]
            backend._bucket = None

    def _reindex(self, backend: Backend) -> None:
        self._unindex(backend)
        self._index(backend)

    def check_index(self) -> None:
        """Assert the index matches the backends (for tests)."""
        pooled: set[tuple[str, str | None]] = set()
        for model, pool in self._pools.items():
            for free, bucket in pool.buckets.items():
                assert bucket, "empty bucket left behind"
                for backend_id, backend in bucket.items():
                    assert self._backends.get(backend_id) is backend, f"stale {backend_id}"
                    assert model in backend.hot and backend.free == free, repr(backend)
                    assert backend.routable, repr(backend)
                    pooled.add((backend_id, model))
        hot = {(i, model) for model, members in self._hot.items() for i in members}
        assert all(members for members in self._hot.values()), "empty hot set left behind"
        cold = {(i, model) for model, members in self._cold.items() for i in members}
        for backend in self._backends.values():
            for model in backend.hot:
                key = (backend.id, model)
                assert (key in hot) == backend.routable, repr(backend)
                assert (key in pooled) == (backend.routable and backend.free > 0), repr(backend)
            for model in backend.serves if backend.models else ():
                assert (backend.id, model) in cold, repr(backend)
        assert len(pooled) == sum(
            len(b.hot) for b in self._backends.values() if b.routable and b.free > 0
        ), "stale pool entries"
        assert len(hot) == sum(len(b.hot) for b in self._backends.values() if b.routable)
        assert len(cold) == sum(len(b.models) for b in self._backends.values())


def _rollout_view(backend: Backend) -> tuple[object, ...]:
    """What of an agent's report the rollout reads (see :attr:`Fleet.membership`)."""
    return (
        backend.condition,
        backend.model,
        tuple(backend.models),
        backend.supervisor is None,
        backend.applied_generation,
        backend.failed_generation,
        backend.applying,
        backend.set_aside,
        backend.heartbeat_ok,
    )


def _reset_reason(backend: Backend, report: Report) -> str | None:
    """Whether this report says the server lost what it held (its prompt caches)."""
    if report.condition is not Condition.READY:
        return None  # said when it comes back
    if backend.model != report.model:
        return "model"
    if backend.condition is not Condition.READY:
        return "restarted"  # back from loading, unreachable...: it may have restarted
    if backend.slots_total != report.slots_total:
        return "restarted"
    if backend.supervisor is not None and report.supervisor is not None:
        for key in ("restarts", "pid"):
            if backend.supervisor.get(key) != report.supervisor.get(key):
                return "restarted"
    return None


LOG_SECONDS = 10.0
"""How long each agent's reservations and releases are remembered, for reports that
say when their reading began (a report read longer ago counts as read on arrival)."""


def _log(backend: Backend, now: float | None, delta: int) -> None:
    if now is None:  # an event at an unknown time: reads before the next known event
        backend._log.clear()  # fall back to counting on arrival
        backend._log_from = math.inf
        return
    if backend._log_from == math.inf:
        backend._log_from = now
    log = backend._log
    log.append((now, delta))
    horizon = now - LOG_SECONDS
    while log and log[0][0] < horizon:
        backend._log_from = log.popleft()[0]


def _most_in_flight(
    backend: Backend, read_at: float | None, read_end: float | None, now: float
) -> int:
    """The most of the balancer's requests in flight on ``backend`` at any moment from
    ``read_at`` to ``read_end`` (``now`` if None); what is in flight now if ``read_at``
    is None or older than the log (see the module docstring for why the most)."""
    if read_at is None or read_at < backend._log_from:
        return backend.reserved
    end = now if read_end is None else read_end
    count = backend.reserved  # in flight after the newest event, going back in time
    most = 0
    for when, delta in reversed(backend._log):
        if when <= read_at:
            break
        if when <= end:
            most = max(most, count)  # in flight from this event until the next
        count -= delta
    return max(most, count)  # count: in flight at read_at
