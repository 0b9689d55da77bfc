"""How the load generator speaks to an endpoint: request bodies and answers. Pure.

Three APIs are spoken, all served by llama-server and by Corral:

- ``chat``: OpenAI's ``/v1/chat/completions``;
- ``completions``: OpenAI's ``/v1/completions``;
- ``llamacpp``: llama.cpp's own ``/completion``.

Streamed answers are Server-Sent Events. :class:`SSEParser` cuts a byte stream into
events whatever the chunking, and :func:`read_event` says what one event carries:
generated text (one token per event, as llama-server streams), the final usage, the
end, or an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from corral.bench.workload import Call

Api = Literal["chat", "completions", "llamacpp"]
APIS: tuple[Api, ...] = ("chat", "completions", "llamacpp")
PATHS: dict[Api, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "llamacpp": "/completion",
}


def request_body(call: Call, api: Api, *, model: str | None, ignore_eos: bool) -> bytes:
    """The JSON body for ``call``. ``ignore_eos`` (a llama.cpp extension) makes the
    server generate exactly ``max_tokens`` tokens, so lengths follow the workload."""
    body: dict[str, Any] = {}
    if model:
        body["model"] = model
    if api == "chat":
        body["messages"] = [{"role": m.role, "content": m.content} for m in call.messages]
        body["max_tokens"] = call.max_tokens
    elif api == "completions":
        body["prompt"] = call.prompt
        body["max_tokens"] = call.max_tokens
    else:
        body["prompt"] = call.prompt
        body["n_predict"] = call.max_tokens
    body["stream"] = call.stream
    if call.stream and api != "llamacpp":
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        body["ignore_eos"] = True
    return msgspec.json.encode(body)


class SSEParser:
    """Cuts a Server-Sent Events byte stream into the ``data`` of each event."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of every event completed by ``chunk`` (multi-line data joined)."""
        self._buffer += chunk
        if b"\r" in self._buffer:  # CRLF line ends (a CR may end one chunk, its LF the next)
            self._buffer = self._buffer.replace(b"\r\n", b"\n")
        events = []
        while (end := self._buffer.find(b"\n\n")) >= 0:
            block, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            data = [
                line[5:].removeprefix(b" ")
                for line in block.split(b"\n")
                if line.startswith(b"data:")
            ]
            if data:
                events.append(b"\n".join(data))
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not finished yet (left over when a stream ends early)."""
        return self._buffer


@dataclass(frozen=True, slots=True)
class Event:
    """What one streamed event carries."""

    tokens: int = 0
    """Generated tokens in it (0 or 1: llama-server sends one per event)."""
    text: str = ""
    """The generated text in it."""
    usage_tokens: int | None = None
    """The answer's total output tokens, when the event reports usage."""
    done: bool = False
    error: str | None = None
    cache: Cache | None = None
    """The server's prompt-cache figures, when the event carries ``timings``."""


@dataclass(frozen=True, slots=True)
class Cache:
    """How much of a prompt the server took from its cache, as llama-server reports it in
    ``timings``: ``cache_n`` tokens reused, ``prompt_n`` tokens it had to read."""

    cached: int
    read: int

    @property
    def prompt(self) -> int:
        """The prompt's tokens in all."""
        return self.cached + self.read


def _cache(obj: dict[str, Any]) -> Cache | None:
    timings = obj.get("timings")
    if not isinstance(timings, dict):
        return None
    cached, read = timings.get("cache_n"), timings.get("prompt_n")
    if isinstance(cached, int) and isinstance(read, int):
        return Cache(cached, read)
    return None


def read_event(data: bytes) -> Event:
    """Interpret the data of one event of any of the three APIs."""
    if data.strip() == b"[DONE]":
        return Event(done=True)
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return Event(error="bad_event")
    if not isinstance(obj, dict):
        return Event(error="bad_event")
    if "error" in obj:
        return Event(error="stream_error")
    usage = _usage_tokens(obj)
    cache = _cache(obj)
    if "choices" in obj:
        text = ""
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict):
                delta = choice.get("delta")
                piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                text += piece if isinstance(piece, str) else ""
        return Event(tokens=1 if text else 0, text=text, usage_tokens=usage, cache=cache)
    content = obj.get("content")
    content = content if isinstance(content, str) else ""
    return Event(
        tokens=1 if content else 0,
        text=content,
        usage_tokens=usage,
        done=obj.get("stop") is True,
        cache=cache,
    )


def _usage_tokens(obj: dict[str, Any]) -> int | None:
    usage = obj.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return int(usage["completion_tokens"])
    if isinstance(obj.get("tokens_predicted"), int):  # llama.cpp's /completion
        return int(obj["tokens_predicted"])
    timings = obj.get("timings")
    if isinstance(timings, dict) and isinstance(timings.get("predicted_n"), int):
        return int(timings["predicted_n"])
    return None


def answer_tokens(body: bytes) -> int | None:
    """Output tokens a non-streamed answer reports, or None if it says nothing."""
    return read_answer(body)[0]


def read_answer(body: bytes) -> tuple[int | None, Cache | None]:
    """Output tokens and prompt-cache figures a non-streamed answer reports (None for
    what it does not say)."""
    obj = _object(body)
    if obj is None:
        return None, None
    return _usage_tokens(obj), _cache(obj)


def answer_text(body: bytes) -> str | None:
    """The generated text of a non-streamed answer of any of the three APIs (chat's
    ``choices[0].message.content``, completions' ``choices[0].text``, llama.cpp's
    ``content``), or None if it has none."""
    obj = _object(body)
    if obj is None:
        return None
    choices = obj.get("choices")
    if isinstance(choices, list):
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        message = first.get("message")
        text = message.get("content") if isinstance(message, dict) else first.get("text")
    else:
        text = obj.get("content")
    return text if isinstance(text, str) else None


def _object(body: bytes) -> dict[str, Any] | None:
    try:
        obj = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    return obj if isinstance(obj, dict) else None
