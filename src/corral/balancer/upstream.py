"""The balancer's client side: kept-alive HTTP/1.1 connections to llama-servers.

A small pool in the manner of httpcore's, over asyncio protocols and httptools'
response parser. It does only what a proxy needs, and nothing per request that can
be done once: the request head is written as bytes, the response's header pairs are
kept as parsed, and body chunks are handed over as they arrive (no decoding, no
copies). aiohttp's client did the same job with a request object, a response
object, a URL object, a payload, timers and a stream reader per request.

Errors before the response starts are :class:`UpstreamError` (the proxy then tries
another server); errors after it are :class:`UpstreamBroken`. A kept-alive
connection the server closed while idle is not the server's fault: the request is
sent again once on a new connection before anything is reported.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import cast

import httptools

Header = tuple[bytes, bytes]
Sink = Callable[[bytes, bool], None]
"""Takes body bytes straight from the socket, and whether they end the body."""

_HIGH_WATER = 256 * 1024
"""Bytes of a response waiting to be relayed before reading from the server pauses."""


_STALE = 0.25
"""A kept-alive connection that fails this soon after a request was written on it,
with no byte of answer, was closed by the server while idle (the request was not
read): it is sent again on a new connection. Later failures may come after the
server ran the request, and are reported instead."""


class UpstreamError(Exception):
    """The server could not be reached, or failed before its response started."""


class UpstreamBroken(Exception):
    """The server's response broke off after it started."""


