"""The balancer posing as one llama-server: fleet-wide ``/health``, ``/props``,
``/slots`` and ``/v1/models``, built from the fleet's state (pure functions).

The shapes follow llama-server's, so anything that reads a llama-server (a Corral
agent included) can read a balancer, and balancers stack in a tree.
"""

from __future__ import annotations

from typing import Any

from corral.core.fleet import Backend, Fleet


def not_ready(fleet: Fleet) -> dict[str, Any] | None:
    """The answer of every fleet route while no server is ready, else ``None``.

    llama-server answers every endpoint with 503 and this error while it loads its
    model; a fleet with no ready server (all loading, down, or none registered yet: a
    fleet scaling from zero) answers the same, so clients and balancers above that wait
    for a server to load wait for Corral alike. ``corral.reason`` says why in words.
    """
    if any(backend.routable for backend in fleet):
        return None
    states = sorted({backend.state.value for backend in fleet})
    reason = (
        "no server has registered"
        if not len(fleet)
        else f"no server is ready ({', '.join(states)})"
    )
    return {
        "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"},
        "corral": {"reason": reason},
    }


def health(fleet: Fleet) -> tuple[int, dict[str, Any]]:
    """200 with the fleet's idle and busy slots while a server is ready, else 503 as
    llama-server answers while loading (see :func:`not_ready`)."""
    down = not_ready(fleet)
    if down is not None:
        return 503, {**down, "slots_idle": 0, "slots_processing": 0}
    idle, processing = fleet.totals()
    return 200, {"status": "ok", "slots_idle": idle, "slots_processing": processing}


def _ready(fleet: Fleet) -> list[Backend]:
    return [backend for backend in fleet if backend.routable]


def props(fleet: Fleet) -> dict[str, Any]:
    """The fleet's ``/props``: every field one ready server reports, as it reports it
    (the first registered ready server; any server when none is ready), except:

    - ``total_slots``: the sum over the ready servers;
    - ``is_sleeping``: true only while every server that reports it sleeps (a request
      to a balancer wakes at most one server);
    - ``corral``: added, the balancer's own (agents, ready agents, models).
    """
    ready = _ready(fleet)
    sources = [backend.props for backend in (ready or list(fleet)) if backend.props]
    base: dict[str, Any] = dict(sources[0]) if sources else {}
    base["total_slots"] = sum(backend.slots_total for backend in ready)
    sleeping = [p["is_sleeping"] for p in sources if isinstance(p.get("is_sleeping"), bool)]
    if sleeping:
        base["is_sleeping"] = all(sleeping)
    base["corral"] = {
        "agents": len(fleet),
        "agents_ready": len(ready),
        "models": fleet.models(),
    }
    return base


SLOTS_DISABLED = {
    "code": 501,
    "message": "This server does not support slots endpoint. Start it with `--slots`",
    "type": "not_supported_error",
}
"""llama-server's answer to ``GET /slots`` when started with ``--no-slots``."""


def slots(fleet: Fleet) -> tuple[int, Any]:
    """``/slots``: one entry per slot of the ready servers, in llama-server's format,
    numbered across the fleet (see :func:`slot_owner`); each entry adds ``corral``
    (the agent and the slot's id on its server). 501 as llama-server answers when
    every ready server runs with ``--no-slots``.

    Returns:
        ``(status, body)``.
    """
    ready = _ready(fleet)
    if ready and all(_slots_disabled(backend) for backend in ready):
        return 501, {"error": SLOTS_DISABLED}
    entries: list[dict[str, Any]] = []
    for backend in ready:
        n_ctx = _n_ctx(backend)
        busy = backend.busy
        for index in range(backend.slots_total):
            entries.append(
                {
                    "id": len(entries),
                    "n_ctx": n_ctx,
                    "speculative": False,
                    "is_processing": index < busy,
                    "corral": {"agent": backend.name, "id": index},
                }
            )
    return 200, entries


def slot_owner(fleet: Fleet, fleet_slot: int) -> tuple[Backend, int] | None:
    """The server and local slot id behind a fleet slot id of :func:`slots`, or
    ``None`` when there is no such slot.

    Fleet slots number the ready servers' slots in registration order: the first
    server's slots 0..n-1, then the next server's. The numbering holds while the set
    of ready servers does not change.
    """
    if fleet_slot < 0:
        return None
    for backend in _ready(fleet):
        if fleet_slot < backend.slots_total:
            return backend, fleet_slot
        fleet_slot -= backend.slots_total
    return None


def _slots_disabled(backend: Backend) -> bool:
    return any(issue.code == "slots_disabled" for issue in backend.issues)


def _n_ctx(backend: Backend) -> int:
    settings = backend.props.get("default_generation_settings")
    if isinstance(settings, dict):
        value = settings.get("n_ctx")
        if isinstance(value, int):
            return value
    return 0


def models(fleet: Fleet, created: int) -> dict[str, Any]:
    """``/v1/models`` (and ``/models``): every model the fleet serves.

    Each model's entries are what one of its servers answered (``data`` in OpenAI's
    format with llama-server's ``aliases``, ``tags``, ``architecture`` and ``meta``;
    ``models`` in Ollama's), with ``corral`` added to each ``data`` entry: how many
    agents serve the model and how many are ready. A server whose agent sent no list
    (an older agent) gets a minimal entry; ``created`` is then its Unix time. Each LoRA
    adapter the servers have loaded is a model too, as vLLM lists them: its ``id`` the
    adapter's name, its ``parent`` the base model.
    """
    data: list[dict[str, Any]] = []
    ollama: list[dict[str, Any]] = []
    for model in fleet.models():
        backends = [backend for backend in fleet if model in backend.serves]
        ready = [backend for backend in backends if backend.routable]
        loaded = [backend for backend in ready if model in backend.hot]
        entry, listed = _listed(ready + [a for a in backends if not a.routable], model)
        if entry is None:
            entry = {"id": model, "object": "model", "created": created, "owned_by": "llamacpp"}
        entry["corral"] = {"agents": len(backends), "agents_ready": len(ready)}
        if len(loaded) != len(ready):  # some serve it on demand (llama.cpp's router mode)
            entry["corral"]["agents_loaded"] = len(loaded)
        data.append(entry)
        ollama.extend(listed)
    for name, bases in fleet.adapters().items():
        if fleet.is_adapter(name):  # a model's name wins over an adapter's
            data.append(_adapter_entry(fleet, name, bases, created))
    body: dict[str, Any] = {"object": "list", "data": data}
    return {"models": ollama, **body} if ollama else body


def _adapter_entry(
    fleet: Fleet, name: str, bases: list[str | None], created: int
) -> dict[str, Any]:
    """A LoRA adapter as a model of its own, as vLLM lists one: ``parent`` is the base
    model (the first, if servers of several models have an adapter of that name)."""
    backends = [b for b in fleet if b.adapter(name) is not None]
    ready = [b for b in backends if b.routable]
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "llamacpp",
        "root": name,
        "parent": next((m for m in bases if m is not None), None),
        "corral": {"agents": len(backends), "agents_ready": len(ready), "adapter": True},
    }


def _listed(backends: list[Backend], model: str) -> tuple[dict[str, Any] | None, list[Any]]:
    """The first of these agents' ``/v1/models`` entries for ``model`` (a copy), and
    the Ollama-style ``models`` entries that came with it."""
    for backend in backends:
        data = backend.model_list.get("data")
        if not isinstance(data, list):
            continue
        for entry in data:
            if isinstance(entry, dict) and entry.get("id") == model:
                listed = backend.model_list.get("models")
                return dict(entry), list(listed) if isinstance(listed, list) else []
    return None, []
