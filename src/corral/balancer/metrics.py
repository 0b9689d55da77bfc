"""Metrics for operators and autoscalers (Prometheus text format, prometheus_client).

Fleet gauges (agents by state, slots, buffered requests) are read from the fleet at
scrape time by a collector, so they cost nothing per request. Request metrics are
counters and histograms updated once per request. Buffered requests are the signal to
add a server; idle slots the signal to remove one.

Histogram buckets suit LLM latencies: milliseconds (a cached short answer) to minutes
(a long generation on a busy CPU server).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from corral.balancer.statsd import Counts
from corral.core.buffer import Buffer
from corral.core.demand import Demand, demand_by_model
from corral.core.fleet import BackendState, Fleet

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
PICK_BUCKETS = (
    1e-6, 2e-6, 3e-6, 5e-6, 7e-6, 1e-5, 1.5e-5, 2e-5, 3e-5, 5e-5, 7e-5, 1e-4, 2e-4, 5e-4, 1e-3,
)  # fmt: skip
COLD_START_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _FleetCollector(Collector):
    def __init__(self, fleet: Fleet, buffer: Buffer) -> None:
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

    def __init__(self, fleet: Fleet, buffer: Buffer) -> None:
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
            "Server failures, by kind (connect, unavailable, mid_response)",
            ["kind"],
            registry=r,
        )
        self.buffer_rejections = Counter(
            "corral_buffer_rejections",
            "Requests refused by the buffer (full: 429; timeout: 503)",
            ["reason"],
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
        self.prompt_tokens = Counter(
            "corral_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.generated_tokens = Counter(
            "corral_generated_tokens", "Tokens generated", ["model"], registry=r
        )

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
        first_byte: float | None,
    ) -> None:
        """Count one answered request (``model``: what the server runs, never client input)."""
        self._child(self.requests, endpoint, model, str(status)).inc()
        self.counts.requests += 1
        self._child(self.duration, endpoint).observe(total)
        if waited:
            self.buffer_wait.observe(waited)
        if first_byte is not None:
            self._child(self.first_byte, endpoint).observe(first_byte)

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data

    def count_tokens(self, model: str, body: bytes) -> None:
        """Count the tokens an answer reports (``usage`` or llama.cpp's ``timings``)."""
        prompt, generated = token_counts(body)
        if prompt:
            self._child(self.prompt_tokens, model).inc(prompt)
        if generated:
            self._child(self.generated_tokens, model).inc(generated)


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    input_tokens: int = 0  # /v1/messages, /v1/responses
    output_tokens: int = 0


class _Timings(msgspec.Struct):
    prompt_n: int = 0
    predicted_n: int = 0
    cache_n: int = 0


class _Counts(msgspec.Struct):
    usage: _Usage | None = None
    timings: _Timings | None = None


_counts = msgspec.json.Decoder(_Counts)


def token_counts(body: bytes) -> tuple[int, int]:
    """``(prompt, generated)`` tokens from one JSON answer or SSE event; (0, 0) if none.

    ``usage`` wins when present (it counts cached prompt tokens too); else llama.cpp's
    ``timings``.
    """
    try:
        counts = _counts.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return 0, 0
    if counts.usage is not None:
        u = counts.usage
        return u.prompt_tokens or u.input_tokens, u.completion_tokens or u.output_tokens
    if counts.timings is not None:
        t = counts.timings
        return t.prompt_n + t.cache_n, t.predicted_n
    return 0, 0


def last_counted_event(tail: bytes) -> bytes | None:
    """The JSON of the last SSE event in ``tail`` that carries usage or timings."""
    for event in reversed(tail.split(b"\n\n")):
        event = event.strip()
        if event.startswith(b"data: {") and (b'"usage"' in event or b'"timings"' in event):
            return event[6:]
    return None
