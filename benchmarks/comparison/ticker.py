"""A cheap paced streaming backend that poses as llama-server, and a client to drive it.

The **ticker** answers what Corral's agent reads (``GET /health``, ``/slots``,
``/props``, ``/v1/models``, all slots idle) and, for ``POST /v1/chat/completions``
with ``"stream": true``, a streamed chat completion in OpenAI's
``chat.completion.chunk`` events, one token per event and each event in its own write
(HTTP chunked transfer encoding, ``text/event-stream``), paced like a decoding
server: every open stream gets its next token at each tick, ``rate`` ticks a second.
One loop-wide timer (a single ``call_at`` chain) writes to every active stream per
tick, as llama-server's batch decoding emits one token for every busy slot per step.
It is a raw :class:`asyncio.Protocol` with httptools on uvloop, so that it costs much
less per token than any proxy put in front of it.

A stream has ``tokens`` tokens (the request's ``max_tokens`` when it gives one): a
first event with the assistant role goes out with the headers, one token event per
tick, then, a tick after the last token, a last event with ``finish_reason`` and
``timings`` (which Corral reads to count tokens) and ``data: [DONE]``. Ticks that run
late are not caught up: a backend that cannot keep pace offers fewer tokens, and
``GET /stats`` says so (tokens written, ticks, late ticks).

With ``--drive URL`` the module is instead the load generator: it keeps
``--connections`` streams open against ``URL`` (each asking for ``--tokens`` tokens,
one after another on a kept-alive connection), warms up, prints ``go``, counts the
token events that arrive for ``--seconds``, prints ``stop`` and one JSON line of
counts.

    PYTHONPATH=benchmarks python -m comparison.ticker --port 8080 --slots 256 --rate 200
    PYTHONPATH=benchmarks python -m comparison.ticker --drive http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

MODEL = "ticker"
STREAM_PATH = "/v1/chat/completions"
TOKEN_TEXT = " tok"
TOKEN_MARK = b'"delta":{"content":" tok"}'
"""Occurs once in every token event and in no other event: what the driver counts."""
DONE = b"data: [DONE]\n\n"
GO = "go"
"""The line the driver prints when its warm-up ends and counting starts."""
STOP = "stop"
"""The line the driver prints when counting ends."""
RESULT_MARK = "TICKER_RESULT "
"""The start of the driver's last line, followed by its counts as JSON."""
_CREATED = 1700000000


# ------------------------------------------------------------------ framing (pure)


