"""The balancer's client side: kept-alive HTTP/1.1 connections to llama-servers.

A small pool in the manner of httpcore's, over asyncio protocols and httptools'
response parser. It does only what a proxy needs, and nothing per request that can
be done once: the request head is written as bytes, the response's header pairs are
kept as parsed, and body chunks are handed over as they arrive (no decoding, no
copies). aiohttp's client did the same job with a request object, a response
object, a URL object, a payload, timers and a stream reader per request.

Three objects, each using only the others' public methods (httpcore's split): the
:class:`UpstreamPool` decides which connection a request takes and whether one handed
back is kept; an :class:`UpstreamConnection` (an asyncio protocol, its flow control
from :mod:`corral.balancer._flow`) sends a request, parses the answer and feeds it to
the :class:`UpstreamResponse`, which is what the proxy reads.

Errors before the response starts are :class:`UpstreamError`; errors after it are
:class:`UpstreamBroken`. Each carries a ``kind`` that says whether the server ever
held the request (the proxy's retry rule, docs/reliability.md, reads it):
``connect`` (no connection: the request was not sent), ``died`` (the connection
broke while the server held the request), ``timeout`` (a deadline below passed),
``lost`` (its agent says the server stopped answering: :meth:`UpstreamPool.abort`)
and ``malformed``. A kept-alive connection the server closed while idle is not the
server's fault: the request is sent again once on a new connection before anything
is reported.

Deadlines (each a balancer setting): ``connect_timeout`` to open a connection;
``head_timeout`` from sending a request to its response head, for requests whose
answer streams (llama-server sends a non-streamed answer's head only when it is
done, so those have none: a hung server is told from a busy one by its agent); and
``idle_timeout`` between two reads of a response once its head came (not counted
while the balancer itself stopped reading because the client is slow).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import cast

import httptools

from corral.balancer._flow import FlowControl

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
    """The server could not be reached, or failed before its response started.

    ``kind``: ``connect`` (the request was not sent), ``died``, ``timeout``, ``lost``
    or ``malformed`` (see the module docstring)."""

    def __init__(self, message: str, kind: str = "died") -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def sent(self) -> bool:
        """Whether the server may have received the request (not safe to retry)."""
        return self.kind != "connect"


class UpstreamBroken(Exception):
    """The server's response broke off after it started. ``kind`` as for
    :class:`UpstreamError`."""

    def __init__(self, message: str, kind: str = "died") -> None:
        super().__init__(message)
        self.kind = kind


def _broken(error: BaseException) -> UpstreamBroken:
    return UpstreamBroken(str(error) or type(error).__name__, getattr(error, "kind", "died"))


class UpstreamResponse:
    """One response as it arrives: status and headers first, then body chunks.

    It has two sides. The reader's (the proxy's): :attr:`status`, :attr:`headers`,
    :meth:`read`, :meth:`next_chunk`, :meth:`relay`, :meth:`ended`, the reading flow
    control and :meth:`close`. The connection's, called as the parser calls back and
    by nobody else (as an asyncio protocol's methods are its transport's):
    :meth:`feed`, :meth:`complete`, :meth:`fail` and :meth:`flush`. The connection
    also fills in :attr:`status`, :attr:`headers`, :attr:`content_length` and
    :attr:`chunked` before the pool hands the response over.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_sink",
        "_waiter",
        "chunked",
        "content_length",
        "headers",
        "status",
    )

    def __init__(self, conn: UpstreamConnection) -> None:
        self.status = 0
        """The final status; 0 until the head has arrived (interim 1xx are skipped)."""
        self.headers: list[Header] = []
        """The header pairs as parsed: names keep their case, values their bytes."""
        self.content_length: int | None = None
        self.chunked = False
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._sink: Sink | None = None

    def header(self, name: bytes) -> str | None:
        """The first value of a header, by lower-case name."""
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
    def finished(self) -> bool:
        """Whether the body has all arrived, or broken off."""
        return self._done or self._error is not None

    @property
    def at_end(self) -> bool:
        """Whether the whole body has arrived and been read."""
        return self._done and self._error is None and not self._chunks

    async def next_chunk(self) -> bytes:
        """What has arrived of the body since the last call, as it came (pieces that
        arrived together are joined, never split); ``b""`` at the end."""
        while not self._chunks:
            if self._error is not None:
                raise _broken(self._error)
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
        self._conn.resume_reading()
        return chunk

    def relay(self, sink: Sink) -> None:
        """From now on, hand the body to ``sink`` as it arrives: once per read from the
        socket, with what that read brought (``b""`` with ``True`` for an end that came
        alone). No task wakes up per chunk; :meth:`ended` waits for the end."""
        self._sink = sink
        self.flush()

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
            raise _broken(self._error)

    def pause_reading(self) -> None:
        """Stop reading from the server (the client's side is full)."""
        self._conn.pause_reading()

    def resume_reading(self) -> None:
        """Read from the server again."""
        self._conn.resume_reading()

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        while chunk := await self.next_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Done with the response: the connection goes back to the pool if the body was
        read to its end (and the server keeps it alive), else it is closed."""
        self._conn.response_closed(self.at_end)

    # ------------------------------------------------------ connection side
    def feed(self, chunk: bytes) -> None:
        """Body bytes arrived (the parser's ``on_body``)."""
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._sink is not None:
            return  # handed over at the end of this read (flush)
        if self._buffered > _HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def complete(self) -> None:
        """The whole body has arrived."""
        self._done = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        """The response broke off (ignored once it is complete, or broken already: the
        first reason stays)."""
        if self._done or self._error is not None:
            return
        self._error = exc
        self._wake()

    def flush(self) -> None:
        """The end of one read from the socket: a relay's sink gets what it brought."""
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

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __repr__(self) -> str:
        state = "done" if self._done else "failed" if self._error else "open"
        return f"<UpstreamResponse {self.status} {state}, {self._buffered} bytes waiting>"


class _Stale(UpstreamError):
    """A kept-alive connection failed as one the server closed while idle (see
    :data:`_STALE`): the pool sends the request again on a new connection."""


class UpstreamConnection(FlowControl):
    """One kept-alive connection to a server, carrying one request at a time.

    Its interface, and all that others touch: the pool calls :meth:`request` and
    :meth:`close` and :meth:`abort`, and reads :attr:`closed`, :attr:`key` and :attr:`idle_since`
    (which it sets when it takes the connection back); the response calls
    :meth:`response_closed` and the reading flow control (:class:`FlowControl`'s
    :meth:`~FlowControl.pause_reading` and :meth:`~FlowControl.resume_reading`).
    It calls the pool's :meth:`UpstreamPool.release` and
    :meth:`UpstreamPool.discard` in turn. The rest is the parser's callbacks.
    """

    __slots__ = (
        "_answered",
        "_head",
        "_last_read",
        "_timer",
        "idle_since",
        "keep_alive",
        "key",
        "parser",
        "pool",
        "response",
        "uses",
    )

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        super().__init__(pool.loop)
        self.pool = pool
        self.key = key
        """The server's host and port."""
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        """The response of the request in flight, until it is closed."""
        self.keep_alive = False
        """The server keeps the connection open after the current response."""
        self.uses = 0
        """Requests sent on it."""
        self.idle_since = 0.0
        """When it went back to the pool (the loop's clock)."""
        self._head: asyncio.Future[None] | None = None  # the current response's head
        self._answered = False  # a byte of the current response has arrived
        self._timer: asyncio.TimerHandle | None = None  # the head or idle deadline
        self._last_read = 0.0  # when the server last sent something (the loop's clock)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "busy" if self.response is not None else "idle"
        return f"<UpstreamConnection {self.key[0]}:{self.key[1]} {state}, {self.uses} uses>"

    # -------------------------------------------------------------- the pool's
    async def request(
        self, head: bytes, body: bytes, head_timeout: float | None = None
    ) -> UpstreamResponse:
        """Send one request (its head and body as bytes) and return its response once
        the response's head has arrived (within ``head_timeout`` seconds, if given).

        Raises:
            UpstreamError: The server failed before its response started; the
                connection is closed. (A private subclass tells the pool that the
                server had closed the idle connection: see :data:`_STALE`.)
        """
        transport = self.transport
        assert transport is not None and self.response is None
        response = self.response = UpstreamResponse(self)
        self._head = started = self.loop.create_future()
        self.keep_alive = False
        self._answered = False
        self.uses += 1
        if len(body) > 16384:
            transport.writelines((head, body))
        else:
            transport.write(head + body)
        sent = self.loop.time()
        if head_timeout is not None:
            self._timer = self.loop.call_later(head_timeout, self._head_late, head_timeout)
        try:
            await started
        except UpstreamError as exc:
            self.close()
            stale = self.loop.time() - sent < _STALE and exc.kind == "died"
            if self.uses > 1 and not self._answered and stale:
                raise _Stale(str(exc)) from None
            raise
        except BaseException:
            self.close()
            raise
        return response

    def close(self) -> None:
        """Close the connection (whatever is in flight breaks off)."""
        self.closed = True
        self._stop_timer()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    # ---------------------------------------------------------- the response's
    def response_closed(self, complete: bool) -> None:
        """The reader is done with the response; ``complete`` if its body was read to
        the end. Back to the pool if another request can follow, else closed."""
        self._stop_timer()
        if complete and self.keep_alive and not self.reading_paused and not self.closed:
            self.response = None
            self.pool.release(self)
        else:
            self.close()

    # --------------------------------------------------------------- transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection_closed()
        self.pool.discard(self)
        response = self.response
        if response is not None:
            if (
                exc is None
                and response.status
                and response.content_length is None
                and not response.chunked
            ):
                response.complete()  # a body that ends with the connection
                response.flush()
            else:
                self._broken(exc or ConnectionResetError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        self._answered = True
        self._last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._broken(ValueError(f"malformed response from the server: {exc}"), "malformed")
            self.close()
        response.flush()

    def eof_received(self) -> bool | None:
        return None

    def _broken(self, exc: BaseException, kind: str = "died") -> None:
        """The exchange failed: before the head, the request fails (UpstreamError);
        after it, the body breaks off (UpstreamBroken, when read)."""
        error = UpstreamError(str(exc) or type(exc).__name__, getattr(exc, "kind", kind))
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
            head.exception()  # retrieved: no "never retrieved" warning
        if self.response is not None:
            self.response.fail(error)

    def abort(self, reason: str, kind: str = "lost") -> None:
        """Break off the request in flight (its server is set aside) and close."""
        if self.response is not None:
            self._broken(ConnectionAbortedError(reason), kind)
        self.close()

    # ------------------------------------------------------------ deadlines
    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_late(self, timeout: float) -> None:
        self._timer = None
        self.abort(f"no response head within {timeout:g} s (--upstream-head-timeout)", "timeout")

    def _idle_check(self) -> None:
        """The idle deadline: nothing read for ``idle_timeout`` s while reading."""
        self._timer = None
        response = self.response
        timeout = self.pool.idle_timeout
        if response is None or self.closed or timeout is None or response.finished:
            return
        quiet = self.loop.time() - self._last_read
        if self.reading_paused:  # the client is slow, not the server
            quiet = 0.0
            self._last_read = self.loop.time()
        if quiet >= timeout:
            message = f"nothing received for {timeout:g} s (--upstream-idle-timeout)"
            self.abort(message, "timeout")
        else:
            self._timer = self.loop.call_later(timeout - quiet, self._idle_check)

    # -------------------------------------------------------- parser callbacks
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
        self._stop_timer()  # the head came: from now on, the idle deadline
        if self.pool.idle_timeout is not None:
            self._last_read = self.loop.time()
            self._timer = self.loop.call_later(self.pool.idle_timeout, self._idle_check)
        for name, value in response.headers:
            lower = name.lower()
            if lower == b"content-length" and value.strip().isdigit():
                response.content_length = int(value)
            elif lower == b"transfer-encoding" and b"chunked" in value.lower():
                response.chunked = True
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response.feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or response.status == 0:
            return  # the end of an interim response
        self.keep_alive = self.parser.should_keep_alive()
        response.complete()


class UpstreamPool:
    """Kept-alive connections per server, reused most recent first.

    The pool decides which connection a request takes (:meth:`_take`: the most recent
    idle one that has not expired, closing expired ones on the way) and whether one
    handed back is kept (:meth:`release`); the connection does the I/O.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        idle_timeout: float | None = None,
        keepalive_timeout: float = 4.0,
        max_idle_per_server: int = 512,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        """Seconds a response may send nothing once its head came (None: no limit)."""
        self.keepalive_timeout = keepalive_timeout
        """Idle connections older than this are closed rather than reused: below the
        5 s after which llama-server (cpp-httplib) and uvicorn close idle connections,
        so a request is not written into one the server is closing
        (``--upstream-keepalive-timeout``; one that died anyway is sent again once,
        see :data:`_STALE`)."""
        self.max_idle_per_server = max_idle_per_server
        self.loop = asyncio.get_running_loop()  # made inside the running loop
        self._idle: dict[tuple[str, int], deque[UpstreamConnection]] = {}
        self._keys: dict[str, tuple[str, int, bytes]] = {}
        self._open: set[UpstreamConnection] = set()
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
                raise UpstreamError(f"not an http://HOST:PORT address: {address!r}", "connect")
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
        head_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send a request and return once the response's head has arrived.

        ``headers`` are encoded header lines, without Host and Content-Length; ``target``
        is the path and query as the client sent them. ``head_timeout``: seconds from
        sending to the response head (None: no limit, for non-streamed generations).

        Raises:
            UpstreamError: No connection (``kind`` ``connect``: nothing was sent), or
                the server failed before its response started.
        """
        host, port, host_line = self._key(address)
        key = (host, port)
        length = b""
        if body or method not in ("GET", "HEAD"):
            length = b"Content-Length: %d\r\n" % len(body)
        line = b"%s %s HTTP/1.1\r\n" % (method.encode(), target)
        head = line + host_line + headers + length + b"\r\n"
        while True:
            conn = self._take(key)
            if conn is None:
                conn = await self._connect(key)
            try:
                return await conn.request(head, body, head_timeout)
            except _Stale:
                continue  # the server had closed this idle connection: use a new one

    def _take(self, key: tuple[str, int]) -> UpstreamConnection | None:
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

    # ------------------------------------------------------ the connections'
    def release(self, conn: UpstreamConnection) -> None:
        """Take back a connection whose response was read to its end: kept idle for
        the next request to its server, or closed (the pool is closing, or the server
        already has ``max_idle_per_server`` idle: the oldest of those goes)."""
        if self._closed or conn.closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, deque())
        if len(idle) >= self.max_idle_per_server:
            idle.popleft().close()
        conn.idle_since = self.loop.time()
        idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """Forget a connection that was lost."""
        self._open.discard(conn)

    async def _connect(self, key: tuple[str, int]) -> UpstreamConnection:
        if self._closed:
            raise UpstreamError("the balancer is shutting down", "connect")
        self.loop = asyncio.get_running_loop()
        conn = UpstreamConnection(self, key)
        try:
            async with asyncio.timeout(self.connect_timeout):  # not wait_for (3.11)
                await self.loop.create_connection(lambda: conn, key[0], key[1])
        except TimeoutError:
            raise UpstreamError(
                f"no connection to {key[0]}:{key[1]} within {self.connect_timeout:g} s",
                "connect",
            ) from None
        except OSError as exc:
            message = f"{type(exc).__name__}: {exc.strerror or exc}"
            raise UpstreamError(message, "connect") from None
        self._open.add(conn)
        return conn

    def abort(self, address: str, reason: str) -> int:
        """Break off every request in flight to the server at ``address`` (its agent
        says it stopped answering): each fails with ``kind`` ``lost``. Returns how many.
        Idle connections to it are closed too."""
        try:
            key = self._key(address)[:2]
        except UpstreamError:
            return 0
        broken = 0
        for conn in list(self._open):
            if conn.key == key and not conn.closed:
                broken += conn.response is not None
                conn.abort(reason)
        for conn in self._idle.pop(key, ()):
            conn.close()
        return broken

    def close(self) -> None:
        """Close every connection (shutdown)."""
        self._closed = True
        for conn in self._connections():
            conn.close()
        self._idle.clear()
        self._open.clear()

    def _connections(self) -> Iterable[UpstreamConnection]:
        yield from list(self._open)
        for idle in self._idle.values():
            yield from list(idle)

    def __repr__(self) -> str:
        idle = sum(len(d) for d in self._idle.values())
        active = sum(1 for c in self._open if not c.closed and c.response is not None)
        return f"<UpstreamPool [connections: {active} active, {idle} idle]>"
