"""llama-server's JSON and SSE shapes, for :mod:`corral.sim.server`.

Every body the simulator sends is built here, in the field order and with the values a
real llama-server build sends: errors, ``/props``, ``/slots``, ``/models``,
``/v1/embeddings``, and the answers and stream chunks of the three generation formats
(native ``/completion``, OpenAI text and chat), with their ``usage`` and ``timings``.
Nothing here waits or keeps state; the server decides and this module only shapes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import msgspec
from aiohttp import web

from corral.sim.model import (
    CHAT_TEMPLATE,
    EMBEDDING_DIM,
    N_VOCAB,
    Plan,
    SlotView,
    Timings,
    token_id,
)

# What llama-server reports as its sampling defaults (common/common.h).
DEFAULT_PARAMS: dict[str, Any] = {
    "seed": 4294967295,
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "n_predict": -1,
    "max_tokens": -1,
    "n_keep": 0,
    "stream": False,
    "stop": [],
    "ignore_eos": False,
    "chat_format": "Content-only",
    "samplers": [
        "penalties",
        "dry",
        "top_n_sigma",
        "top_k",
        "typ_p",
        "top_p",
        "min_p",
        "xtc",
        "temperature",
    ],
}


# --------------------------------------------------------------------------- framing

SSE_HEADERS = {"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
SSE_DONE = b"data: [DONE]\n\n"
"""The last frame of an OpenAI stream."""


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body),
        status=status,
        headers={"Content-Type": "application/json; charset=utf-8"},
    )


def sse(frames: list[dict[str, Any]]) -> bytes:
    """Server-sent events: one ``data: {...}`` frame each."""
    return b"".join(b"data: " + msgspec.json.encode(f) + b"\n\n" for f in frames)


# --------------------------------------------------------------------------- bodies


def error_body(code: int, message: str, kind: str) -> dict[str, Any]:
    """llama-server's error format: ``{"error": {code, message, type}}``."""
    return {"error": {"code": code, "message": message, "type": kind}}


def props_body(
    *, model: str, n_ctx: int, slots: int, n_predict: int, slots_endpoint: bool
) -> dict[str, Any]:
    """``/props``; ``n_predict`` is the server's default token budget."""
    params = {**DEFAULT_PARAMS, "n_predict": n_predict, "max_tokens": n_predict}
    return {
        "default_generation_settings": {"params": params, "n_ctx": n_ctx},
        "total_slots": slots,
        "model_alias": model,
        "model_path": f"/models/{model}.gguf",
        "modalities": {"vision": False, "audio": False},
        "endpoint_slots": slots_endpoint,
        "endpoint_props": False,
        "endpoint_metrics": False,
        "chat_template": CHAT_TEMPLATE,
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "build_info": "sim",
        "is_sleeping": False,
    }


def slot_json(view: SlotView, n_ctx: int) -> dict[str, Any]:
    """One entry of ``/slots``."""
    return {
        "id": view.id,
        "id_task": view.task,
        "n_ctx": n_ctx,
        "speculative": False,
        "is_processing": view.is_processing,
        "n_prompt_tokens": view.n_prompt,
        "params": dict(view.params) if view.params else dict(DEFAULT_PARAMS),
        "next_token": [
            {
                "has_next_token": view.is_processing,
                "has_new_line": False,
                "n_remain": view.n_remain,
                "n_decoded": view.n_decoded,
            }
        ],
    }


def models_body(model: str, n_ctx: int, created: int) -> dict[str, Any]:
    """``/models`` and ``/v1/models``: the Ollama-style list and the OpenAI one together."""
    meta = {
        "vocab_type": 1,
        "n_vocab": N_VOCAB,
        "n_ctx": n_ctx,
        "n_ctx_train": n_ctx,
        "n_embd": EMBEDDING_DIM,
    }
    return {
        "models": [
            {
                "name": model,
                "model": model,
                "type": "model",
                "capabilities": ["completion"],
                "details": {"format": "gguf"},
            }
        ],
        "object": "list",
        "data": [
            {
                "id": model,
                "aliases": [model],
                "object": "model",
                "created": created,
                "owned_by": "llamacpp",
                "meta": meta,
            }
        ],
    }


def embeddings_body(model: str, vectors: list[list[float]], n_tokens: int) -> dict[str, Any]:
    """``/v1/embeddings``: one vector per input, in order."""
    data = [
        {"embedding": vector, "index": i, "object": "embedding"} for i, vector in enumerate(vectors)
    ]
    return {
        "model": model,
        "object": "list",
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        "data": data,
    }


# --------------------------------------------------------------------------- generation


class Run(Protocol):
    """What the generation formats read of a running request."""

    @property
    def slot(self) -> int: ...
    @property
    def plan(self) -> Plan: ...
    @property
    def n_prompt(self) -> int: ...
    @property
    def n_cached(self) -> int:
        """Prompt tokens reused from the slot's cache."""
        ...

    @property
    def n_decoded(self) -> int:
        """Tokens decoded so far."""
        ...

    def timings(self) -> Timings: ...