def _compact(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def sse_event(body: Any) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    return b"data: " + _compact(body) + b"\n\n"


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of HTTP chunked transfer encoding (empty: the last one)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n"


def chat_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """One OpenAI ``chat.completion.chunk``, in llama-server's field order."""
    return {
        "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
        "created": _CREATED,
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


def info_bodies(slots: int, model: str = MODEL, n_ctx: int = 4096) -> dict[str, bytes]:
    """The JSON the agent reads (:mod:`corral.agent.reader`), by path: healthy, all
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
    entry = {"id": model, "object": "model", "created": _CREATED, "owned_by": "llamacpp"}
    bodies: dict[str, Any] = {
        "/health": {"status": "ok"},
        "/slots": [{"id": i, **slot} for i in range(slots)],
        "/props": props,
        "/v1/models": {"object": "list", "data": [entry]},
    }
    return {path: _compact(body) for path, body in bodies.items()}


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
    body = _compact({"error": {"code": status, "message": message, "type": kind}})
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


# ------------------------------------------------------------------ the server


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
            self._reply(json_answer(200, _compact(asdict(server.ticker.stats))), keep_alive)
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


# ------------------------------------------------------------------ the driver


@dataclass(slots=True)
class DriveResult:
    """What the driver counted during its measured window."""

    connections: int
    seconds: float
    tokens: int
    """Token events received (including those of streams still running at the end)."""
    streams: int
    """Streams that ended during the window."""
    bad_streams: int
    """Streams that ended with a status other than 200, with a token count other than
    asked for, or without ``data: [DONE]``."""
    connection_errors: int
    bytes: int
    reads: int
    """Reads from the sockets (tokens / reads shows how many events arrived together)."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class _Counts:
    __slots__ = ("bad", "bytes", "errors", "reads", "streams", "tokens")

    def __init__(self) -> None:
        self.tokens = self.streams = self.bad = self.errors = self.bytes = self.reads = 0


class _Client(asyncio.Protocol):
    __slots__ = (
        "_counter",
        "_in_stream",
        "_tail",
        "driver",
        "parser",
        "transport",
    )

    def __init__(self, driver: _Driver) -> None:
        self.driver = driver
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._counter = MarkCounter()
        self._in_stream = 0
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.write(self.driver.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.driver.lost(self)

    def data_received(self, data: bytes) -> None:
        counts = self.driver.counts
        counts.reads += 1
        counts.bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            counts.errors += 1
            if self.transport is not None:
                self.transport.close()

    def on_body(self, body: bytes) -> None:
        found = self._counter.feed(body)
        self._in_stream += found
        self.driver.counts.tokens += found
        self._tail = (self._tail + body)[-len(DONE) :]

    def on_message_complete(self) -> None:
        counts = self.driver.counts
        counts.streams += 1
        if (
            self.parser.get_status_code() != 200
            or self._in_stream != self.driver.tokens
            or self._tail != DONE
        ):
            counts.bad += 1
        self._in_stream = 0
        self._tail = b""
        self._counter.reset()
        if self.driver.running and self.transport is not None:
            if self.parser.should_keep_alive():
                self.transport.write(self.driver.request)
            else:
                self.transport.close()


class _Driver:
    def __init__(self, url: str, connections: int, tokens: int) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = (parts.path.rstrip("/") or "") + STREAM_PATH
        body = _compact({
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "max_tokens": tokens,
        })  # fmt: skip
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.connections = connections
        self.tokens = tokens
        self.counts = _Counts()
        self.running = True
        self.clients: set[_Client] = set()
        self._reconnects: set[asyncio.Task[None]] = set()

    async def open(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        for _ in range(self.connections):
            _, client = await asyncio.wait_for(
                loop.create_connection(lambda: _Client(self), self.host, self.port), timeout
            )
            self.clients.add(client)

    def lost(self, client: _Client) -> None:
        self.clients.discard(client)
        if not self.running:
            return
        self.counts.errors += 1
        task = asyncio.get_running_loop().create_task(self._reconnect())
        self._reconnects.add(task)
        task.add_done_callback(self._reconnects.discard)

    async def _reconnect(self) -> None:
        await asyncio.sleep(0.1)
        if not self.running:
            return
        with contextlib.suppress(OSError):
            _, client = await asyncio.get_running_loop().create_connection(
                lambda: _Client(self), self.host, self.port
            )
            self.clients.add(client)

    def close(self) -> None:
        self.running = False
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.close()
        for task in self._reconnects:
            task.cancel()


async def drive(
    url: str, connections: int, tokens: int, warmup: float, seconds: float, announce: bool = True
) -> DriveResult:
    """Keep ``connections`` streams running against ``url`` for ``warmup`` seconds,
    then count what arrives during ``seconds``. ``announce``: print :data:`GO` and
    :data:`STOP` to stdout when counting starts and ends (the suite reads CPU
    counters then)."""
    driver = _Driver(url, connections, tokens)
    try:
        await driver.open()
        await asyncio.sleep(warmup)
        driver.counts = _Counts()
        started = time.monotonic()
        if announce:
            print(GO, flush=True)
        await asyncio.sleep(seconds)
        counts, elapsed = driver.counts, time.monotonic() - started
        driver.counts = _Counts()  # what arrives from here on is not counted
        if announce:
            print(STOP, flush=True)
    finally:
        driver.close()
    return DriveResult(
        connections=connections,
        seconds=elapsed,
        tokens=counts.tokens,
        streams=counts.streams,
        bad_streams=counts.bad,
        connection_errors=counts.errors,
        bytes=counts.bytes,
        reads=counts.reads,
    )


def parse_result(output: str) -> DriveResult:
    """The driver's counts, from the last line it printed.

    Raises:
        ValueError: no such line.
    """
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_MARK):
            return DriveResult(**json.loads(line[len(RESULT_MARK) :]))
    raise ValueError("the ticker driver printed no result line")


# ------------------------------------------------------------------ command line


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover (uvloop is a dependency except on Windows)
        return None
    return uvloop.new_event_loop


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m comparison.ticker",
        description=(
            "A paced streaming backend posing as llama-server: every stream gets one "
            "token event per tick, RATE ticks a second, from one loop-wide timer. "
            "With --drive it is instead the load generator for such a backend."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    p.add_argument(
        "--slots", type=int, default=256, help="idle slots reported on /slots and /props"
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=400,
        help="tokens per stream (a request's max_tokens overrides it); with --drive, "
        "the tokens each request asks for",
    )
    p.add_argument("--rate", type=float, default=200.0, help="tokens per second per stream")
    drive_ = p.add_argument_group("load generator")
    drive_.add_argument(
        "--drive",
        metavar="URL",
        help="drive the chat stream at URL (e.g. http://127.0.0.1:8080) instead of serving",
    )
    drive_.add_argument("--connections", type=int, default=256, help="concurrent streams")
    drive_.add_argument("--warmup", type=float, default=2.0, help="seconds before counting")
    drive_.add_argument("--seconds", type=float, default=5.0, help="seconds of counting")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.tokens < 1 or args.rate <= 0 or args.slots < 1 or args.connections < 1:
        print("--tokens, --slots and --connections must be >= 1, --rate > 0", file=sys.stderr)
        return 2
    factory = _loop_factory()
    if args.drive:
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(
                drive(args.drive, args.connections, args.tokens, args.warmup, args.seconds)
            )
        print(RESULT_MARK + json.dumps(asdict(result)), flush=True)
        return 0
    config = Config(slots=args.slots, tokens=args.tokens, rate=args.rate)

    async def _serve() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(args.host, args.port, config)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
