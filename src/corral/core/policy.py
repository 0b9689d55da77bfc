"""The routing policy: which server gets a request.

Theory of operation
-------------------
``Policy.pick(fleet, request)`` is a pure function of the fleet as it is at that
moment (the caller does not await between the pick and the reservation, so the fleet
it reads is a consistent snapshot). It answers one of:

- :class:`Dispatch`: send it to this backend (the caller reserves the slot at once);
- :class:`Wait`: no server can take it now; buffer it;
- :class:`Reject`: it can never be served as asked (an unknown model).

A pick runs in three steps, each a place to extend the policy:

1. **Pools** (:func:`resolve_pools`): which models may serve the request. With one
   model in the fleet any ``model`` value is accepted, as llama-server does; with
   several, ``model`` picks the pool and an unknown one is rejected. Servers that
   name no model take requests that name none, or any name when no server names one.
2. **Candidates**: routable backends of those pools with a free slot, most free slots
   first, ties in rotating order (from the fleet's index; no scan of the fleet).
3. **Pin**: a request pinned to one agent (``RequestInfo.agent_id``) waits for it.
4. **Rules**: each :class:`Rule` may veto a candidate (a LoRA adapter it lacks, a
   priority class it does not serve...). The first candidate no rule vetoes wins.
   Preferences such as prefix-cache affinity fit here as a rule that vetoes every
   candidate but the preferred one while the preferred one has a free slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from corral.core.fleet import Backend, Fleet


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the policy knows of a request: its route, the model it asks for, and the
    one agent it must go to, if any (a request that names a fleet slot, ``id_slot``)."""

    path: str
    model: str | None = None
    backend_id: str | None = None
    api: str | None = None
    """The route's API family (:func:`corral.core.endpoints.api_of`); only servers
    that answer it may take the request. None: any server."""

    @property
    def group(self) -> tuple[str | None, ...]:
        """Requests that wait in one queue: the same model, the same pinned agent and
        the same API family (a pinned request never holds up others while its agent is
        busy, nor an Ollama request those a vLLM server could take)."""
        return self.model, self.backend_id, self.api


@dataclass(frozen=True, slots=True)
class Dispatch:
    backend_id: str


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    status: int
    message: str
    models: tuple[str, ...] = ()


Decision = Dispatch | Wait | Reject


class Rule(Protocol):
    """A piece of policy that may veto a candidate for a request."""

    def accepts(self, backend: Backend, request: RequestInfo) -> bool: ...


def resolve_pools(fleet: Fleet, request: RequestInfo) -> list[str | None] | Reject | Wait:
    """The models whose servers may take this request."""
    if not len(fleet):
        return Wait("no server has registered yet")
    models = fleet.models()
    if request.model is None:
        pools = [*models, None]
    elif request.model in models:
        pools = [request.model]
    elif len(models) <= 1:  # one model (or servers that name none): any name will do
        pools = [*models, None]
    else:
        return _unknown_model(request, models)
    if request.api is not None and not fleet.answers(request.api, pools):
        of = f" of `{request.model}`" if request.model in models else ""
        return Reject(
            404, f"no server{of} in the fleet answers {request.path} ({request.api}'s API)"
        )
    return pools


def _unknown_model(request: RequestInfo, models: list[str]) -> Reject:
    return Reject(
        404,
        f"The model `{request.model}` does not exist. Available models: {', '.join(models)}",
        tuple(models),
    )


class Policy:
    """Most free slots first, with optional rules. See the module docstring."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self.rules = tuple(rules)

    def pick(self, fleet: Fleet, request: RequestInfo) -> Decision:
        pools = resolve_pools(fleet, request)
        if not isinstance(pools, list):
            return pools
        for backend in fleet.candidates(pools):
            if request.backend_id is not None and backend.id != request.backend_id:
                continue
            if request.api is not None and request.api not in backend.apis:
                continue
            if all(rule.accepts(backend, request) for rule in self.rules):
                return Dispatch(backend.id)
        return Wait("no free slot")

    def __repr__(self) -> str:
        return f"<Policy most-free-slots rules={list(self.rules)}>"
