"""Rolling a new desired state through the supervised agents. Pure logic.

Theory of operation
-------------------
The operator sets a desired state (model, slots, context...), numbered by a
generation. Each supervised agent reports the generation it runs
(``applied_generation``), whether it is busy applying one (``applying``) and the
last generation that failed on it (``failed_generation``).

:func:`plan` picks which agents start changing now. A change is: the balancer
drains the agent (sends it nothing new) until its requests finish, then tells it to
apply; the agent restarts its server and reports the new generation, or goes back
to its last working settings and reports the failure. At most ``share`` of the
supervised agents change at once (at least one), and never all of them when there
are several, so the fleet keeps serving. A generation that failed anywhere halts
the rollout: the same settings would most likely fail on the next agent too.
"""

from __future__ import annotations

from collections.abc import Iterable

from corral.core.fleet import Agent


def changing(agent: Agent) -> bool:
    return agent.draining or agent.applying


def halted(agents: Iterable[Agent], generation: int) -> bool:
    return any(a.failed_generation == generation for a in agents if a.supervised)


def plan(agents: Iterable[Agent], generation: int, share: float = 0.0) -> list[str]:
    """Agents to start draining now for ``generation`` (0: no desired state yet)."""
    supervised = [a for a in agents if a.supervised]
    if generation <= 0 or halted(supervised, generation):
        return []
    busy = sum(1 for a in supervised if changing(a))
    pending = [a for a in supervised if not changing(a) and a.applied_generation != generation]
    limit = max(1, int(share * len(supervised)))
    if len(supervised) > 1:
        limit = min(limit, len(supervised) - 1)
    return [a.id for a in pending[: max(0, limit - busy)]]


def ready_to_apply(agent: Agent, now: float, drain_timeout: float) -> bool:
    """A draining agent gets the Apply once its requests finished (or drain timed out)."""
    return agent.draining and (agent.reserved == 0 or now - agent.drain_started >= drain_timeout)


def done(agent: Agent, generation: int) -> bool:
    """The agent finished with this generation: applied it, or failed and rolled back."""
    return not agent.applying and generation in (agent.applied_generation, agent.failed_generation)
