"""Each runner adapter against a simulation of its server (tests/support/runner_fakes.py),
and a mixed fleet behind one balancer: the balancer routes by the reports alone."""

from __future__ import annotations

import asyncio

import pytest
from support.harness import Harness, eventually, url
from support.runner_fakes import FakeState, start_fake

from corral.agent.runners import Fetched, make_runner


async def test_vllm_adapter_reads_load_from_the_simulated_metrics(harness: Harness):
    state = FakeState("vllm", models=["meta-llama/Llama-3.1-8B"], external=3, waiting=1)
    runner, port = await start_fake(state)
    try:
        balancer = await harness.balancer()
        agent = await harness.agent(port, balancer, name="v", runner="vllm", concurrency=8)
        status = agent.status
        assert (status.condition, status.runner, status.apis) == ("ready", "vllm", ["openai"])
        assert status.model == "meta-llama/Llama-3.1-8B"
        assert (status.slots_total, status.slots_processing) == (8, 4)  # running + waiting
        assert status.props["kv_cache_usage"] == 0.25
        (backend,) = list(balancer.fleet)
        assert backend.runner == "vllm" and backend.free == 4  # 4 busy from elsewhere
        state.healthy = False  # the engine died: /health answers 503
        await eventually(lambda: agent.status.condition == "error")
        assert "/slots" not in state.seen and "/props" not in state.seen
    finally:
        await runner.cleanup()


async def test_drain_waits_for_the_simulated_engine_to_empty():
    state = FakeState("vllm", external=2)
    runner, port = await start_fake(state)
    import aiohttp

    from corral.agent.runners import RunnerOptions

    adapter = make_runner("vllm", RunnerOptions(poll_interval=0.05))
    loop = asyncio.get_running_loop()
    try:
        async with aiohttp.ClientSession() as session:

            async def get(path: str) -> Fetched:
                async with session.get(f"http://127.0.0.1:{port}{path}") as r:
                    return Fetched(r.status, await r.text())

            assert await adapter.in_flight(get, loop.time) == 2
            started = loop.time()
            state.external = 0
            assert await adapter.in_flight(get, loop.time) == 0
            assert loop.time() - started >= 0.04  # paced by the poll interval
    finally:
        await runner.cleanup()


async def test_sglang_without_metrics_is_ready_and_says_so(harness: Harness):
    state = FakeState("sglang", metrics=False)
    runner, port = await start_fake(state)
    try:
        balancer = await harness.balancer()
        agent = await harness.agent(port, balancer, name="s", runner="sglang", concurrency=4)
        assert agent.status.slots_total == 4
        assert "--enable-metrics" in agent.status.issues[0].message
    finally:
        await runner.cleanup()


async def test_a_mixed_fleet_routes_each_api_to_servers_that_answer_it(harness: Harness):
    balancer = await harness.balancer()
    _, llama_port = await harness.sim(model="gemma", slots=2)
    vllm = FakeState("vllm", models=["llama-8b"], hold=0.05)
    ollama = FakeState("ollama", models=["qwen3:0.6b", "gemma"], loaded=["qwen3:0.6b"])
    plain = FakeState("openai", models=["mistral"])
    fakes = [await start_fake(s) for s in (vllm, ollama, plain)]
    try:
        await harness.agent(llama_port, balancer, name="llama")
        await harness.agent(fakes[0][1], balancer, name="vllm", runner="vllm", concurrency=4)
        await harness.agent(fakes[1][1], balancer, name="ollama", runner="ollama", concurrency=2)
        await harness.agent(fakes[2][1], balancer, name="plain", runner="openai")
        http = harness.http

        async def chat(model: str, path: str = "/v1/chat/completions") -> tuple[int, str]:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(url(balancer, path), json=body) as r:
                return r.status, r.headers.get("X-Corral-Server", "")

        assert await chat("llama-8b") == (200, "vllm")
        assert await chat("qwen3:0.6b") == (200, "ollama")
        assert await chat("mistral") == (200, "plain")
        assert (await chat("qwen3:0.6b", "/api/chat"))[0] == 200  # Ollama's own route
        # llama.cpp's own route goes to llama-server only; no vLLM model serves it
        assert (await chat("gemma", "/completion"))[1] == "llama"
        status, _ = await chat("llama-8b", "/completion")
        assert status == 404
        assert "/completion" not in vllm.seen
        async with http.get(url(balancer, "/v1/models")) as r:
            listed = [entry["id"] for entry in (await r.json())["data"]]
        assert sorted(listed) == ["gemma", "llama-8b", "mistral", "qwen3:0.6b"]
    finally:
        for runner, _ in fakes:
            await runner.cleanup()


async def test_llamacpp_reading_says_when_the_slots_read_began_and_ended():
    # llama-server answers /slots between two batches: the answer comes a while after
    # the agent asked, and the balancer needs both ends of that span
    from corral.agent.runners.llamacpp import LlamaCppRunner

    now = [100.0]
    answers = {
        "/health": Fetched(200, {"status": "ok"}),
        "/props": Fetched(200, {"total_slots": 2, "model_path": "/m/x.gguf"}),
        "/v1/models": Fetched(200, {"data": [{"id": "x"}]}),
        "/lora-adapters": Fetched(200, []),
        "/slots": Fetched(200, [{"id": 0, "is_processing": True}]),
    }

    async def get(path: str) -> Fetched:
        now[0] += 0.2 if path == "/slots" else 0.01  # the answer after the next batch
        return answers[path]

    runner = LlamaCppRunner()
    reading = await runner.read(get, lambda: now[0])
    # /health, /props, /v1/models, /lora-adapters take 0.01 s each, then /slots is asked
    assert (reading.began, reading.ended) == pytest.approx((100.04, 100.24))  # asked, answered
    assert reading.status.slots_processing == 1
    # read again before the quiet gap ends: the same /slots answer, the same span
    reading = await runner.read(get, lambda: now[0])
    assert (reading.began, reading.ended) == pytest.approx((100.04, 100.24))
