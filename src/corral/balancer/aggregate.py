"""The balancer posing as one llama-server: fleet-wide ``/health``, ``/props``,
``/slots`` and ``/v1/models``, built from the fleet's state (pure functions).

The shapes follow llama-server's, so anything that reads a llama-server (a Corral
agent included) can read a balancer, and balancers stack in a tree.
"""

from __future__ import annotations

from typing import Any

from corral.core.fleet import Backend, Fleet


def health(fleet: Fleet) -> tuple[int, dict[str, Any]]:
    """200 with the fleet's idle and busy slots while a server is ready, else 503."""
    idle, processing = fleet.totals()
    if any(backend.routable for backend in fleet):
        return 200, {"status": "ok", "slots_idle": idle, "slots_processing": processing}
    states = sorted({backend.state.value for backend in fleet})
    reason = (
        "no server has registered"
        if not len(fleet)
        else f"no server is ready ({', '.join(states)})"
    )
    error = {"code": 503, "message": f"Corral: {reason}", "type": "unavailable_error"}
    return 503, {"error": error, "slots_idle": 0, "slots_processing": 0}


def _ready(fleet: Fleet) -> list[Backend]:
    return [backend for backend in fleet if backend.routable]


def props(fleet: Fleet) -> dict[str, Any]:
    """One ready server's ``/props`` with the fleet's ``total_slots``."""
    ready = _ready(fleet)
    base: dict[str, Any] = {}
    for backend in ready or list(fleet):
        if backend.props:
            base = dict(backend.props)
            break
    base["total_slots"] = sum(backend.slots_total for backend in ready)
    base["corral"] = {
        "agents": len(fleet),
        "agents_ready": len(ready),
        "models": fleet.models(),
    }
    return base


def slots(fleet: Fleet) -> list[dict[str, Any]]:
    """One synthetic entry per slot of the ready servers, in llama-server's format."""
    entries: list[dict[str, Any]] = []
    for backend in _ready(fleet):
        n_ctx = _n_ctx(backend)
        busy = backend.busy
        for index in range(backend.slots_total):
            entries.append(
                {
                    "id": len(entries),
                    "id_task": -1,
                    "n_ctx": n_ctx,
                    "speculative": False,
                    "is_processing": index < busy,
                    "corral_agent": backend.name,
                }
            )
    return entries


def _n_ctx(backend: Backend) -> int:
    settings = backend.props.get("default_generation_settings")
    if isinstance(settings, dict):
        value = settings.get("n_ctx")
        if isinstance(value, int):
            return value
    return 0


def models(fleet: Fleet, created: int) -> dict[str, Any]:
    """``/v1/models``: every model the fleet serves, in OpenAI's list format.

    ``created`` is a Unix time (llama-server gives its own start time).
    """
    data = []
    for model in fleet.models():
        backends = [backend for backend in fleet if backend.model == model]
        data.append(
            {
                "id": model,
                "object": "model",
                "created": created,
                "owned_by": "llamacpp",
                "meta": {
                    "corral_agents": len(backends),
                    "corral_agents_ready": sum(1 for a in backends if a.routable),
                },
            }
        )
    return {"object": "list", "data": data}
