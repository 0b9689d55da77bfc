"""Metrics for operators and autoscalers (Prometheus text format, prometheus_client).

Fleet gauges (agents by state, slots, buffered requests) are read from the fleet at
scrape time by a collector, so they cost nothing per request. Request metrics are
counters and histograms updated once per request. Buffered requests are the signal to
add a server; idle slots the signal to remove one.

Generated tokens are counted live, as a stream is relayed, so tokens/s follows
generation rather than the ends of requests: the relay counts the pieces of content in
each chunk it writes (:func:`token_events`, two ``bytes.count``; see
docs/observability.md for its cost) into a :class:`Tally` per agent and model. When the
stream ends, its exact count (``usage`` or ``timings``) settles the tally: tokens the
live count missed (reasoning, tool calls, a piece cut between two reads) are added, and
any it counted too many are held back from the next live counts, so the counter never
goes down and stays exact over time. Answers that are not streamed are counted when
they end.

Histogram buckets suit LLM latencies: milliseconds (a cached short answer) to minutes
(a long generation on a busy CPU server).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import msgspec
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from corral.balancer.statsd import Counts
from corral.core.demand import Demand, demand_by_model
from corral.core.events import Timings
from corral.core.fleet import BackendState, Fleet
from corral.core.queueing import Queue

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
PICK_BUCKETS = (
    1e-6, 2e-6, 3e-6, 5e-6, 7e-6, 1e-5, 1.5e-5, 2e-5, 3e-5, 5e-5, 7e-5, 1e-4, 2e-4, 5e-4, 1e-3,
)  # fmt: skip
COLD_START_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _FleetCollector(Collector):
    def __init__(self, fleet: Fleet, buffer: Queue) -> None:
        self.fleet = fleet
        self.buffer = buffer

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = GaugeMetricFamily("corral_agents", "Agents registered, by state", labels=["state"])
        counts = dict.fromkeys(BackendState, 0)
        slots = GaugeMetricFamily(
            "corral_agent_slots",
            "Slots of each agent's server, by kind (total, idle, processing)",
            labels=["agent", "model", "kind"],
        )
        per_model: dict[str, list[int]] = {}
        total = idle = processing = 0
        for backend in self.fleet:
            counts[backend.state] += 1
            model = backend.model or ""
            free = backend.free if backend.routable else 0
            busy = backend.busy if backend.routable else 0
            slots.add_metric([backend.name, model, "total"], backend.slots_total)
            slots.add_metric([backend.name, model, "idle"], free)
            slots.add_metric([backend.name, model, "processing"], busy)
            sums = per_model.setdefault(model, [0, 0, 0])
            if backend.routable:
                sums[0] += backend.slots_total
                sums[1] += free
                sums[2] += busy
                total += backend.slots_total
                idle += free
                processing += busy
        for state, count in counts.items():
            states.add_metric([state.value], count)
        yield states
        fleet_slots = GaugeMetricFamily(
            "corral_slots", "Slots of ready servers, fleet-wide", labels=["kind"]
        )
        fleet_slots.add_metric(["total"], total)
        fleet_slots.add_metric(["idle"], idle)
        fleet_slots.add_metric(["processing"], processing)
        yield fleet_slots
        model_slots = GaugeMetricFamily(
            "corral_model_slots", "Slots of ready servers, per model", labels=["model", "kind"]
        )
        for model, (t, i, p) in sorted(per_model.items()):
            model_slots.add_metric([model, "total"], t)
            model_slots.add_metric([model, "idle"], i)
            model_slots.add_metric([model, "processing"], p)
        yield model_slots
        yield slots
        buffered = GaugeMetricFamily(
            "corral_buffered_requests", "Requests waiting for a free slot now"
        )
        buffered.add_metric([], len(self.buffer))
        yield buffered
        buffered_bytes = GaugeMetricFamily(
            "corral_buffered_bytes", "Request body bytes waiting for a free slot now"
        )
        buffered_bytes.add_metric([], self.buffer.bytes)
        yield buffered_bytes
        per_tenant = GaugeMetricFamily(
            "corral_tenant_buffered_requests",
            "Requests waiting for a free slot now, per tenant (names from the keys file)",
            labels=["tenant"],
        )
        waiting = self.buffer.by_tenant()
        for name in sorted(self.buffer.tenants):
            per_tenant.add_metric([name], waiting.get(name, 0))
        yield per_tenant
        yield from _demand_metrics(demand_by_model(self.fleet, self.buffer))


def _demand_metrics(by_model: dict[str, Demand]) -> Iterator[GaugeMetricFamily]:
    """The autoscaling signal per model, the same numbers KEDA's external scaler gives
    (:mod:`corral.balancer.keda`): for a Prometheus trigger."""
    demand = GaugeMetricFamily(
        "corral_model_demand",
        "Requests that want a slot of this model now: buffered plus in flight (divide by "
        "the slots per replica for the replicas needed)",
        labels=["model"],
    )
    buffered = GaugeMetricFamily(
        "corral_model_buffered_requests", "Requests waiting for this model", labels=["model"]
    )
    in_flight = GaugeMetricFamily(
        "corral_model_in_flight_requests",
        "Busy slots of this model's ready servers",
        labels=["model"],
    )
    for model, d in by_model.items():
        demand.add_metric([model], d.total)
        buffered.add_metric([model], d.buffered)
        in_flight.add_metric([model], d.in_flight)
    yield demand
    yield buffered
    yield in_flight


class Metrics:
    """All of the balancer's metrics, in their own registry."""

    def __init__(self, fleet: Fleet, buffer: Queue) -> None:
        self.counts = Counts()  # plain totals for StatsD
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_FleetCollector(fleet, buffer))
        r = self.registry
        self.requests = Counter(
            "corral_requests", "Requests answered", ["endpoint", "model", "status"], registry=r
        )
        self.buffer_wait = Histogram(
            "corral_buffer_wait_seconds",
            "Time requests waited in the buffer for a slot",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.pick = Histogram(
            "corral_pick_seconds",
            "Time the policy takes to route a new request (pick a server and reserve its "
            "slot, or decide it waits)",
            buckets=PICK_BUCKETS,
            registry=r,
        )
        self.first_byte = Histogram(
            "corral_time_to_first_byte_seconds",
            "From request received to the first byte of the server's answer (for a "
            "streamed generation: time to first token)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "corral_request_duration_seconds",
            "From request received to response finished",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "corral_retries", "Requests sent again to another server", registry=r
        )
        self.upstream_failures = Counter(
            "corral_upstream_failures",
            "Server failures, by kind (connect: not sent; unavailable: 503; died, timeout, "
            "lost, malformed: before the response started; mid_response)",
            ["kind"],
            registry=r,
        )
        self.streams_cut = Counter(
            "corral_streams_cut",
            "Responses broken off after they started (SSE error event, or a cut body), "
            "by kind (died, timeout, lost, malformed)",
            ["kind"],
            registry=r,
        )
        self.not_retried = Counter(
            "corral_not_retried",
            "Requests answered 502 after a second server failed holding them (the retry "
            "rule: such a request may be what makes servers fail)",
            registry=r,
        )
        self.buffer_rejections = Counter(
            "corral_buffer_rejections",
            "Requests refused by the buffer (full: 429; timeout: 503)",
            ["reason"],
            registry=r,
        )
        self.tenant_requests = Counter(
            "corral_tenant_requests",
            "Requests answered per tenant (names from the keys file, never keys), class "
            "(batch, interactive, high) and status class (2xx, 4xx, 5xx)",
            ["tenant", "priority", "status"],
            registry=r,
        )
        self.tenant_buffer_wait = Histogram(
            "corral_tenant_buffer_wait_seconds",
            "Time requests waited in the buffer, per tenant and class",
            ["tenant", "priority"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.cold_start = Histogram(
            "corral_cold_start_seconds",
            "From scale-up (a request buffered for a model with no ready server) to that "
            "model's first ready slot",
            ["model"],
            buckets=COLD_START_BUCKETS,
            registry=r,
        )
        self.tallies: dict[tuple[str, str], Tally] = {}
        """Token counts per ``(agent name, model)``, exported at scrape time."""
        self.registry.register(_TokenCollector(self.tallies))
        # the servers' prompt caches: measured under any routing (so a fleet on --routing
        # slots shows the hit rate prefix routing would start from), predicted under
        # prefix; plain numbers per agent (counted per answer), exported at scrape time
        self.caches: dict[str, CacheTally] = {}
        """Prompt-cache counts per agent name."""
        self.registry.register(_CacheCollector(self.caches))

        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (it is per request)."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_done(
        self,
        endpoint: str,
        model: str,
        status: int,
        total: float,
        waited: float,
    ) -> None:
        """Count one answered request (``model``: what the server runs, never client input).

        Its time to first byte was counted when the byte was relayed (:meth:`first_byte_at`).
        """
        self._child(self.requests, endpoint, model, str(status)).inc()
        self.counts.requests += 1
        self._child(self.duration, endpoint).observe(total)
        if waited:
            self.buffer_wait.observe(waited)

    def first_byte_at(self, endpoint: str, seconds: float) -> None:
        """Observe one answer's time to first byte, when that byte is relayed (not when
        the answer ends): a chart of it follows streams while they run."""
        self._child(self.first_byte, endpoint).observe(seconds)

    def tenant_done(self, tenant: str, priority: str, status: int, waited: float) -> None:
        """Count one request of a tenant (a name from the keys file: bounded)."""
        self._child(self.tenant_requests, tenant, priority, f"{status // 100}xx").inc()
        self._child(self.tenant_buffer_wait, tenant, priority).observe(waited)

    def count_cached(self, agent: str, predicted: int | None, timings: Timings) -> None:
        """One answer's measured cached prompt tokens (any routing), and those predicted
        (prefix routing; None under another, which predicts none)."""
        tally = self.caches.get(agent)
        if tally is None:
            tally = self.caches[agent] = CacheTally()
        tally.cached += timings.cache_n
        tally.timed += timings.prompt_tokens
        if predicted is not None:
            tally.predicted += predicted
            tally.predicts = True

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data

    def tally(self, agent: str, model: str) -> Tally:
        """The token counts of one agent and model (created at first use)."""
        tally = self.tallies.get((agent, model))
        if tally is None:
            tally = self.tallies[(agent, model)] = Tally()
        return tally

    def count_tokens(self, agent: str, model: str, counted: Counted, streamed: int = 0) -> None:
        """Count the tokens an answer reports (``usage`` or llama.cpp's ``timings``).

        Args:
            agent: the name of the agent that answered.
            model: what its server runs (never client input).
            counted: the answer's counts (:func:`read_counts` of the answer, or of the
                last SSE event with counts).
            streamed: events already counted live for this answer (:meth:`Tally.stream`).
        """
        tally = self.tally(agent, model)
        tally.prompt += counted.prompt
        if counted.generated:
            tally.settle(counted.generated, streamed)


class Tally:
    """Prompt and generated tokens of one agent and model, counted as they flow.

    ``generated`` only goes up. ``debt`` is events counted live that were not tokens
    (an exact count at the end of a stream said so): the next live events pay it first.
    """

    __slots__ = ("debt", "generated", "prompt")

    def __init__(self) -> None:
        self.generated = 0
        self.prompt = 0
        self.debt = 0

    def stream(self, events: int) -> None:
        """Count ``events`` token events just relayed (the per-chunk path: keep it small)."""
        if self.debt:
            paid = min(self.debt, events)
            self.debt -= paid
            events -= paid
        self.generated += events

    def settle(self, exact: int, streamed: int) -> None:
        """An answer generated ``exact`` tokens, ``streamed`` of which were counted live."""
        if exact >= streamed:
            self.generated += exact - streamed
        else:
            self.debt += streamed - exact

    def __repr__(self) -> str:
        return f"<Tally generated={self.generated} prompt={self.prompt} debt={self.debt}>"


class _TokenCollector(Collector):
    """Token counters from the tallies, per model and per agent."""

    def __init__(self, tallies: dict[tuple[str, str], Tally]) -> None:
        self.tallies = tallies

    def collect(self) -> Iterator[CounterMetricFamily]:
        prompt: dict[str, int] = {}
        generated: dict[str, int] = {}
        per_agent = CounterMetricFamily(
            "corral_agent_generated_tokens",
            "Tokens generated, per agent (counted as streams are relayed)",
            labels=["agent", "model"],
        )
        for (agent, model), tally in sorted(self.tallies.items()):
            prompt[model] = prompt.get(model, 0) + tally.prompt
            generated[model] = generated.get(model, 0) + tally.generated
            per_agent.add_metric([agent, model], tally.generated)
        prompt_family = CounterMetricFamily(
            "corral_prompt_tokens", "Prompt tokens processed", labels=["model"]
        )
        for model, count in prompt.items():
            prompt_family.add_metric([model], count)
        generated_family = CounterMetricFamily(
            "corral_generated_tokens",
            "Tokens generated (counted as streams are relayed)",
            labels=["model"],
        )
        for model, count in generated.items():
            generated_family.add_metric([model], count)
        yield prompt_family
        yield generated_family
        yield per_agent


class CacheTally:
    """One agent's prompt-cache counts: tokens reused (``timings.cache_n``), tokens of
    answers with timings, and tokens predicted cached (``predicts``: prefix routing
    predicted any, even 0)."""

    __slots__ = ("cached", "predicted", "predicts", "timed")

    def __init__(self) -> None:
        self.cached = 0
        self.timed = 0
        self.predicted = 0
        self.predicts = False

    def __repr__(self) -> str:
        return f"<CacheTally cached={self.cached}/{self.timed} predicted={self.predicted}>"


class _CacheCollector(Collector):
    """The prompt-cache counters from the tallies, per agent and fleet-wide."""

    def __init__(self, caches: dict[str, CacheTally]) -> None:
        self.caches = caches

    def collect(self) -> Iterator[CounterMetricFamily]:
        agent_predicted = CounterMetricFamily(
            "corral_agent_cached_prompt_tokens_predicted",
            "Prompt tokens the balancer predicted each server had cached, for answers "
            "that reported timings (--routing prefix only)",
            labels=["agent"],
        )
        agent_cached = CounterMetricFamily(
            "corral_agent_cached_prompt_tokens",
            "Prompt tokens each server reported reusing from its cache (timings.cache_n)",
            labels=["agent"],
        )
        agent_timed = CounterMetricFamily(
            "corral_agent_timed_prompt_tokens",
            "Prompt tokens of answers that reported timings (prompt_n + cache_n): the "
            "denominator of the cache hit rate",
            labels=["agent"],
        )
        predicted = cached = timed = 0
        for agent, tally in sorted(self.caches.items()):
            if tally.predicts:
                agent_predicted.add_metric([agent], tally.predicted)
            agent_cached.add_metric([agent], tally.cached)
            agent_timed.add_metric([agent], tally.timed)
            predicted += tally.predicted
            cached += tally.cached
            timed += tally.timed
        yield agent_predicted
        yield agent_cached
        yield agent_timed
        yield CounterMetricFamily(
            "corral_cached_prompt_tokens_predicted",
            "Prompt tokens predicted cached, fleet-wide",
            value=predicted,
        )
        yield CounterMetricFamily(
            "corral_cached_prompt_tokens",
            "Prompt tokens the servers reported reusing from their caches, fleet-wide",
            value=cached,
        )
        yield CounterMetricFamily(
            "corral_timed_prompt_tokens",
            "Prompt tokens of answers that reported timings, fleet-wide",
            value=timed,
        )


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    input_tokens: int = 0  # /v1/messages, /v1/responses
    output_tokens: int = 0


class _Timings(msgspec.Struct):
    prompt_n: int = 0
    predicted_n: int = 0
    cache_n: int = 0
    prompt_ms: float = 0.0


class _Counts(msgspec.Struct):
    usage: _Usage | None = None
    timings: _Timings | None = None


_counts = msgspec.json.Decoder(_Counts)


class Counted(NamedTuple):
    """What one answer reports of its tokens (:func:`read_counts`).

    Attributes:
        prompt: prompt tokens, cached ones included; 0 if not reported.
        generated: generated tokens; 0 if not reported.
        timings: llama.cpp's ``timings`` of the prompt; None if it has none.
    """

    prompt: int
    generated: int
    timings: Timings | None


NOTHING_COUNTED = Counted(0, 0, None)


def read_counts(body: bytes | None) -> Counted:
    """The token counts of one JSON answer or SSE event, decoded once for the
    metrics and the prefix index alike; :data:`NOTHING_COUNTED` if it reports none
    (or is not JSON).

    ``usage`` wins for the counts when present (it counts cached prompt tokens too);
    else llama.cpp's ``timings``.
    """
    if body is None:
        return NOTHING_COUNTED
    try:
        counts = _counts.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return NOTHING_COUNTED
    t = counts.timings
    timings = None if t is None else Timings(t.prompt_n, t.cache_n, t.prompt_ms)
    if counts.usage is not None:
        u = counts.usage
        return Counted(
            u.prompt_tokens or u.input_tokens, u.completion_tokens or u.output_tokens, timings
        )
    if t is not None:
        return Counted(t.prompt_n + t.cache_n, t.predicted_n, timings)
    return NOTHING_COUNTED


def token_events(chunk: bytes) -> int:
    """Tokens in one relayed chunk of a llama-server stream, counted cheaply.

    llama-server sends one event per generated token, its text as ``"content":"..."``
    (``/completion`` and the chat delta alike); the role chunk (``"content":null``),
    the last chunk (``"content":""``), usage and ``[DONE]`` carry none. An estimate:
    :meth:`Tally.settle` makes it exact when the stream ends.
    """
    return chunk.count(b'"content":"') - chunk.count(b'"content":""')


def last_counted_event(tail: bytes) -> bytes | None:
    """The JSON of the last SSE event in ``tail`` that carries usage or timings."""
    for event in reversed(tail.split(b"\n\n")):
        event = event.strip()
        if event.startswith(b"data: {") and (b'"usage"' in event or b'"timings"' in event):
            return event[6:]
    return None
