"""The simulated llama-server over HTTP, in this process, through aiohttp's test client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from corral.sim import SIM_ENGINE, SimConfig, SimEngine, make_app, serve, start

FAST = SimConfig(tokens_per_second=1e6, prompt_tokens_per_second=1e9)

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    clients: list[TestClient[Any, Any]] = []

    async def make(
        config: SimConfig = FAST, clock: Callable[[], float] = time.monotonic
    ) -> TestClient[Any, Any]:
        server = TestServer(make_app(config, clock=clock))
        await server.start_server(shutdown_timeout=0.5)
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def engine_of(client: TestClient[Any, Any]) -> SimEngine:
    app = client.app
    assert isinstance(app, web.Application)
    return app[SIM_ENGINE]


async def until(condition: Callable[[], bool], within: float = 2.0) -> None:
    """Poll until ``condition`` holds (the server moves on its own; we only watch)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def sse_events(text: str) -> list[str]:
    """The ``data:`` payloads of a server-sent event stream, checking its framing."""
    assert text.endswith("\n\n")
    blocks = text.split("\n\n")[:-1]
    assert all(block.startswith("data: ") for block in blocks), blocks
    return [block.removeprefix("data: ") for block in blocks]


def error(code: int, message: str, kind: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "type": kind}}


# --------------------------------------------------------------------------- info endpoints


async def test_health_props_and_models_describe_the_server(make_client: MakeClient) -> None:
    client = await make_client(SimConfig(name="gpu-7", model="tiny", slots=3, n_ctx=2048))

    health = await client.get("/health")
    assert (health.status, await health.json()) == (200, {"status": "ok"})
    assert health.headers["X-Sim-Server"] == "gpu-7"
    assert health.headers["Server"] == "llama.cpp"
    assert health.headers["Content-Type"] == "application/json; charset=utf-8"

    props = await (await client.get("/props")).json()
    assert props["total_slots"] == 3
    assert props["default_generation_settings"]["n_ctx"] == 2048
    assert props["model_path"] == "/models/tiny.gguf"
    assert props["build_info"] == "sim"
    assert "<|im_start|>" in props["chat_template"]

    for path in ("/v1/models", "/models"):
        models = await (await client.get(path)).json()
        assert models["object"] == "list"
        [entry] = models["data"]
        assert entry["id"] == "tiny"
        assert entry["object"] == "model"
        assert entry["owned_by"] == "llamacpp"
        assert isinstance(entry["created"], int)
        assert isinstance(entry["meta"], dict)


async def test_idle_slots_are_listed_like_llama_server(make_client: MakeClient) -> None:
    client = await make_client(SimConfig(slots=2, n_ctx=1024))
    slots = await (await client.get("/slots")).json()
    assert [s["id"] for s in slots] == [0, 1]
    for slot in slots:
        assert slot["id_task"] == -1
        assert slot["n_ctx"] == 1024
        assert slot["speculative"] is False
        assert slot["is_processing"] is False
        assert isinstance(slot["params"], dict)
        assert slot["next_token"] == [
            {"has_next_token": False, "has_new_line": False, "n_remain": -1, "n_decoded": 0}
        ]


async def test_slots_endpoint_can_be_disabled(make_client: MakeClient) -> None:
    client = await make_client(SimConfig(slots_endpoint=False))
    response = await client.get("/slots")
    assert response.status == 501
    assert await response.json() == error(
        501,
        "This server does not support slots endpoint. Start it with `--slots`",
        "not_supported_error",
    )
    assert (await (await client.get("/props")).json())["total_slots"] == 4


# --------------------------------------------------------------------------- gatekeeping


