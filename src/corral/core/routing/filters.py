"""Filters: which backends may serve a request at all.

Theory of operation
-------------------
Filters run first and cheaply, in order:

1. **Model pool** (:func:`resolve_pools`): which models may serve the request. With
   one model in the fleet any ``model`` value is accepted, as llama-server does; with
   several, ``model`` picks the pool and an unknown one is rejected. Servers that name
   no model take requests that name none, or any name when no server names one.
2. **Capacity** (:func:`with_free_slot`): routable backends of those pools with a
   free slot, most free slots first, ties in rotating order, from the fleet's index
   (no scan of the fleet: the cost grows with the number of distinct free-slot
   counts, not with the number of backends).
   A backend that serves several models (llama.cpp's router mode) is in the index
   of each model it has loaded.
3. **Loaders** (:func:`loaders`): when no routable backend has a model loaded at all,
   the backends that can load it (router mode), those already loading it first,
   then the most room for another model, then the most free slots. The request is
   sent there and the router loads the model before it answers.
4. **Pin** (:func:`pinned`): a request that names a fleet slot (``id_slot``) may go
   only to that slot's backend, and waits for it.
4. **Adapter** (:func:`has_adapter`, :class:`HasAdapter` as a rule): a request that
   names a LoRA adapter as its model may go only to a server that has it loaded. Its
   pools are the models of those servers (:func:`resolve_pools`).

A filter that vetoes by some other property of a backend (a LoRA adapter it lacks,
a priority class it does not serve) is a :class:`Rule`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from corral.core.fleet import Backend, Fleet
from corral.core.routing.decision import Reject, Wait
from corral.core.routing.request import RequestInfo


class Rule(Protocol):
    """A filter that may veto a candidate for a request."""

    def accepts(self, backend: Backend, request: RequestInfo) -> bool: ...


def resolve_pools(fleet: Fleet, request: RequestInfo) -> list[str | None] | Reject | Wait:
    """The models whose servers may take this request.

    Model identity: a model the fleet has ever seen (:meth:`Fleet.seen_models`) is
    served by that model only, so a request for it waits while its servers are
    loading, down or draining (then 503 from the buffer), never answered by another
    model. Any name is accepted only while the fleet has seen at most one model;
    with several, an unknown name is rejected. Servers that name no model take
    requests that name none, or any name when the fleet has seen at most one model.

    API family: when servers of those models are registered and none answers the
    route's API (``/completion`` on a fleet of vLLM servers), the request is rejected
    at once (404) rather than buffered until it times out."""
    if not len(fleet):
        return Wait("no server has registered yet")
    if request.adapter is not None:  # the models of the servers that have it loaded
        with_it = fleet.adapter_models(request.adapter)
        if not with_it:
            return Wait(f"no server has adapter {request.adapter} loaded now")
        if request.api is not None and not fleet.answers(request.api, with_it):
            route = f"{request.path} ({request.api}'s API)"
            return Reject(404, f"no server with adapter {request.adapter} answers {route}")
        return with_it
    models = fleet.models()
    if request.model is None:
        pools = [*models, None]
    elif fleet.has_seen(request.model):
        pools = [request.model]
    elif len(fleet.seen_models()) <= 1:  # one model (or none named): any name will do
        pools = [*models, None]
    else:
        seen = fleet.seen_models()
        return Reject(
            404,
            f"The model `{request.model}` does not exist. Available models: {', '.join(seen)}",
            tuple(seen),
        )
    api = request.api
    if api is not None and fleet.has_backends(pools) and not fleet.answers(api, pools):
        of = f" of `{request.model}`" if request.model in models else ""
        return Reject(404, f"no server{of} in the fleet answers {request.path} ({api}'s API)")
    return pools


def answers(backend: Backend, request: RequestInfo) -> bool:
    """Whether a backend answers the request's API family."""
    return request.api is None or request.api in backend.apis


def has_adapter(backend: Backend, request: RequestInfo) -> bool:
    """Whether a backend has the LoRA adapter the request names loaded (or it names none)."""
    return request.adapter is None or backend.adapter(request.adapter) is not None


class HasAdapter:
    """:func:`has_adapter` as a :class:`Rule` (the policies apply it always)."""

    def accepts(self, backend: Backend, request: RequestInfo) -> bool:
        return has_adapter(backend, request)

    def __repr__(self) -> str:
        return "HasAdapter()"


def with_free_slot(fleet: Fleet, pools: list[str | None]) -> Iterator[Backend]:
    """Routable backends of ``pools`` with a free slot, most free slots first."""
    return fleet.candidates(pools)


def loaders(fleet: Fleet, pools: list[str | None]) -> Iterator[Backend]:
    """Backends that can load one of ``pools`` and have a free slot, when no routable
    backend has any of them loaded (see :meth:`Fleet.loaders`); else none: a request
    waits for a server that has its model loaded rather than loading it twice."""
    if fleet.has_hot(pools):
        return iter(())
    return iter(fleet.loaders(pools))


def pinned(candidates: Iterator[Backend], request: RequestInfo) -> Iterator[Backend]:
    """Only the backend the request is pinned to, if it is."""
    if request.backend_id is None:
        return candidates
    return (b for b in candidates if b.id == request.backend_id)


def in_pools(backend: Backend, pools: list[str | None]) -> bool:
    """Whether a backend found some other way (the prefix index) passes the pool filter."""
    return any(model in pools for model in backend.hot)
