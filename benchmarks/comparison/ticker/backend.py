"""The ticker's paced server: poses as llama-server and streams tokens at a fixed rate.

It answers what Corral's agent reads (``GET /health``, ``/slots``, ``/props``,
``/v1/models``, all slots idle) and, for ``POST /v1/chat/completions`` with
``"stream": true``, a streamed chat completion (:mod:`comparison.ticker.framing`), one
token per event and each event in its own write (``text/event-stream``), paced like a
decoding server: every open stream gets its next token at each tick, ``rate`` ticks a
second. One loop-wide timer (a single ``call_at`` chain) writes to every active stream
per tick, as llama-server's batch decoding emits one token for every busy slot per
step. It is a raw :class:`asyncio.Protocol` with httptools on uvloop, so that it costs
much less per token than any proxy put in front of it.

A stream has ``tokens`` tokens (the request's ``max_tokens`` when it gives one): the
first event goes out with the headers, one token event per tick, then, a tick after
the last token, the last event and ``data: [DONE]``. Ticks that run late are not
caught up: a backend that cannot keep pace offers fewer tokens, and ``GET /stats``
says so (tokens written, ticks, late ticks).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, cast

import httptools

from comparison.ticker.framing import (
    CREATED,
    MODEL,
    ROLE_EVENT,
    STREAM_PATH,
    TOKEN_CHUNK,
    chunk,
    compact,
    final_events,
)


def info_bodies(slots: int, model: str = MODEL, n_ctx: int = 4096) -> dict[str, bytes]:
    """The JSON the agent reads (:mod:`corral.agent.runners.llamacpp`), by path: healthy, all
    ``slots`` idle, one model."""
    slot = {
        "n_ctx": n_ctx,
        "speculative": False,
        "id_task": -1,
        "is_processing": False,
        "n_prompt_tokens": 0,
        "next_token": [
            {"has_next_token": False, "has_new_line": False, "n_remain": -1, "n_decoded": 0}
        ],
    }
    props = {
        "default_generation_settings": {"n_ctx": n_ctx},
        "total_slots": slots,
        "model_alias": model,
        "model_path": f"/models/{model}.gguf",
        "modalities": {"vision": False, "audio": False},
        "build_info": "ticker",
    }
    entry = {"id": model, "object": "model", "created": CREATED, "owned_by": "llamacpp"}
    bodies: dict[str, Any] = {
        "/health": {"status": "ok"},
        "/slots": [{"id": i, **slot} for i in range(slots)],
        "/props": props,
        "/v1/models": {"object": "list", "data": [entry]},
    }
    return {path: compact(body) for path, body in bodies.items()}


def _head(status: int, reason: str, headers: str) -> bytes:
    return f"HTTP/1.1 {status} {reason}\r\n{headers}\r\n".encode()


def json_answer(status: int, body: bytes, keep_alive: bool = True) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
    connection = "keep-alive" if keep_alive else "close"
    headers = (
        f"Content-Type: application/json; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        f"Connection: {connection}\r\n"
    )
    return _head(status, reason.get(status, "Error"), headers) + body


def error_answer(status: int, message: str, kind: str, keep_alive: bool = True) -> bytes:
    body = compact({"error": {"code": status, "message": message, "type": kind}})
    return json_answer(status, body, keep_alive)


STREAM_HEAD = _head(
    200,
    "OK",
    "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n",
)


def requested_tokens(body: bytes, default: int) -> int | None:
    """The tokens a chat request asks for (``max_tokens``, else ``default``), or None
    when it is not a JSON object with ``"stream": true``."""
    try:
        request = json.loads(body)
    except ValueError:
        return None
    if not isinstance(request, dict) or request.get("stream") is not True:
        return None
    wanted = request.get("max_tokens")
    if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 0:
        return wanted
    return default


@dataclass(slots=True)
class Stats:
    streams: int = 0
    """Streams started."""
    finished: int = 0
    """Streams sent whole."""
    tokens: int = 0
    """Token events written."""
    ticks: int = 0
    late_ticks: int = 0
    """Ticks that started more than one interval late (their backlog is dropped)."""


class _Stream:
    __slots__ = ("conn", "left", "tokens")

    def __init__(self, conn: _Conn, tokens: int) -> None:
        self.conn = conn
        self.left = tokens
        self.tokens = tokens


class Ticker:
    """The one timer: each tick writes one token to every active stream."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rate: float) -> None:
        self.loop = loop
        self.rate = rate
        self.interval = 1.0 / rate
        self.active: list[_Stream] = []
        self.stats = Stats()
        self._next = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def add(self, stream: _Stream) -> None:
        self.active.append(stream)
        self.stats.streams += 1
        if self._handle is None:
            self._next = self.loop.time() + self.interval
            self._handle = self.loop.call_at(self._next, self._tick)

    def _tick(self) -> None:
        stats = self.stats
        stats.ticks += 1
        keep: list[_Stream] = []
        written = 0
        for s in self.active:
            conn = s.conn
            if conn.closed:
                continue
            if s.left > 0:
                s.left -= 1
                conn.write(TOKEN_CHUNK)
                written += 1
                keep.append(s)
            else:
                conn.end_stream(s)
                stats.finished += 1
        stats.tokens += written
        self.active = keep
        if not keep:
            self._handle = None
            return
        now = self.loop.time()
        self._next += self.interval
        if self._next < now:  # late by more than an interval: drop the backlog
            stats.late_ticks += 1
            self._next = now
        self._handle = self.loop.call_at(self._next, self._tick)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


