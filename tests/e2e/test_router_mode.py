"""llama.cpp's router mode behind Corral: one real llama-server serving two models
(the bundled model under two names), loading the second one on demand."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai import OpenAI
from support.procs import FULL_LENGTH, Fleet, agents, free_port, get_json, models_dir, wait_until

from corral.llamacpp import llama_server_path

pytestmark = pytest.mark.e2e


def test_two_models_of_one_router_through_corral(fleet: Fleet, tmp_path: Path):
    port = free_port()
    fleet._start(
        "router",
        [
            str(llama_server_path()), "--models-dir", str(models_dir(tmp_path)),
            "--models-max", "1", "--host", "127.0.0.1", "--port", str(port),
            "--parallel", "2", "--ctx-size", "1024", "--threads", "1",
        ],
    )  # fmt: skip
    wait_until(lambda: get_json(f"http://127.0.0.1:{port}/health")[0] == 200, 60, "router up")
    _, inference, management = fleet.balancer()
    fleet.agent("router", port, management)
    sdk = OpenAI(base_url=f"http://127.0.0.1:{inference}/v1", api_key="none", max_retries=0)

    listed = sorted(m.id for m in sdk.models.list().data)
    assert listed == ["alpha", "beta"]  # both, though neither is loaded yet
    states = agents(management)["router"]["models"]
    assert states == {"alpha": "unloaded", "beta": "unloaded"}

    for name in ("alpha", "beta", "alpha"):  # each loads on demand (--models-max 1)
        reply = sdk.completions.create(
            model=name, prompt="The capital of France is", max_tokens=4, extra_body=FULL_LENGTH
        )
        assert reply.model == name
        assert reply.usage.completion_tokens == 4
        wait_until(
            lambda name=name: agents(management)["router"]["models"][name] == "loaded",
            30,
            f"{name} reported loaded",
        )
    assert agents(management)["router"]["models"]["beta"] == "unloaded"  # evicted

    # an unknown model is refused at once, not loaded nor buffered
    with pytest.raises(Exception, match="does not exist"):
        sdk.completions.create(model="gamma", prompt="x", max_tokens=1)
