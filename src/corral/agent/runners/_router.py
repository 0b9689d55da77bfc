"""llama.cpp's router mode: one llama-server that serves many models, each in a
child process it starts and stops on demand (``--models-dir``, ``--models-preset``,
``--models-max``). Pure: answers in, a status out.

What the router answers (read in llama.cpp's ``tools/server/server-models.{h,cpp}``
and checked on the pinned build, see docs/runners.md):

- ``GET /props`` (no ``model``): the router's own ``{"role": "router",
  "max_instances": N, "models_autoload": bool, ...}``, no ``total_slots``. That
  ``role`` is how the agent tells a router from a one-model server.
- ``GET /models`` (also ``/v1/models``): every model it can serve, each with
  ``status.value`` one of ``unloaded``, ``loading``, ``loaded``, ``sleeping``
  (``downloading``/``downloaded`` while fetched from Hugging Face), ``status.args``
  (the child's command line, with its ``--parallel``), and ``status.failed``/
  ``exit_code`` when the child died. Answered by the router itself: safe at any rate.
- ``GET /slots?model=NAME`` is forwarded to that model's child. Without
  ``autoload=false`` it *loads* the model if it is not (evicting the least recently
  used one at ``--models-max``), so the agent asks ``/slots?model=NAME&autoload=false``
  and only for models ``/models`` says are ``loaded`` (never ``sleeping``: the read
  would wake it). ``/slots`` without ``model`` answers 400.
- A request naming an unloaded model makes the router load it (with
  ``--models-autoload``, the default) and answer once loaded; ``POST /models/load``
  answers ``{"success": true}`` at once and the model goes ``loading`` -> ``loaded``
  (400 "model is already running" if it is; 404 for an unknown name).

Each child has its own ``--parallel`` slots. The report's ``slots_total`` is one
child's (the fewest among the loaded ones, else ``--parallel`` from ``status.args``,
else 1) and ``slots_processing`` the busy slots of all children: the balancer shares
one child's worth of slots among all the router's models (see :mod:`corral.core.fleet`).
"""

from __future__ import annotations

import itertools
from typing import Any

from corral.agent.runners.base import Fetched, bounded, failure, status_with
from corral.core.fleet import Condition, ModelState
from corral.protocol.messages import IssueInfo, ModelInfo, ServerStatus

STATES = {
    "loaded": ModelState.LOADED,
    "sleeping": ModelState.SLEEPING,
    "loading": ModelState.LOADING,
    "unloaded": ModelState.UNLOADED,
    "downloaded": ModelState.UNLOADED,
}
"""The router's ``status.value`` -> the state reported (others: not servable now)."""


def is_router(props: Fetched) -> bool:
    """Whether ``/props`` is a router's (``"role": "router"``)."""
    return props.ok and isinstance(props.body, dict) and props.body.get("role") == "router"


def slots_path(model: str) -> str:
    """The ``/slots`` read of one loaded model that never loads it."""
    from urllib.parse import quote

    return f"/slots?model={quote(model, safe='')}&autoload=false"


def router_models(models: Fetched) -> list[dict[str, Any]]:
    """The entries of a router's ``/models`` answer (``[]`` when it is not one)."""
    data = models.body.get("data") if models.ok and isinstance(models.body, dict) else None
    if not isinstance(data, list):
        return []
    return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]]


def model_state(entry: dict[str, Any]) -> str:
    status = entry.get("status")
    value = status.get("value") if isinstance(status, dict) else None
    return value if isinstance(value, str) else "unknown"


def loaded(models: Fetched) -> list[str]:
    """The models whose slots may be read now (``loaded``, not asleep or loading)."""
    return [m["id"] for m in router_models(models) if model_state(m) == "loaded"]


def _failed(entry: dict[str, Any]) -> bool:
    status = entry.get("status")
    if not isinstance(status, dict):
        return False
    code = status.get("exit_code")
    return status.get("failed") is True or (isinstance(code, int) and code != 0)


def _parallel(entry: dict[str, Any]) -> int | None:
    """``--parallel N`` from a model's child command line (``status.args``)."""
    status = entry.get("status")
    args = status.get("args") if isinstance(status, dict) else None
    if not isinstance(args, list):
        return None
    for flag, value in itertools.pairwise(args):
        if flag in ("--parallel", "-np") and isinstance(value, str) and value.isdigit():
            return int(value) or None
    return None


def interpret_router(
    props: Fetched, models: Fetched, slots: dict[str, Fetched] | None = None
) -> ServerStatus:
    """A router's status from its ``/props``, ``/models`` and the ``/slots`` of its
    loaded models (``slots``: model -> answer; missing: not read).

    Models whose child failed (``status.failed``) are left out, with an issue; so are
    unloaded ones when the router does not load on demand (``--no-models-autoload``).
    """
    failed = failure("/models", models)
    if failed is not None:
        return failed
    entries = router_models(models)
    if not entries:
        return status_with(Condition.LOADING, "no_models", "the router lists no model yet")
    body = props.body if isinstance(props.body, dict) else {}
    autoload = body.get("models_autoload") is not False
    max_instances = body.get("max_instances")
    issues: list[IssueInfo] = []
    infos: list[ModelInfo] = []
    per_child: list[int] = []
    processing = 0
    for entry in entries:
        name, value = entry["id"][:1024], model_state(entry)
        state = STATES.get(value)
        if _failed(entry) and state is ModelState.UNLOADED:
            issues.append(IssueInfo("model_failed", f"model {name} failed to load ({value})"))
            continue
        if state is None or (state is ModelState.UNLOADED and not autoload):
            continue  # downloading, unknown, or not loaded on demand
        infos.append(ModelInfo(name, state))
        parallel = _parallel(entry)
        answer = (slots or {}).get(name)
        if state is ModelState.LOADED and answer is not None and answer.ok:
            listed = answer.body if isinstance(answer.body, list) else []
            busy = [s for s in listed if isinstance(s, dict) and s.get("is_processing") is True]
            processing += len(busy)
            if listed:
                parallel = len(listed)
        if parallel is not None:
            per_child.append(parallel)
    if not infos:
        return ServerStatus(condition=Condition.LOADING, issues=issues)
    total = min(per_child) if per_child else 1
    return ServerStatus(
        condition=Condition.READY,
        model=min(info.id for info in infos),  # stable: not the one loaded last
        slots_total=total,
        slots_processing=min(processing, total),
        issues=issues,
        props=bounded(props.body),
        model_list=bounded(models.body),
        models=infos,
        models_max=max_instances if isinstance(max_instances, int) and max_instances > 0 else None,
    )