@dataclass(frozen=True, slots=True)
class Config:
    slots: int = 256
    tokens: int = 400
    rate: float = 200.0


class _Conn(asyncio.Protocol):
    """One client connection: parses requests, answers JSON at once, hands streams to
    the ticker. Requests that arrive while a stream runs (pipelined) wait their turn."""

    __slots__ = (
        "_body",
        "_keep_alive",
        "_pending",
        "_url",
        "closed",
        "parser",
        "server",
        "streaming",
        "transport",
    )

    def __init__(self, server: TickerServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.streaming = False
        self._url = b""
        self._body = bytearray()
        self._keep_alive = True
        self._pending: deque[tuple[bytes, bytes, bytes, bool]] = deque()

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.write(error_answer(400, "malformed request", "invalid_request_error", False))
            self.close()

    # httptools
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        request = (
            self.parser.get_method(),
            self._url.split(b"?", 1)[0],
            bytes(self._body),
            self.parser.should_keep_alive(),
        )
        self._url = b""
        self._body = bytearray()
        if self.streaming:
            self._pending.append(request)
        else:
            self._answer(*request)

    # answers
    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _answer(self, method: bytes, path: bytes, body: bytes, keep_alive: bool) -> None:
        server = self.server
        if path == STREAM_PATH.encode():
            if method != b"POST":
                self._reply(error_answer(405, "use POST", "invalid_request_error"), keep_alive)
                return
            tokens = requested_tokens(body, server.config.tokens)
            if tokens is None:
                message = 'this backend only streams: send a JSON object with "stream": true'
                self._reply(error_answer(400, message, "invalid_request_error"), keep_alive)
                return
            self.streaming = True
            self._keep_alive = keep_alive
            self.write(STREAM_HEAD + chunk(ROLE_EVENT))
            server.ticker.add(_Stream(self, tokens))
            return
        if method != b"GET":
            self._reply(error_answer(405, "method not allowed", "invalid_request_error"), True)
            return
        if path == b"/stats":
            self._reply(json_answer(200, compact(asdict(server.ticker.stats))), keep_alive)
            return
        found = server.bodies.get(path)
        if found is None:
            self._reply(error_answer(404, "not found", "not_found_error"), keep_alive)
        else:
            self._reply(json_answer(200, found), keep_alive)

    def _reply(self, data: bytes, keep_alive: bool) -> None:
        self.write(data)
        if not keep_alive:
            self.close()

    def end_stream(self, stream: _Stream) -> None:
        self.write(chunk(final_events(stream.tokens, self.server.config.rate)) + chunk(b""))
        self.streaming = False
        if not self._keep_alive:
            self.close()
            return
        while self._pending and not self.streaming and not self.closed:
            self._answer(*self._pending.popleft())


class TickerServer:
    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config) -> None:
        self.config = config
        self.bodies = {p.encode(): b for p, b in info_bodies(config.slots).items()}
        self.ticker = Ticker(loop, config.rate)

    def protocol(self) -> _Conn:
        return _Conn(self)


async def serve(host: str, port: int, config: Config, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled (or SIGTERM/SIGINT in :func:`main`)."""
    loop = asyncio.get_running_loop()
    app = TickerServer(loop, config)
    server = await loop.create_server(app.protocol, host, port, backlog=4096, reuse_address=True)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        app.ticker.close()
        server.close()