def usage(run: Run) -> dict[str, Any]:
    return {
        "completion_tokens": run.n_decoded,
        "prompt_tokens": run.n_prompt,
        "total_tokens": run.n_prompt + run.n_decoded,
        "prompt_tokens_details": {"cached_tokens": run.n_cached},
    }


def timings(run: Run) -> dict[str, int | float]:
    return run.timings().to_json()


class Format(Protocol):
    """One generation endpoint's answer: whole, or as stream chunks."""

    @property
    def done(self) -> bool:
        """Whether the stream ends with ``data: [DONE]``."""
        ...

    def opening(self) -> list[dict[str, Any]]: ...
    def partial(self, piece: str, run: Run) -> list[dict[str, Any]]: ...
    def final(self, run: Run) -> list[dict[str, Any]]: ...
    def whole(self, run: Run) -> dict[str, Any]: ...


class NativeFormat:
    """``/completion``: llama.cpp's own format."""

    done: ClassVar[bool] = False

    def __init__(self, model: str, prompt: str, params: dict[str, Any]) -> None:
        self.model = model
        self.prompt = prompt
        self.params = params

    def opening(self) -> list[dict[str, Any]]:
        return []

    def partial(self, piece: str, run: Run) -> list[dict[str, Any]]:
        frame = {
            "index": 0,
            "content": piece,
            "tokens": [token_id(piece)],
            "stop": False,
            "id_slot": -1,
            "tokens_predicted": run.n_decoded,
            "tokens_evaluated": run.n_prompt,
        }
        return [frame]

    def final(self, run: Run) -> list[dict[str, Any]]:
        return [self._result(run, content="")]

    def whole(self, run: Run) -> dict[str, Any]:
        return self._result(run, content=run.plan.text)

    def _result(self, run: Run, content: str) -> dict[str, Any]:
        return {
            "index": 0,
            "content": content,
            "tokens": [],
            "id_slot": run.slot,
            "stop": True,
            "model": self.model,
            "tokens_predicted": run.n_decoded,
            "tokens_evaluated": run.n_prompt,
            "generation_settings": self.params,
            "prompt": "<bos>" + self.prompt,
            "has_new_line": "\n" in run.plan.text,
            "truncated": False,
            "stop_type": run.plan.stop_type,
            "stopping_word": run.plan.stopping_word,
            "tokens_cached": run.n_prompt + run.n_decoded,
            "timings": timings(run),
        }


class _OpenAIFormat:
    """What the OpenAI formats share: id, created, model, fingerprint."""

    done: ClassVar[bool] = True
    object: ClassVar[str]

    def __init__(self, model: str, ident: str, created: int) -> None:
        self.head = {
            "created": created,
            "model": model,
            "system_fingerprint": "sim",
            "object": self.object,
            "id": ident,
        }

    def opening(self) -> list[dict[str, Any]]:
        return []


class TextFormat(_OpenAIFormat):
    """``/v1/completions``."""

    object = "text_completion"

    def partial(self, piece: str, run: Run) -> list[dict[str, Any]]:
        return [{"choices": [self._choice(piece, None)], **self.head}]

    def final(self, run: Run) -> list[dict[str, Any]]:
        # llama-server puts usage in the last chunk whether or not it was asked for.
        choice = self._choice("", run.plan.finish_reason)
        return [
            {"choices": [choice], **self.head, "usage": usage(run), "timings": timings(run)},
        ]

    def whole(self, run: Run) -> dict[str, Any]:
        choice = self._choice(run.plan.text, run.plan.finish_reason)
        return {"choices": [choice], **self.head, "usage": usage(run), "timings": timings(run)}

    @staticmethod
    def _choice(text: str, finish: str | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}


class ChatFormat(_OpenAIFormat):
    """``/v1/chat/completions``; usage gets a chunk of its own only when asked for."""

    object = "chat.completion.chunk"

    def __init__(self, model: str, ident: str, created: int, *, include_usage: bool) -> None:
        super().__init__(model, ident, created)
        self.include_usage = include_usage

    def opening(self) -> list[dict[str, Any]]:
        return [self._chunk({"role": "assistant", "content": None}, None)]

    def partial(self, piece: str, run: Run) -> list[dict[str, Any]]:
        return [self._chunk({"content": piece}, None)]

    def final(self, run: Run) -> list[dict[str, Any]]:
        last = self._chunk({}, run.plan.finish_reason)
        if not self.include_usage:
            return [{**last, "timings": timings(run)}]
        tail = {"choices": [], **self.head, "usage": usage(run), "timings": timings(run)}
        return [last, tail]

    def whole(self, run: Run) -> dict[str, Any]:
        message = {"role": "assistant", "content": run.plan.text}
        choice = {"finish_reason": run.plan.finish_reason, "index": 0, "message": message}
        head = {**self.head, "object": "chat.completion"}
        return {"choices": [choice], **head, "usage": usage(run), "timings": timings(run)}

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"choices": [{"finish_reason": finish, "index": 0, "delta": delta}], **self.head}
