"""What a policy answers: dispatch to a backend, wait in the buffer, or reject."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dispatch:
    backend_id: str


@dataclass(frozen=True, slots=True)
class Wait:
    """``free``: a backend with a free slot the request chose not to take (it waits
    for a busy one that serves it better); the scheduler may give that slot to a
    request waiting behind it (:meth:`~corral.core.scheduler.Scheduler.assign`)."""

    reason: str
    free: str | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    status: int
    message: str
    models: tuple[str, ...] = ()


Decision = Dispatch | Wait | Reject
