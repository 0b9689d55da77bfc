"""Each runner adapter on canned answers, in the shapes its server documents."""

from __future__ import annotations

import pytest

from corral.agent.runners import RUNNERS, RunnerOptions, make_runner, ollama, openai
from corral.agent.runners._metered import interpret as metered
from corral.agent.runners._prometheus import gauges
from corral.agent.runners.base import Fetched
from corral.agent.runners.sglang import SglangRunner
from corral.agent.runners.vllm import VllmRunner

MODELS = Fetched(
    200, {"object": "list", "data": [{"id": "meta-llama/Llama-3.1-8B", "object": "model"}]}
)

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B"} 1.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B"} 0.5
vllm:iteration_tokens_total_bucket{le="1.0",model_name="meta-llama/Llama-3.1-8B"} 3.0
this line is not prometheus
"""

SGLANG_METRICS = """\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 4.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 0.0
sglang:token_usage{model_name="m"} 0.28
"""


VLLM_SCRAPE = Fetched(200, VLLM_METRICS)


def vllm(health, models=MODELS, metrics=VLLM_SCRAPE, concurrency=8):
    return metered(
        health, models, metrics, concurrency=concurrency, names=VllmRunner.gauges, runner="vllm"
    )


def test_every_runner_is_registered_by_name_with_what_it_answers():
    assert set(RUNNERS) == {"llamacpp", "vllm", "sglang", "ollama", "openai"}
    assert RUNNERS["llamacpp"].apis == ("openai", "llamacpp")
    assert RUNNERS["vllm"].apis == ("openai",)
    assert RUNNERS["ollama"].apis == ("openai", "ollama")
    with pytest.raises(ValueError, match="known: llamacpp"):
        make_runner("tgi")


def test_concurrency_comes_from_configuration_or_the_runners_default():
    assert make_runner("vllm").concurrency == 256  # vLLM's default --max-num-seqs
    assert make_runner("ollama").concurrency == 1  # OLLAMA_NUM_PARALLEL's default
    assert make_runner("vllm", RunnerOptions(concurrency=16)).concurrency == 16


def test_prometheus_gauges_are_summed_over_label_sets():
    found = gauges(VLLM_METRICS, {"vllm:num_requests_running", "vllm:num_requests_waiting"})
    assert found == {"vllm:num_requests_running": 5.0, "vllm:num_requests_waiting": 1.0}
    assert gauges("x NaN\ny 2\n", {"x", "y"}) == {"y": 2.0}


def test_vllm_ready_reports_running_plus_waiting_as_busy_slots():
    status = vllm(Fetched(200, None))
    assert status.condition == "ready"
    assert status.model == "meta-llama/Llama-3.1-8B"
    assert (status.slots_total, status.slots_processing) == (8, 6)
    assert status.props == {"requests_running": 5.0, "requests_waiting": 1.0, "kv_cache_usage": 0.5}
    assert status.model_list == MODELS.body
    assert status.issues == []


def test_vllm_busy_never_exceeds_its_concurrency():
    assert vllm(Fetched(200, None), concurrency=4).slots_processing == 4


def test_vllm_dead_engine_unreachable_and_wrong_key():
    assert vllm(Fetched(503, None), None, None).condition == "error"
    assert "engine" in vllm(Fetched(503, None), None, None).issues[0].message
    assert vllm(Fetched(error="Connection refused"), None, None).condition == "unreachable"
    denied = vllm(Fetched(200, None), Fetched(401, {"error": "Unauthorized"}), None)
    assert denied.condition == "unauthorized"


def test_vllm_healthy_but_models_not_read_yet_is_loading():
    assert vllm(Fetched(200, None), None, None).condition == "loading"


def test_metrics_that_fail_leave_it_ready_with_an_issue():
    status = vllm(Fetched(200, None), metrics=Fetched(500, "oops"))
    assert status.condition == "ready"
    assert status.slots_processing == 0
    assert [i.code for i in status.issues] == ["metrics_unavailable"]


def test_sglang_reads_its_own_gauges_and_says_how_to_enable_metrics():
    def sglang(metrics):
        return metered(
            Fetched(200, None), MODELS, metrics, concurrency=10, names=SglangRunner.gauges,
            runner="sglang",
        )  # fmt: skip

    status = sglang(Fetched(200, SGLANG_METRICS))
    assert (status.slots_total, status.slots_processing) == (10, 4)
    assert status.props["kv_cache_usage"] == 0.28
    off = sglang(Fetched(404, {"detail": "Not Found"}))
    assert off.condition == "ready"
    assert "--enable-metrics" in off.issues[0].message
    assert "--enable-metrics" not in sglang(Fetched(200, "nothing here")).issues[0].message


TAGS = Fetched(
    200, {"models": [{"name": "gemma3:270m", "model": "gemma3:270m"}, {"name": "qwen3:0.6b"}]}
)
PS = Fetched(200, {"models": [{"name": "qwen3:0.6b", "size_vram": 1, "expires_at": "x"}]})
VERSION = Fetched(200, {"version": "0.12.6"})


def test_ollama_prefers_a_loaded_model_and_lists_every_model_once():
    status = ollama.interpret(VERSION, TAGS, PS, concurrency=4)
    assert status.condition == "ready"
    assert status.model == "qwen3:0.6b"  # loaded first
    assert [e["id"] for e in status.model_list["data"]] == ["qwen3:0.6b", "gemma3:270m"]
    assert status.model_list["models"] == TAGS.body["models"]
    assert (status.slots_total, status.slots_processing) == (4, 0)  # no in-flight count
    assert status.props == {"loaded_models": ["qwen3:0.6b"], "version": "0.12.6"}


def test_ollama_with_nothing_loaded_names_its_first_model():
    status = ollama.interpret(VERSION, TAGS, Fetched(200, {"models": []}), concurrency=1)
    assert status.model == "gemma3:270m"


def test_ollama_without_models_and_odd_answers():
    empty = Fetched(200, {"models": []})
    status = ollama.interpret(VERSION, empty, empty, concurrency=1)
    assert status.condition == "ready" and status.model is None
    assert "ollama pull" in status.issues[0].message
    assert ollama.interpret(VERSION, Fetched(200, []), empty, concurrency=1).condition == (
        "bad_response"
    )
    down = ollama.interpret(Fetched(error="Connection refused"), concurrency=1)
    assert down.condition == "unreachable"
    assert ollama.interpret(VERSION, concurrency=1).condition == "loading"


def test_openai_runner_reads_the_models_only_until_ready_then_only_that_it_answers():
    """llama-cpp-python answers /v1/models under its model lock (a read ends the stream
    in flight): once ready, the agent reads a path no model lock guards, and reads the
    models anew only after the server stopped answering."""
    import asyncio

    runner = openai.OpenAIRunner(RunnerOptions(concurrency=2))
    answers = {
        "/v1/models": [Fetched(error="refused"), MODELS, MODELS, MODELS],
        "/health": [
            Fetched(404, None, "undecodable"),
            Fetched(error="timed out"),
            MODELS,
            Fetched(503, {"error": "engine dead"}),
        ],
    }
    asked: list[str] = []

    async def get(path: str) -> Fetched:
        asked.append(path)
        return answers[path].pop(0)

    def read() -> str:
        return asyncio.run(runner.read(get, lambda: 0.0)).status.condition

    assert read() == "unreachable"  # not up yet
    assert read() == "ready"
    assert read() == "ready"  # a 404 is a server that answers
    assert read() == "unreachable"
    assert read() == "ready"  # up again: its models are read anew
    assert read() == "ready"
    assert read() == "error"  # a 5xx: unhealthy
    assert (
        asked == ["/v1/models", "/v1/models", "/health", "/health", "/v1/models"] + ["/health"] * 2
    )


def test_openai_server_is_ready_when_it_lists_models():
    status = openai.interpret(MODELS, concurrency=3)
    assert (status.condition, status.model, status.slots_total) == (
        "ready",
        "meta-llama/Llama-3.1-8B",
        3,
    )
    assert openai.interpret(Fetched(200, {"data": []}), concurrency=1).issues[0].code == (
        "no_model_id"
    )
    assert openai.interpret(Fetched(200, ["x"]), concurrency=1).condition == "bad_response"
    assert openai.interpret(Fetched(401, None), concurrency=1).condition == "unauthorized"
    assert openai.interpret(Fetched(error="refused"), concurrency=1).condition == "unreachable"
