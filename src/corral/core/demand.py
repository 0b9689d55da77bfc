"""Demand per model: what an autoscaler needs to know, from the fleet and the buffer.

Theory of operation
-------------------
A model's *demand* is the requests that want one of its slots now: those waiting in
the buffer for it plus those its ready servers are running. Divided by the slots one
replica adds, it is the number of replicas the model needs (KEDA's HPA computes
``ceil(demand / slots_per_replica)``); a demand above zero is what wakes a model
scaled to zero. Pure: read at the moment it is asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.core.fleet import Fleet
from corral.core.queueing import Queue


@dataclass(frozen=True, slots=True)
class Demand:
    buffered: int = 0
    """Requests waiting in the buffer that name this model."""
    in_flight: int = 0
    """Busy slots (reserved or processing) of this model's ready servers."""
    ready_slots: int = 0
    """Slots of this model's ready servers."""
    ready_backends: int = 0

    @property
    def total(self) -> int:
        return self.buffered + self.in_flight


def model_demand(fleet: Fleet, buffer: Queue, model: str) -> Demand:
    """The demand for one model (requests naming it; servers reporting it)."""
    buffered = sum(1 for waiter in buffer if waiter.request.model == model)
    in_flight = ready_slots = ready = 0
    for backend in fleet:
        if backend.model == model and backend.routable:
            in_flight += backend.busy
            ready_slots += backend.slots_total
            ready += 1
    return Demand(buffered, in_flight, ready_slots, ready)


def demand_by_model(fleet: Fleet, buffer: Queue) -> dict[str, Demand]:
    """The demand for every model a server reports or a buffered request names."""
    models = {m for m in fleet.models()} | {w.request.model for w in buffer if w.request.model}
    return {m: model_demand(fleet, buffer, m) for m in sorted(models)}


class ColdStarts:
    """Time from scale-up to first ready slot, per model.

    A cold start begins when a request for a model is buffered while no ready server
    runs that model (the moment KEDA's scaler turns active) and ends when one
    becomes ready. Pure: the caller says when requests are buffered and when the
    fleet changed, with the time.
    """

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}
        """Model to when its cold start began."""

    def buffered(self, fleet: Fleet, model: str | None, now: float) -> None:
        """A request naming ``model`` was buffered at ``now``."""
        if model is None or model in self.pending:
            return
        if not any(b.model == model and b.routable for b in fleet):
            self.pending[model] = now

    def changed(self, fleet: Fleet, now: float) -> list[tuple[str, float]]:
        """The cold starts that ended: ``(model, seconds)`` each."""
        if not self.pending:
            return []
        ready = {b.model for b in fleet if b.routable}
        ended = [(m, now - since) for m, since in self.pending.items() if m in ready]
        for model, _ in ended:
            del self.pending[model]
        return ended

    def __repr__(self) -> str:
        return f"<ColdStarts pending={sorted(self.pending)}>"


__all__ = ["ColdStarts", "Demand", "demand_by_model", "model_demand"]
