"""The ticker's driving client: keeps streams open against a URL and counts tokens.

It keeps ``connections`` streams open (each asking for ``tokens`` tokens, one after
another on a kept-alive connection), warms up, prints :data:`GO`, counts the token
events that arrive (:class:`~comparison.ticker.framing.MarkCounter`) for ``seconds``,
prints :data:`STOP`; ``python -m comparison.ticker --drive`` then prints one line of
counts that :func:`parse_result` reads back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from comparison.ticker.framing import DONE, MODEL, STREAM_PATH, MarkCounter, compact

GO = "go"
"""The line the driver prints when its warm-up ends and counting starts."""
STOP = "stop"
"""The line the driver prints when counting ends."""
RESULT_MARK = "TICKER_RESULT "
"""The start of the driver's last line, followed by its counts as JSON."""


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
        body = compact({
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
