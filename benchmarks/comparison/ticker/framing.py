"""The bytes of the ticker's streams, without I/O.

A stream is what llama-server sends for a streamed chat completion: OpenAI
``chat.completion.chunk`` events as server-sent events (``data: <json>`` and a blank
line), a first event with the assistant role, one event per token, a last event with
``finish_reason`` and ``timings`` (which Corral reads to count tokens), then
``data: [DONE]``. The ticker writes each event in its own HTTP chunk (chunked transfer
encoding), as a decoding server flushes each token. :class:`MarkCounter` counts the
token events in a byte stream read in pieces.
"""

from __future__ import annotations

import json
from typing import Any

MODEL = "ticker"
STREAM_PATH = "/v1/chat/completions"
TOKEN_TEXT = " tok"
TOKEN_MARK = b'"delta":{"content":" tok"}'
"""Occurs once in every token event and in no other event: what the driver counts."""
DONE = b"data: [DONE]\n\n"
CREATED = 1700000000
"""The ``created`` time of every answer (fixed: the ticker's bytes never change)."""


def compact(body: Any) -> bytes:
    """``body`` as JSON without spaces, as llama-server writes it."""
    return json.dumps(body, separators=(",", ":")).encode()


def sse_event(body: Any) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    return b"data: " + compact(body) + b"\n\n"


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of HTTP chunked transfer encoding (empty: the last one)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n"


def chat_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """One OpenAI ``chat.completion.chunk``, in llama-server's field order."""
    return {
        "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
        "created": CREATED,
        "id": "chatcmpl-ticker",
        "model": MODEL,
        "system_fingerprint": "ticker",
        "object": "chat.completion.chunk",
        **extra,
    }


ROLE_EVENT = sse_event(chat_chunk({"role": "assistant", "content": None}))
TOKEN_EVENT = sse_event(chat_chunk({"content": TOKEN_TEXT}))
TOKEN_CHUNK = chunk(TOKEN_EVENT)
"""What the ticker writes per token: one event in one HTTP chunk."""


def final_events(tokens: int, rate: float) -> bytes:
    """The end of a stream: the chunk with ``finish_reason`` and ``timings``, then
    ``data: [DONE]``."""
    timings = {
        "prompt_n": 9,
        "prompt_ms": 1.0,
        "predicted_n": tokens,
        "predicted_ms": round(tokens * 1000.0 / rate, 3),
    }
    return sse_event(chat_chunk({}, "length", timings=timings)) + DONE


def stream_body(tokens: int, rate: float) -> bytes:
    """Every event of one stream, joined (what a client reads, less the framing)."""
    return ROLE_EVENT + TOKEN_EVENT * tokens + final_events(tokens, rate)


class MarkCounter:
    """Counts occurrences of ``mark`` in a byte stream fed in pieces, including those
    split across pieces."""

    __slots__ = ("_keep", "_mark", "_tail")

    def __init__(self, mark: bytes = TOKEN_MARK) -> None:
        self._mark = mark
        self._keep = len(mark) - 1
        self._tail = b""

    def feed(self, data: bytes) -> int:
        """The marks that end in ``data``."""
        joined = self._tail + data
        # The tail is shorter than the mark, so a mark found here ends in ``data``
        # and was not counted before.
        self._tail = joined[-self._keep :] if self._keep else b""
        return joined.count(self._mark)

    def reset(self) -> None:
        self._tail = b""
