"""llama.cpp's router mode, on answers shaped as the pinned llama-server gave them."""

from __future__ import annotations

import asyncio
from typing import Any

from corral.agent.runners._router import interpret_router, is_router, slots_path
from corral.agent.runners.base import Fetched, RunnerOptions
from corral.agent.runners.llamacpp import LlamaCppRunner
from corral.core.fleet import Condition, ModelState

PROPS = {"role": "router", "max_instances": 1, "models_autoload": True, "model_path": "none"}


def entry(name: str, value: str, parallel: int = 2, **status: Any) -> dict[str, Any]:
    args = ["llama-server", "--alias", name, "--model", f"m/{name}.gguf", "--parallel"]
    return {
        "id": name,
        "object": "model",
        "owned_by": "llamacpp",
        "status": {"value": value, "args": [*args, str(parallel)], **status},
    }


def ok(body: Any) -> Fetched:
    return Fetched(status=200, body=body)


def slots(*busy: bool) -> Fetched:
    return ok([{"id": i, "is_processing": b} for i, b in enumerate(busy)])


def test_props_of_a_router_is_told_apart() -> None:
    assert is_router(ok(PROPS))
    assert not is_router(ok({"total_slots": 4, "model_path": "x.gguf"}))
    assert slots_path("a b/c") == "/slots?model=a%20b%2Fc&autoload=false"


def test_every_model_with_its_state() -> None:
    models = ok({"data": [entry("beta", "unloaded"), entry("alpha", "loaded")]})
    status = interpret_router(ok(PROPS), models, {"alpha": slots(True, False)})
    assert status.condition is Condition.READY
    assert [(m.id, m.state) for m in status.models] == [
        ("beta", ModelState.UNLOADED),
        ("alpha", ModelState.LOADED),
    ]
    assert status.model == "alpha"  # the first by name, whatever is loaded
    assert (status.slots_total, status.slots_processing) == (2, 1)
    assert status.models_max == 1


def test_nothing_loaded_takes_slots_from_the_child_command_line() -> None:
    models = ok({"data": [entry("a", "unloaded", parallel=3), entry("b", "sleeping", 4)]})
    status = interpret_router(ok(PROPS), models, {})
    assert (status.slots_total, status.slots_processing) == (3, 0)
    assert [m.state for m in status.models] == [ModelState.UNLOADED, ModelState.SLEEPING]


def test_failed_and_not_autoloaded_models_are_left_out() -> None:
    models = ok(
        {"data": [entry("a", "unloaded", failed=True, exit_code=1), entry("b", "unloaded")]}
    )
    status = interpret_router(ok(PROPS), models, {})
    assert [m.id for m in status.models] == ["b"]
    assert [i.code for i in status.issues] == ["model_failed"]
    manual = interpret_router(ok({**PROPS, "models_autoload": False}), models, {})
    assert manual.condition is Condition.LOADING and not manual.models


def test_models_unreachable_or_empty() -> None:
    assert interpret_router(ok(PROPS), Fetched(error="refused")).condition is (
        Condition.UNREACHABLE
    )
    assert interpret_router(ok(PROPS), ok({"data": []})).condition is Condition.LOADING


def test_runner_reads_slots_of_loaded_models_only_and_never_loads_one() -> None:
    asked: list[str] = []
    answers = {
        "/health": ok({"status": "ok"}),
        "/props": ok(PROPS),
        "/models": ok({"data": [entry("alpha", "loaded"), entry("beta", "unloaded")]}),
        slots_path("alpha"): slots(False, True),
    }

    async def get(path: str) -> Fetched:
        asked.append(path)
        return answers[path]

    runner = LlamaCppRunner(RunnerOptions(slots_gap=1.25))
    now = [0.0]
    reading = asyncio.run(runner.read(get, lambda: now[0]))
    assert asked == ["/health", "/props", "/models", slots_path("alpha")]
    assert reading.status.slots_processing == 1
    assert asyncio.run(runner.in_flight(get, lambda: 10.0)) == 1
    asked.clear()
    now[0] = 10.5  # within the quiet gap of the last /slots answer: not read again
    asyncio.run(runner.read(get, lambda: now[0]))
    assert asked == ["/health", "/props", "/models"]