async def test_api_key_is_required_except_on_public_endpoints(make_client: MakeClient) -> None:
    client = await make_client(SimConfig(api_key="s3cret", tokens_per_second=1e6))
    denied = error(401, "Invalid API Key", "authentication_error")

    for path in ("/props", "/slots", "/nowhere"):
        response = await client.get(path)
        assert (response.status, await response.json()) == (401, denied)
    response = await client.post("/v1/chat/completions", json={"messages": []})
    assert (response.status, await response.json()) == (401, denied)
    wrong = await client.get("/props", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401

    for path in ("/health", "/v1/models"):
        assert (await client.get(path)).status == 200
    assert (await client.get("/props", headers={"Authorization": "Bearer s3cret"})).status == 200
    assert (await client.get("/props", headers={"X-Api-Key": "s3cret"})).status == 200


async def test_a_loading_server_answers_503_until_its_model_is_loaded(
    make_client: MakeClient,
) -> None:
    now = [100.0]
    client = await make_client(
        SimConfig(loading_seconds=30.0, tokens_per_second=1e6), clock=lambda: now[0]
    )
    loading = error(503, "Loading model", "unavailable_error")

    health = await client.get("/health")
    assert (health.status, await health.json()) == (503, loading)
    completion = await client.post("/completion", json={"prompt": "hi"})
    assert (completion.status, await completion.json()) == (503, loading)
    assert (await client.get("/props")).status == 503
    assert (await client.get("/v1/models")).status == 200  # llama-server lets this through
    assert "LOADING" in repr(engine_of(client))

    now[0] += 29.9
    assert (await client.get("/health")).status == 503
    now[0] += 0.2
    assert (await client.get("/health")).status == 200
    assert (await client.post("/completion", json={"prompt": "hi"})).status == 200


async def test_bad_requests_get_llama_server_errors(make_client: MakeClient) -> None:
    client = await make_client()

    async def post(path: str, data: str) -> tuple[int, dict[str, Any]]:
        response = await client.post(path, data=data)
        return response.status, await response.json()

    status, body = await post("/v1/chat/completions", "{bad")
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == 400
    assert "invalid JSON" in body["error"]["message"]

    status, body = await post("/completion", '{"prompt": "x", "n_predict": "many"}')
    assert (status, body["error"]["type"]) == (400, "invalid_request_error")
    assert "n_predict" in body["error"]["message"]

    assert await post("/v1/chat/completions", "{}") == (
        400,
        error(400, "'messages' is required", "invalid_request_error"),
    )
    assert await post("/completion", "{}") == (
        400,
        error(400, "'prompt' is required", "invalid_request_error"),
    )
    status, body = await post("/completion", '{"prompt": ["a", "b"]}')
    assert status == 400


async def test_unknown_routes_and_methods_get_404_json(make_client: MakeClient) -> None:
    client = await make_client()
    not_found = error(404, "File Not Found", "not_found_error")
    for response in (await client.get("/nowhere"), await client.get("/completion")):
        assert (response.status, await response.json()) == (404, not_found)
        assert response.headers["X-Sim-Server"] == "sim"


async def test_a_prompt_larger_than_the_context_is_refused(make_client: MakeClient) -> None:
    client = await make_client(SimConfig(n_ctx=8, tokens_per_second=1e6))
    response = await client.post(
        "/completion", json={"prompt": "one two three four five six seven eight"}
    )
    assert response.status == 400
    body = await response.json()
    assert body["error"]["type"] == "exceed_context_size_error"
    assert "exceeds the available context size (8 tokens)" in body["error"]["message"]


# --------------------------------------------------------------------------- generation


async def test_native_completion_returns_numbered_words(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.post("/completion", json={"prompt": "Once upon a time"})
    assert response.status == 200
    body = await response.json()
    assert body["content"] == " ".join(f"tok{i}" for i in range(16))  # default n_predict
    assert body["stop"] is True
    assert body["stop_type"] == "limit"
    assert body["tokens_predicted"] == 16
    assert body["tokens_evaluated"] == 5  # four words and BOS
    assert body["model"] == "sim-model"
    assert body["timings"]["predicted_n"] == 16
    assert body["timings"]["prompt_n"] == 5
    assert body["timings"]["predicted_ms"] >= 0

    short = await (await client.post("/completion", json={"prompt": "x", "n_predict": 3})).json()
    assert short["content"] == "tok0 tok1 tok2"


async def test_native_stream_ends_with_a_stop_frame_and_no_done(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.post("/completion", json={"prompt": "hi", "n_predict": 4, "stream": 1})
    assert response.status == 400  # stream must be a boolean

    response = await client.post(
        "/completion", json={"prompt": "hi", "n_predict": 4, "stream": True}
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["X-Sim-Server"] == "sim"
    events = [json.loads(e) for e in sse_events(await response.text())]
    *partials, last = events
    assert [e["content"] for e in partials] == ["tok0", " tok1", " tok2", " tok3"]
    assert all(e["stop"] is False for e in partials)
    assert [e["tokens_predicted"] for e in partials] == [1, 2, 3, 4]
    assert last["content"] == ""
    assert last["stop"] is True
    assert last["tokens_predicted"] == 4
    assert last["tokens_evaluated"] == 2
    assert last["timings"]["predicted_n"] == 4


async def test_chat_completion_reports_usage_and_timings(make_client: MakeClient) -> None:
    client = await make_client()
    messages = [{"role": "user", "content": "Hello there"}]
    response = await client.post(
        "/v1/chat/completions", json={"model": "x", "messages": messages, "max_tokens": 5}
    )
    body = await response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "sim-model"
    assert body["id"].startswith("chatcmpl-")
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "tok0 tok1 tok2 tok3 tok4"}
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5
    assert usage["prompt_tokens"] > 2
    assert body["timings"]["predicted_n"] == 5

    newer = await client.post(
        "/v1/chat/completions", json={"messages": messages, "max_completion_tokens": 2}
    )
    assert (await newer.json())["usage"]["completion_tokens"] == 2


async def test_chat_stream_sends_role_content_finish_usage_and_done(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    response = await client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.headers["Content-Type"] == "text/event-stream"
    *frames, done = sse_events(await response.text())
    assert done == "[DONE]"
    chunks = [json.loads(f) for f in frames]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    role, *content, finish, usage = chunks
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert [c["choices"][0]["delta"]["content"] for c in content] == ["tok0", " tok1", " tok2"]
    assert all(c["choices"][0]["finish_reason"] is None for c in [role, *content])
    assert finish["choices"] == [{"finish_reason": "length", "index": 0, "delta": {}}]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 3
    assert usage["timings"]["predicted_n"] == 3


async def test_chat_stream_without_usage_ends_with_finish_then_done(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    response = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True},
    )
    *frames, done = sse_events(await response.text())
    assert done == "[DONE]"
    last = json.loads(frames[-1])
    assert last["choices"][0]["finish_reason"] == "length"
    assert "usage" not in last
    assert last["timings"]["predicted_n"] == 2
    assert all("usage" not in json.loads(f) for f in frames)


async def test_text_completion_stops_at_a_stop_word(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.post(
        "/v1/completions", json={"prompt": "hi", "max_tokens": 10, "stop": ["tok3"]}
    )
    body = await response.json()
    assert body["object"] == "text_completion"
    [choice] = body["choices"]
    assert choice == {
        "text": "tok0 tok1 tok2 ",
        "index": 0,
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert body["usage"]["completion_tokens"] == 4

    response = await client.post(
        "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "stream": True}
    )
    *frames, done = sse_events(await response.text())
    assert done == "[DONE]"
    chunks = [json.loads(f) for f in frames]
    assert [c["choices"][0]["text"] for c in chunks] == ["tok0", " tok1", ""]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 2  # always, as llama-server does


async def test_a_model_that_ends_early_finishes_with_stop(make_client: MakeClient) -> None:
    client = await make_client(SimConfig(eos_after=3, tokens_per_second=1e6))
    body = await (
        await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10},
        )
    ).json()
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2"
    assert body["choices"][0]["finish_reason"] == "stop"

    native = await (
        await client.post("/completion", json={"prompt": "hi", "n_predict": 6, "ignore_eos": True})
    ).json()
    assert (native["tokens_predicted"], native["stop_type"]) == (6, "limit")


async def test_embeddings_and_tokens(make_client: MakeClient) -> None:
    client = await make_client()
    body = await (await client.post("/v1/embeddings", json={"input": ["a b", "c"]})).json()
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    again = await (await client.post("/v1/embeddings", json={"input": "a b"})).json()
    assert again["data"][0]["embedding"] == body["data"][0]["embedding"]
    assert body["data"][0]["embedding"] != body["data"][1]["embedding"]

    tokens = (await (await client.post("/tokenize", json={"content": "Hello world"})).json())[
        "tokens"
    ]
    assert len(tokens) == 2
    pieces = await (
        await client.post("/tokenize", json={"content": "Hello world", "with_pieces": True})
    ).json()
    assert [p["piece"] for p in pieces["tokens"]] == ["Hello", " world"]
    text = await (await client.post("/detokenize", json={"tokens": tokens})).json()
    assert text == {"content": "Hello world"}


async def test_embeddings_can_be_disabled(make_client: MakeClient) -> None:
    client = await make_client(SimConfig(embeddings=False))
    response = await client.post("/v1/embeddings", json={"input": "a"})
    assert response.status == 501
    assert (await response.json())["error"]["type"] == "not_supported_error"


async def test_the_openai_sdk_understands_the_answers() -> None:
    import openai  # a dev dependency: installed by scripts/install, never skipped

    runner, port = await start(SimConfig(tokens_per_second=1e6, api_key="k"))
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
    try:
        messages = [{"role": "user", "content": "hi"}]
        reply = await client.chat.completions.create(model="any", messages=messages, max_tokens=3)
        assert reply.choices[0].message.content == "tok0 tok1 tok2"
        assert reply.usage.completion_tokens == 3

        stream = await client.chat.completions.create(
            model="any",
            messages=messages,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            usage = chunk.usage or usage
        assert text == "tok0 tok1 tok2"
        assert usage is not None and usage.total_tokens == usage.prompt_tokens + 3

        models = [m.id async for m in await client.models.list()]
        assert models == ["sim-model"]
        with pytest.raises(openai.AuthenticationError):
            await client.with_options(api_key="wrong").chat.completions.create(
                model="any", messages=messages
            )
    finally:
        await client.close()
        await runner.cleanup()


# --------------------------------------------------------------------------- slots & speed


async def test_requests_wait_for_a_slot_in_arrival_order(make_client: MakeClient) -> None:
    client = await make_client(SimConfig(slots=1, tokens_per_second=100.0))
    engine = engine_of(client)
    finished: list[str] = []

    async def ask(label: str, n_predict: int) -> None:
        response = await client.post("/completion", json={"prompt": label, "n_predict": n_predict})
        assert response.status == 200
        assert (await response.json())["tokens_predicted"] == n_predict
        finished.append(label)

    first = asyncio.create_task(ask("first", 20))
    await until(lambda: engine.table.busy == 1)
    second = asyncio.create_task(ask("second", 1))
    await until(lambda: engine.table.queued == 1)
    third = asyncio.create_task(ask("third", 1))
    await until(lambda: engine.table.queued == 2)

    slots = await (await client.get("/slots")).json()
    [slot] = slots
    assert slot["is_processing"] is True
    assert slot["id_task"] == 0
    assert slot["next_token"][0]["has_next_token"] is True
    assert slot["next_token"][0]["n_decoded"] + slot["next_token"][0]["n_remain"] == 20
    assert "1/1 busy, 2 queued" in repr(engine)

    async with asyncio.timeout(5):  # only reached if a slot is never freed
        await asyncio.gather(first, second, third)
    assert finished == ["first", "second", "third"]
    assert (engine.table.busy, engine.table.queued) == (0, 0)


async def test_busy_slots_slow_each_other_down(make_client: MakeClient) -> None:
    # 100 tok/s alone; with slowdown 1.0 two busy slots run at 50 tok/s each.
    config = SimConfig(slots=2, tokens_per_second=100.0, slowdown=1.0)
    client = await make_client(config)

    async def predicted_ms() -> float:
        response = await client.post("/completion", json={"prompt": "x", "n_predict": 20})
        return float((await response.json())["timings"]["predicted_ms"])

    async with asyncio.timeout(5):  # only reached if a slot is never freed
        alone = await predicted_ms()
        together = await asyncio.gather(predicted_ms(), predicted_ms())
    assert 190 <= alone < 330  # 20 tokens x 10 ms
    assert all(t > 330 for t in together)  # 20 tokens x 20 ms


async def test_a_very_fast_server_answers_at_once(make_client: MakeClient) -> None:
    client = await make_client(SimConfig(tokens_per_second=1e6, slots=2))
    started = time.monotonic()
    async with asyncio.timeout(5):  # only reached if a slot is never freed
        results = await asyncio.gather(
            *(client.post("/completion", json={"prompt": "x", "n_predict": 2000}) for _ in range(4))
        )
    bodies = [await r.json() for r in results]
    assert time.monotonic() - started < 1.0
    assert all(b["tokens_predicted"] == 2000 for b in bodies)


# --------------------------------------------------------------------------- disconnects


async def test_a_client_leaving_mid_stream_frees_its_slot(make_client: MakeClient) -> None:
    client = await make_client(SimConfig(slots=1, tokens_per_second=50.0))
    engine = engine_of(client)
    response = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000, "stream": True},
    )
    first = await response.content.readline()
    assert first.startswith(b"data: ")
    assert engine.table.busy == 1
    response.close()

    await until(lambda: engine.table.busy == 0, within=1.0)
    async with asyncio.timeout(5):
        after = await client.post("/completion", json={"prompt": "x", "n_predict": 1})
        assert (await after.json())["content"] == "tok0"


async def test_a_client_leaving_a_plain_request_frees_its_slot(make_client: MakeClient) -> None:
    client = await make_client(SimConfig(slots=1, tokens_per_second=50.0))
    engine = engine_of(client)
    request = asyncio.create_task(
        client.post("/completion", json={"prompt": "x", "n_predict": 999})
    )
    await until(lambda: engine.table.busy == 1)
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    await until(lambda: engine.table.busy == 0, within=1.0)


async def test_a_client_leaving_the_queue_loses_its_place(make_client: MakeClient) -> None:
    client = await make_client(SimConfig(slots=1, tokens_per_second=50.0))
    engine = engine_of(client)
    holder = await client.post(
        "/completion", json={"prompt": "x", "n_predict": 999, "stream": True}
    )
    await holder.content.readline()
    waiting = asyncio.create_task(client.post("/completion", json={"prompt": "y", "n_predict": 1}))
    await until(lambda: engine.table.queued == 1)

    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await until(lambda: engine.table.queued == 0, within=1.0)
    assert engine.table.busy == 1  # the holder still runs
    holder.close()
    await until(lambda: engine.table.busy == 0, within=1.0)


async def test_a_leaving_client_is_noticed_even_without_handler_cancellation() -> None:
    # aiohttp's default runner does not cancel handlers when clients leave; the next
    # decoding step notices the closed connection instead.
    app = make_app(SimConfig(slots=1, tokens_per_second=50.0))
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    table = app[SIM_ENGINE].table
    try:
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(
                session.post(
                    f"http://127.0.0.1:{port}/completion", json={"prompt": "x", "n_predict": 999}
                )
            )
            await until(lambda: table.busy == 1)
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
        await until(lambda: table.busy == 0, within=1.0)
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- lifecycle


async def test_start_listens_on_a_free_port() -> None:
    runner, port = await start(SimConfig(name="loopback", tokens_per_second=1e6))
    try:
        assert port > 0
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/completion", json={"prompt": "x", "n_predict": 2}
            ) as response,
        ):
            assert response.headers["X-Sim-Server"] == "loopback"
            assert (await response.json())["content"] == "tok0 tok1"
    finally:
        await runner.cleanup()


