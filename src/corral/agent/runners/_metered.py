"""What vLLM and SGLang have in common: ``/health``, OpenAI's ``/v1/models``, and the
load in Prometheus gauges on ``/metrics``; no slots, so the slot count is the
concurrency the operator gives the agent (``--concurrency``).

:func:`interpret` is pure; :class:`MeteredRunner` reads and is subclassed by
:mod:`~corral.agent.runners.vllm` and :mod:`~corral.agent.runners.sglang`, which
name their gauges.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import ClassVar

from corral.agent.runners._prometheus import gauges
from corral.agent.runners.base import (
    Clock,
    Fetched,
    Get,
    Reading,
    Runner,
    RunnerOptions,
    bounded,
    failure,
    openai_model_ids,
    status_with,
)
from corral.core.fleet import Condition
from corral.protocol.messages import IssueInfo, ServerStatus

MODELS_INTERVAL = 30.0
"""Seconds between reads of ``/v1/models`` while the server stays ready (LoRA
adapters may be loaded at run time); it is also read at once when the server becomes
ready."""


@dataclass(frozen=True, slots=True)
class Gauges:
    """Which Prometheus gauges say how loaded a server is."""

    running: tuple[str, ...]
    """Requests being generated (the first name present wins; older names after)."""
    waiting: tuple[str, ...]
    """Requests queued inside the server."""
    cache: tuple[str, ...] = ()
    """KV-cache usage, 0..1 (shown to operators, not used to route)."""
    metrics_hint: str = ""
    """What to tell an operator whose server answers no ``/metrics``."""

    def names(self) -> frozenset[str]:
        return frozenset((*self.running, *self.waiting, *self.cache))


def _first(found: dict[str, float], names: tuple[str, ...]) -> float | None:
    for name in names:
        if name in found:
            return found[name]
    return None


def interpret(
    health: Fetched,
    models: Fetched | None,
    metrics: Fetched | None,
    *,
    concurrency: int,
    names: Gauges,
    runner: str,
) -> ServerStatus:
    """Turn ``/health``, ``/v1/models`` and ``/metrics`` answers into a status.

    Args:
        health: ``GET /health``: 200 (any body) is healthy; 503 means the engine died
            or is not ready.
        models: ``GET /v1/models`` (``None``: not read, the server is not healthy).
        metrics: ``GET /metrics`` as text (``None``: not read).
        concurrency: Slots to report: requests the server runs at once (its
            ``--max-num-seqs`` or ``--max-running-requests``), from configuration.
        names: The gauges to read.
        runner: The runner's name, for messages.

    Busy slots are running plus waiting requests (a request queued inside the server
    occupies it as surely as a running one), at most ``concurrency``.
    """
    if health.status == 503:
        return status_with(
            Condition.ERROR,
            "unavailable",
            f"/health answered 503: the {runner} engine is not running",
        )
    failed = failure("/health", health, "--llamacpp-api-key, the server's --api-key")
    if failed is not None:
        return failed
    if models is None:
        return ServerStatus(condition=Condition.LOADING)
    failed = failure("/v1/models", models, "--llamacpp-api-key, the server's --api-key")
    if failed is not None:
        return failed
    ids = openai_model_ids(models)
    issues: list[IssueInfo] = []
    if not ids:
        issues.append(IssueInfo("no_model_id", "/v1/models did not name a model"))
    busy = 0
    props: dict[str, float] = {}
    if metrics is not None and metrics.ok and isinstance(metrics.body, str):
        found = gauges(metrics.body, names.names())
        running = _first(found, names.running)
        waiting = _first(found, names.waiting) or 0.0
        cache = _first(found, names.cache)
        if running is None:
            issues.append(
                IssueInfo(
                    "no_load_metrics",
                    f"/metrics has none of {', '.join(names.running)}; busy slots are "
                    "counted from the balancer's own requests only",
                )
            )
        else:
            busy = max(0, int(running + waiting))
            props = {"requests_running": running, "requests_waiting": waiting}
        if cache is not None:
            props["kv_cache_usage"] = cache
    elif metrics is not None:
        status = metrics.status or metrics.error
        issues.append(
            IssueInfo(
                "metrics_unavailable",
                f"/metrics could not be read ({status}){names.metrics_hint}; busy slots "
                "are counted from the balancer's own requests only",
            )
        )
    return ServerStatus(
        condition=Condition.READY,
        model=ids[0] if ids else None,
        slots_total=concurrency,
        slots_processing=min(busy, concurrency),
        issues=issues,
        props=dict(props),
        model_list=bounded(models.body),
    )


class MeteredRunner(Runner):
    """Reads ``/health`` and ``/metrics`` every round (both answered at once, without
    touching the engine's queue), and ``/v1/models`` when the server becomes ready and
    every :data:`MODELS_INTERVAL` seconds."""

    apis: ClassVar[tuple[str, ...]] = ("openai",)
    gauges: ClassVar[Gauges]

    def __init__(self, options: RunnerOptions | None = None) -> None:
        super().__init__(options)
        self._models: Fetched | None = None
        self._models_at = -math.inf
        self._drained_at = -math.inf

    def forget(self) -> None:
        self._models = None

    async def read(self, get: Get, clock: Clock) -> Reading:
        began = clock()
        health = await get("/health")
        if not health.ok:
            self.forget()
            return Reading(self._interpret(health, None, None), began)
        if self._models is None or clock() - self._models_at >= MODELS_INTERVAL:
            self._models, self._models_at = await get("/v1/models"), clock()
        began = clock()  # the load is what /metrics says now
        metrics = await get("/metrics")
        return Reading(self._interpret(health, self._models, metrics), began)

    def _interpret(
        self, health: Fetched, models: Fetched | None, metrics: Fetched | None
    ) -> ServerStatus:
        return interpret(
            health,
            models,
            metrics,
            concurrency=self.concurrency,
            names=self.gauges,
            runner=self.name,
        )

    async def in_flight(self, get: Get, clock: Clock) -> int | None:
        """Running plus waiting requests from ``/metrics``, at most once per poll
        interval."""
        wait = self._drained_at + self.options.poll_interval - clock()
        if wait > 0:
            await asyncio.sleep(wait)
        self._drained_at = clock()
        metrics = await get("/metrics")
        if not metrics.ok or not isinstance(metrics.body, str):
            return None
        found = gauges(metrics.body, self.gauges.names())
        running = _first(found, self.gauges.running)
        if running is None:
            return None
        return int(running + (_first(found, self.gauges.waiting) or 0.0))
