"""LoRA adapters on real llama-servers: a small adapter for the bundled model is
written at test time (tests/support/lora.py); answers through Corral naming the adapter
equal llama-server's own answers for that adapter and seed, and differ from the base
model's."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.lora import make_adapter
from support.procs import Fleet, agent_state, get_json, wait_until

from corral.llamacpp import bundled_model

pytestmark = pytest.mark.e2e

# cache_prompt off: this llama-server build may reuse a slot's cached prompt computed
# under another adapter (see docs/lora.md), which would make answers depend on order
ASK = {"prompt": "The capital of France is", "n_predict": 8, "temperature": 0, "seed": 1}
ASK |= {"cache_prompt": False}


def post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("lora")
    one = make_adapter(bundled_model(), where / "tone-a.gguf", seed=1)
    two = make_adapter(bundled_model(), where / "tone-b.gguf", seed=2)
    return one, two


def test_answers_through_corral_equal_llama_servers_own_for_the_adapter(fleet: Fleet, adapters):
    one, two = adapters
    _, server = fleet.llama_server("a", 1, 1024, "--lora-scaled", f"{one}:0,{two}:0")
    _, inference, management = fleet.balancer()
    fleet.agent("a", server, management)
    listed = {m["id"]: m for m in get_json(f"http://127.0.0.1:{inference}/v1/models")[1]["data"]}
    assert listed["tone-a"]["parent"] == listed["tone-b"]["parent"] != "tone-a"
    base = next(m for m in listed if not m.startswith("tone-"))

    direct = {
        "tone-a": post(server, "/completion", ASK | {"lora": [{"id": 0, "scale": 1}]}),
        "tone-b": post(server, "/completion", ASK | {"lora": [{"id": 1, "scale": 1}]}),
        base: post(server, "/completion", ASK),
    }
    through = {name: post(inference, "/completion", ASK | {"model": name}) for name in direct}
    for name in direct:
        assert through[name]["content"] == direct[name]["content"], name
    assert through["tone-a"]["content"] != through[base]["content"]
    assert through["tone-b"]["content"] != through["tone-a"]["content"]


def test_supervisor_mode_loads_adapters_by_name(fleet: Fleet, adapters):
    one, _ = adapters
    _, _, management = fleet.balancer()
    fleet._start(
        "agent-s",
        [
            sys.executable, "-m", "corral", "agent", "--model", str(bundled_model()),
            "--slots", "1", "--ctx-size", "1024", "--threads", "1",
            "--management-addr", f"127.0.0.1:{management}", "--name", "s",
            "--poll-interval", "0.1", "--lora", f"sql={one}",
        ],
    )  # fmt: skip
    wait_until(lambda: agent_state(management, "s") == "ready", 120, "s ready")
    agent = get_json(f"http://127.0.0.1:{management}/api/v1/agents")[1]["agents"][0]
    assert [(a["name"], a["path"], a["scale"]) for a in agent["adapters"]] == [
        ("sql", str(one), 0.0)
    ]
