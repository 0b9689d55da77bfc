"""Rolling a new desired state through the supervised agents. Pure logic.

Theory of operation
-------------------
The operator sets a desired state (model, slots, context...), numbered by a
generation. Each supervised agent reports the generation it runs
(``applied_generation``), whether it is busy applying one (``applying``) and the
last generation that failed on it (``failed_generation``).

:func:`plan` picks which agents start changing now. A change is: the balancer
drains the backend (cordons it: sends it nothing new, then waits until its requests
finish), then tells its agent to apply; the agent restarts its server and reports
the new generation, or goes back to its last working settings and reports the
failure. At most ``share`` of the
supervised agents change at once (at least one), and never all of them when there
are several, so the fleet keeps serving. A generation that failed anywhere halts
the rollout: the same settings would most likely fail on the next agent too.
"""

from __future__ import annotations

from collections.abc import Iterable

from corral.core.fleet import Backend


def changing(backend: Backend) -> bool:
    return backend.cordoned or backend.applying


def halted(backends: Iterable[Backend], generation: int) -> bool:
    return any(a.failed_generation == generation for a in backends if a.supervised)


def plan(backends: Iterable[Backend], generation: int, share: float = 0.0) -> list[str]:
    """Backends to start draining now for ``generation`` (0: no desired state yet)."""
    supervised = [a for a in backends if a.supervised]
    if generation <= 0 or halted(supervised, generation):
        return []
    busy = sum(1 for a in supervised if changing(a))
    pending = [a for a in supervised if not changing(a) and a.applied_generation != generation]
    limit = max(1, int(share * len(supervised)))
    if len(supervised) > 1:
        limit = min(limit, len(supervised) - 1)
    return [a.id for a in pending[: max(0, limit - busy)]]


def ready_to_apply(backend: Backend, now: float, drain_timeout: float) -> bool:
    """A cordoned backend's agent gets the Apply once its requests finished (or drain timed out)."""
    return backend.cordoned and (
        backend.reserved == 0 or now - backend.cordoned_at >= drain_timeout
    )


def done(backend: Backend, generation: int) -> bool:
    """The agent finished with this generation: applied it, or failed and rolled back."""
    return not backend.applying and generation in (
        backend.applied_generation,
        backend.failed_generation,
    )
