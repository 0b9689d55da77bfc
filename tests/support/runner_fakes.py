"""Simulations of the runners that cannot run here (vLLM, SGLang, Ollama, a plain
OpenAI-compatible server), built from their documentation: the endpoints the agent
reads, in the shapes those projects document, and one OpenAI chat route (plus
Ollama's ``/api/chat``) that holds each request for ``hold`` seconds so load shows.

Sources (see docs/runners.md): vLLM's ``entrypoints/openai/api_server.py`` (``/health``
answers 200 with an empty body, 503 once the engine died) and "Production Metrics"
(``vllm:num_requests_running``... labelled ``model_name`` and ``engine``); SGLang's
"Production Metrics" (``sglang:num_running_reqs``... only with ``--enable-metrics``);
Ollama's API reference (``/api/version``, ``/api/tags``, ``/api/ps``, ``/api/chat``);
OpenAI's ``GET /v1/models``. Unknown routes answer 404 as each server does (FastAPI's
``{"detail": "Not Found"}``, Ollama's ``404 page not found``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeState:
    kind: str  # vllm, sglang, ollama, openai
    models: list[str] = field(default_factory=lambda: ["fake-model"])
    loaded: list[str] = field(default_factory=list)  # ollama: /api/ps
    healthy: bool = True
    metrics: bool = True  # sglang: --enable-metrics
    waiting: int = 0  # requests queued inside the engine (set by tests)
    external: int = 0  # running requests that did not come through the balancer
    hold: float = 0.0  # seconds each generation takes
    running: int = 0
    seen: list[str] = field(default_factory=list)  # paths asked, in order


def _metrics_text(state: FakeState) -> str:
    running = state.running + state.external
    model = state.models[0] if state.models else ""
    if state.kind == "vllm":
        labels = f'engine="0",model_name="{model}"'
        return (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{labels}}} {float(running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{labels}}} {float(state.waiting)}\n"
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{{{labels}}} 0.25\n"
            "# TYPE vllm:iteration_tokens_total histogram\n"
            f'vllm:iteration_tokens_total_bucket{{le="1.0",{labels}}} 3.0\n'
        )
    labels = f'engine_type="unified",model_name="{model}",pp_rank="0",tp_rank="0"'
    return (
        "# HELP sglang:num_running_reqs The number of running requests.\n"
        "# TYPE sglang:num_running_reqs gauge\n"
        f"sglang:num_running_reqs{{{labels}}} {float(running)}\n"
        "# HELP sglang:num_queue_reqs The number of requests in the waiting queue.\n"
        "# TYPE sglang:num_queue_reqs gauge\n"
        f"sglang:num_queue_reqs{{{labels}}} {float(state.waiting)}\n"
        "# TYPE sglang:token_usage gauge\n"
        f"sglang:token_usage{{{labels}}} 0.28\n"
    )


def _openai_models(state: FakeState) -> dict[str, Any]:
    owner = {"vllm": "vllm", "sglang": "sglang", "ollama": "library"}.get(state.kind, "me")
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": owner}
            for m in state.models
        ],
    }


def _ollama_entry(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-01T00:00:00Z",
        "size": 291_000_000,
        "digest": "a" * 64,
        "details": {"format": "gguf", "family": "gemma3", "parameter_size": "268M"},
    }


def fake_app(state: FakeState) -> web.Application:
    """An aiohttp app that answers as ``state.kind`` does."""

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        state.seen.append(request.path)
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPNotFound:
            if state.kind == "ollama":
                return web.Response(status=404, text="404 page not found")
            return web.json_response({"detail": "Not Found"}, status=404)

    app = web.Application(middlewares=[record])

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200 if state.healthy else 503)

    async def models(request: web.Request) -> web.Response:
        return web.json_response(_openai_models(state))

    async def metrics(request: web.Request) -> web.Response:
        if state.kind == "sglang" and not state.metrics:
            raise web.HTTPNotFound
        return web.Response(text=_metrics_text(state), content_type="text/plain")

    async def generate(request: web.Request) -> web.Response:
        body = await request.json()
        state.running += 1
        try:
            await asyncio.sleep(state.hold)
        finally:
            state.running -= 1
        model = body.get("model") or state.models[0]
        if state.kind == "ollama" and model not in state.loaded:
            state.loaded.append(model)  # Ollama loads a model on its first request
        if request.path == "/api/chat":
            return web.Response(
                text=json.dumps(
                    {
                        "model": model,
                        "created_at": "2025-01-01T00:00:00Z",
                        "message": {"role": "assistant", "content": "hello"},
                        "done": True,
                    }
                ),
                content_type="application/json",
            )
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"hello from {state.kind}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", generate)
    if state.kind in ("vllm", "sglang"):
        app.router.add_get("/health", health)
        app.router.add_get("/metrics", metrics)
    if state.kind == "ollama":

        async def version(request: web.Request) -> web.Response:
            return web.json_response({"version": "0.12.6"})

        async def tags(request: web.Request) -> web.Response:
            return web.json_response({"models": [_ollama_entry(m) for m in state.models]})

        async def ps(request: web.Request) -> web.Response:
            entries = [
                {**_ollama_entry(m), "size_vram": 291_000_000, "expires_at": "2099-01-01T00:00:00Z"}
                for m in state.loaded
            ]
            return web.json_response({"models": entries})

        app.router.add_get("/api/version", version)
        app.router.add_get("/api/tags", tags)
        app.router.add_get("/api/ps", ps)
        app.router.add_post("/api/chat", generate)
    return app


async def start_fake(state: FakeState) -> tuple[web.AppRunner, int]:
    """Serve a fake on a free loopback port; ``(runner, port)``."""
    runner = web.AppRunner(fake_app(state))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]