async def test_serve_logs_its_port_and_stops_when_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="corral.sim")
    task = asyncio.create_task(serve(SimConfig(name="served"), "127.0.0.1", 0))
    await until(lambda: "listening on" in caplog.text)
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)", caplog.text).group(1))  # type: ignore[union-attr]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/health") as response,
    ):
        assert response.headers["X-Sim-Server"] == "served"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert "stopped" in caplog.text
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{port}/health")


async def test_a_conversation_reuses_its_cached_prefix_and_says_so(
    make_client: MakeClient,
) -> None:
    # prefill is slow here (100 tokens/s): a cached history makes the next turn fast
    client = await make_client(SimConfig(tokens_per_second=1e6, prompt_tokens_per_second=100))
    history = [{"role": "system", "content": " ".join(["context"] * 40)}]
    history.append({"role": "user", "content": "first question"})
    first = await (
        await client.post("/v1/chat/completions", json={"messages": history, "max_tokens": 2})
    ).json()
    t = first["timings"]
    assert t["cache_n"] == 0 and t["prompt_n"] == first["usage"]["prompt_tokens"] > 40
    assert t["prompt_ms"] >= 1000 * t["prompt_n"] / 100 * 0.9
    history += [{"role": "assistant", "content": "tok0 tok1"}, {"role": "user", "content": "more"}]
    response = await client.post(
        "/v1/chat/completions",
        json={
            "messages": history,
            "max_tokens": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    *frames, _ = sse_events(await response.text())
    last = json.loads(frames[-1])
    t = last["timings"]
    assert t["cache_n"] >= first["usage"]["prompt_tokens"] - 1  # the first turn's prompt
    assert t["cache_n"] + t["prompt_n"] == last["usage"]["prompt_tokens"]
    assert last["usage"]["prompt_tokens_details"] == {"cached_tokens": t["cache_n"]}
    assert t["prompt_ms"] < 1000 * 20 / 100  # only the new turn was read


@pytest.mark.parametrize(
    ("value", "reused"), [(False, False), (True, True), (None, True), (0, True)]
)
async def test_cache_prompt_false_reuses_nothing_and_other_values_mean_true(
    make_client: MakeClient, value: object, reused: bool
) -> None:
    # llama-server reads a field of the wrong type as its default (true)
    client = await make_client(SimConfig(tokens_per_second=1e6, prompt_tokens_per_second=1e5))
    body = {"prompt": "the same prompt again, " * 20, "n_predict": 1}
    assert (await client.post("/completion", json=body)).status == 200
    answer = await client.post("/completion", json={**body, "cache_prompt": value})
    assert answer.status == 200
    assert ((await answer.json())["timings"]["cache_n"] > 0) is reused