class UpstreamResponse:
    """One response as it arrives: status and headers first, then body chunks."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_got_bytes",
        "_head",
        "_sink",
        "_waiter",
        "chunked",
        "content_length",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self.status = 0
        self.headers: list[Header] = []
        self.content_length: int | None = None
        self.chunked = False
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._head: asyncio.Future[None] = conn.loop.create_future()
        self._done = False
        self._error: BaseException | None = None
        self._got_bytes = False
        self._sink: Sink | None = None

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    # ------------------------------------------------------ reader side
    @property
    def waiting(self) -> bool:
        """Whether body bytes have arrived that :meth:`next_chunk` has not returned."""
        return bool(self._chunks)

    @property
    def at_end(self) -> bool:
        """Whether the whole body has arrived and been read."""
        return self._done and self._error is None and not self._chunks

    async def next_chunk(self) -> bytes:
        """What has arrived of the body since the last call, as it came (pieces that
        arrived together are joined, never split); ``b""`` at the end."""
        while not self._chunks:
            if self._error is not None:
                raise UpstreamBroken(str(self._error) or type(self._error).__name__)
            if self._done:
                return b""
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._buffered < _HIGH_WATER // 2:
            self._conn.resume()
        return chunk

    def relay(self, sink: Sink) -> None:
        """From now on, hand the body to ``sink`` as it arrives: once per read from the
        socket, with what that read brought (``b""`` with ``True`` for an end that came
        alone). No task wakes up per chunk; :meth:`ended` waits for the end."""
        self._sink = sink
        self._flush()

    async def ended(self) -> None:
        """Return when the whole body has arrived; raise :class:`UpstreamBroken` if it
        broke off."""
        while not self._done and self._error is None:
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._error is not None:
            raise UpstreamBroken(str(self._error) or type(self._error).__name__)

    def pause_reading(self) -> None:
        """Stop reading from the server (the client's side is full)."""
        self._conn.pause()

    def resume_reading(self) -> None:
        self._conn.resume()

    def _flush(self) -> None:
        sink = self._sink
        if sink is None:
            return
        chunks = self._chunks
        end = self._done and self._error is None
        if chunks:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._buffered = 0
            sink(data, end)
        elif end:
            self._sink = None  # the end is told once
            sink(b"", True)
        if end:
            self._sink = None

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        while chunk := await self.next_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Give the connection back if the response was read to its end, else close it."""
        conn = self._conn
        reusable = self._done and self._error is None and not self._chunks
        if reusable and conn.keep_alive and not conn.paused:
            conn.release()
        else:
            conn.close()

    # ------------------------------------------------------ parser side
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._sink is not None:
            return  # handed over at the end of this read (_flush)
        if self._buffered > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._done:
            return
        self._error = exc
        if not self._head.done():
            self._head.set_exception(UpstreamError(str(exc) or type(exc).__name__))
            self._head.exception()  # retrieved: no "never retrieved" warning
        self._wake()

    def __repr__(self) -> str:
        state = "done" if self._done else "failed" if self._error else "open"
        return f"<UpstreamResponse {self.status} {state}, {self._buffered} bytes waiting>"


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_paused",
        "closed",
        "idle_since",
        "keep_alive",
        "key",
        "loop",
        "parser",
        "pool",
        "response",
        "transport",
        "uses",
    )

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.keep_alive = False
        self.uses = 0
        self.idle_since = 0.0
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._open.discard(self)
        response = self.response
        if response is not None:
            if (
                exc is None
                and response._head.done()
                and response.content_length is None
                and not response.chunked
            ):
                response._finish()  # a body that ends with the connection
                response._flush()
            else:
                response._fail(exc or ConnectionResetError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        response = self.response
        response._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(ValueError(f"malformed response from the server: {exc}"))
            self.close()
        response._flush()

    def eof_received(self) -> bool | None:
        return None

    # parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim response: the real one follows
            response.headers.clear()
            return
        response.status = status
        for name, value in response.headers:
            lower = name.lower()
            if lower == b"content-length" and value.strip().isdigit():
                response.content_length = int(value)
            elif lower == b"transfer-encoding" and b"chunked" in value.lower():
                response.chunked = True
        if not response._head.done():
            response._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or response.status == 0:
            return  # the end of an interim response
        self.keep_alive = self.parser.should_keep_alive()
        response._finish()

    # flow control, driven by the reader
    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def send(self, head: bytes, body: bytes) -> UpstreamResponse:
        assert self.transport is not None
        self.response = UpstreamResponse(self)
        self.keep_alive = False
        self.uses += 1
        if body and len(body) > 16384:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head + body)
        return self.response

    def release(self) -> None:
        self.response = None
        self.pool._put(self)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class UpstreamPool:
    """Kept-alive connections per server, reused most recent first."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        keepalive_timeout: float = 30.0,
        max_idle_per_server: int = 512,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.keepalive_timeout = keepalive_timeout
        """Idle connections older than this are closed rather than reused (llama-server
        itself closes idle connections after 5 s; a dead one is retried once)."""
        self.max_idle_per_server = max_idle_per_server
        self.loop = asyncio.get_running_loop()  # made inside the running loop
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._keys: dict[str, tuple[str, int, bytes]] = {}
        self._open: set[_Connection] = set()
        self._closed = False

    def _key(self, address: str) -> tuple[str, int, bytes]:
        """``http://host:port`` once parsed: host, port and the Host header line."""
        known = self._keys.get(address)
        if known is None:
            rest = address.split("://", 1)[-1].rstrip("/")
            host, _, port = rest.rpartition(":")
            try:
                host_line = b"Host: " + rest.encode("idna") + b"\r\n"
            except UnicodeError:
                host_line = b""
            if not host or not port.isdigit() or not host_line:
                raise UpstreamError(f"not an http://HOST:PORT address: {address!r}")
            known = (host.strip("[]"), int(port), host_line)
            self._keys[address] = known
        return known

    async def request(
        self,
        address: str,
        method: str,
        target: bytes,
        headers: bytes,
        body: bytes,
    ) -> UpstreamResponse:
        """Send a request and return once the response's head has arrived.

        ``headers`` are encoded header lines, without Host and Content-Length."""
        host, port, host_line = self._key(address)
        key = (host, port)
        length = b""
        if body or method not in ("GET", "HEAD"):
            length = b"Content-Length: %d\r\n" % len(body)
        line = b"%s %s HTTP/1.1\r\n" % (method.encode(), target)
        head = line + host_line + headers + length + b"\r\n"
        while True:
            conn = self._take(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(key)
            response = conn.send(head, body)
            sent = self.loop.time()
            try:
                await response._head
            except UpstreamError:
                conn.close()
                if reused and not response._got_bytes and self.loop.time() - sent < _STALE:
                    continue  # the server had closed this idle connection: use a new one
                raise
            except BaseException:
                conn.close()
                raise
            return response

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest = self.loop.time() - self.keepalive_timeout
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > oldest:
                return conn
            conn.close()
        return None

    def _put(self, conn: _Connection) -> None:
        if self._closed or conn.closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, deque())
        if len(idle) >= self.max_idle_per_server:
            idle.popleft().close()
        conn.idle_since = self.loop.time()
        idle.append(conn)

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        if self._closed:
            raise UpstreamError("the balancer is shutting down")
        self.loop = asyncio.get_running_loop()
        conn = _Connection(self, key)
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: conn, key[0], key[1]), self.connect_timeout
            )
        except TimeoutError:
            raise UpstreamError(
                f"no connection to {key[0]}:{key[1]} within {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc.strerror or exc}") from None
        self._open.add(conn)
        return conn

    def close(self) -> None:
        """Close every connection (shutdown)."""
        self._closed = True
        for conn in self._connections():
            conn.close()
        self._idle.clear()
        self._open.clear()

    def _connections(self) -> Iterable[_Connection]:
        yield from list(self._open)
        for idle in self._idle.values():
            yield from list(idle)

    def __repr__(self) -> str:
        idle = sum(len(d) for d in self._idle.values())
        active = sum(1 for c in self._open if not c.closed and c.response is not None)
        return f"<UpstreamPool [connections: {active} active, {idle} idle]>"
