"""The inference listener's HTTP/1.1 server: an asyncio protocol over httptools.

Why not aiohttp's web server here (the management listener uses it): the inference
listener carries every request and every token, and a request waiting in the buffer
holds its connection for seconds. aiohttp builds a request object, a header
multidict, a payload stream, a response object and several handler frames for each
request; this server keeps one slotted :class:`Request` (the raw header pairs as
parsed) and one :class:`Responder`, which is what a proxy needs. It is the same
design as uvicorn's httptools server: the parsing is llhttp's (C), the rest is a
small state machine per connection:

- requests are parsed as bytes arrive; complete ones queue in order (pipelining),
  and one handler task runs at a time per connection;
- a client that disconnects cancels its running handler (the proxy then closes the
  upstream connection and frees the slot);
- bodies over ``max_body_size`` get 413 and malformed requests 400 (505, 501 for an
  HTTP version or transfer coding not spoken), in order after the responses before
  them, and the connection is closed: llhttp's strict parsing plus the checks in
  :func:`_head_problem` (what is refused and why: ``docs/http.md``);
- ``Expect: 100-continue`` is answered when the connection is idle;
- responses are written whole (with Content-Length) or streamed with chunked
  transfer encoding (HTTP/1.0 clients: until the connection closes);
- the writer honours the transport's flow control, so a slow client slows its own
  stream and nothing piles up in memory;
- idle keep-alive connections close after ``keepalive_timeout``;
- a request head (request line and headers) must arrive whole within
  ``head_timeout`` of its first byte, else 408 and the connection closes: a client
  that sends one byte a second (slow-loris) holds a connection that long at most
  (HAProxy's ``timeout http-request``);
- shutdown follows uvicorn's order: stop accepting, close idle connections, let
  handlers finish up to a timeout, cancel the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl as ssl_
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any, cast

import httptools

from corral.balancer._flow import FlowControl

log = logging.getLogger("corral.http")

Header = tuple[bytes, bytes]
Handler = Callable[["Request", "Responder"], Awaitable[None]]

_NO_BODY = frozenset({204, 304})
"""Statuses whose responses never have a body (nor a Content-Length here)."""
_MAX_PIPELINED = 16
_MAX_QUEUED_BYTES = 1024 * 1024
"""Request bytes queued behind the running one before reading pauses."""
MAX_HEAD_BYTES = 64 * 1024
"""Largest request line and headers accepted (431 beyond)."""
MAX_HEADERS = 100
_LINGER = 1.0
"""Seconds a connection stays open after an error answer, reading nothing."""
"""Complete requests queued behind the running one before reading pauses."""


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""A header name (RFC 9110 §5.6.2)."""
_HOST = re.compile(rb"[ \t]*[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]*[ \t]*")
"""A ``Host`` value: ``uri-host [ ":" port ]`` (RFC 9112 §3.2), between optional spaces."""


def _head_problem(
    version: str, target: bytes, hosts: int, coding: bytes | None
) -> tuple[int, str] | None:
    """What makes a parsed request head unacceptable, as (status, message), or ``None``.

    llhttp already refuses most framing attacks (Content-Length with
    Transfer-Encoding, duplicate or non-digit Content-Length, obsolete line folding,
    bare CR or LF, bad chunk sizes, chunked not last); these are what it lets through:
    HTTP versions other than 1.0 and 1.1 (505), a fragment in the target, a missing
    (HTTP/1.1) or repeated ``Host``, a Transfer-Encoding in HTTP/1.0 (RFC 9112 §6.1:
    faulty framing) and transfer codings other than chunked (501). A request line
    without a version (``POST /tokenizeHTTP/1.1``: llhttp reads it as HTTP/0.9) is
    malformed, 400, as nginx and HAProxy answer it: no HTTP/0.9 client could read a
    status line anyway."""
    if version == "0.9":
        return 400, "malformed HTTP request: no HTTP version in the request line"
    if version != "1.1" and version != "1.0":
        return 505, f"HTTP/{version} is not supported; use HTTP/1.1"
    if b"#" in target:
        return 400, "malformed HTTP request: a fragment (#) in the request target"
    if hosts != 1 and (hosts or version == "1.1"):
        return 400, "malformed HTTP request: one Host header is required (none: HTTP/1.0 only)"
    if coding is not None:
        if version == "1.0":
            return 400, "malformed HTTP request: Transfer-Encoding in an HTTP/1.0 request"
        if coding.strip().lower() != b"chunked":
            return (
                501,
                f"Transfer-Encoding {coding.decode('latin-1')!r} is not supported; use chunked",
            )
    return None


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))


def encode_headers(headers: Iterable[tuple[str | bytes, str | bytes]]) -> bytes:
    """``Name: value\\r\\n`` lines. Raises :class:`ValueError` for a name that is not a
    token or a value with CR, LF or NUL (header injection)."""
    out = bytearray()
    for name, value in headers:
        n = name.encode("latin-1") if isinstance(name, str) else name
        v = value.encode("latin-1") if isinstance(value, str) else value
        if b"\r" in v or b"\n" in v or b"\0" in v or not _TOKEN.fullmatch(n):
            raise ValueError(f"invalid header {n!r}: {v!r}")
        out += n + b": " + v + b"\r\n"
    return bytes(out)


class Request:
    """One parsed request: what the handler reads. Header names keep their case."""

    __slots__ = (
        "body",
        "headers",
        "keep_alive",
        "method",
        "path",
        "remote",
        "scheme",
        "target",
        "tenant",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: list[Header],
        body: bytes,
        version: str,
        keep_alive: bool,
        remote: str,
        scheme: str = "http",
    ) -> None:
        self.method = method
        self.target = target  # path and query as sent, for the upstream request
        # The path as sent, not percent-decoded: routes are chosen by what is forwarded
        # (``/v1/chat%2Fcompletions`` is no route; decoded, it would be routed as chat
        # while the server behind got a different path).
        self.path = target.split(b"?", 1)[0].decode("latin-1")
        self.headers = headers
        self.body = body
        self.version = version
        self.keep_alive = keep_alive
        self.remote = remote
        self.scheme = scheme
        """``https`` when the client's connection is TLS, else ``http``."""
        self.tenant: str | None = None
        """The tenant a request made in the balancer itself runs as (a Batch API line:
        its batch's); its key is not asked. Never set from what a client sends."""

    def header(self, name: bytes) -> str | None:
        """The first value of a header, by lower-case name."""
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target.decode('latin-1')!r} from {self.remote}>"


class Responder:
    """Writes one response: :meth:`send` it whole, or :meth:`start`, :meth:`write`
    chunks and :meth:`finish`. Writes after the client left are dropped; awaiting
    :meth:`write` raises :class:`ConnectionResetError` once it has gone."""

    __slots__ = (
        "_chunked",
        "_close",
        "_conn",
        "_head_only",
        "_held",
        "finished",
        "started",
        "status",
    )

    def __init__(
        self, conn: _Connection, keep_alive: bool, chunked: bool, head_only: bool = False
    ) -> None:
        self._conn = conn
        self._chunked = chunked  # False for HTTP/1.0: the body ends with the connection
        self._head_only = head_only  # a HEAD request: headers as for GET, never a body
        self._close = not keep_alive
        self._held = b""  # a streamed response's head, until its first chunk
        self.started = False
        self.finished = False
        self.status = 0

    @property
    def client_gone(self) -> bool:
        return self._conn.closed

    def _head(self, status: int, headers: bytes, framing: bytes) -> bytes:
        self.status = status
        self.started = True
        if self._conn.server.stopping:  # shutting down: this is the connection's last
            self._close = True
        if self._close:
            connection = b"Connection: close\r\n"
        elif not self._chunked:  # an HTTP/1.0 client that asked to keep the connection
            connection = b"Connection: keep-alive\r\n"
        else:
            connection = b""
        return status_line(status) + headers + framing + connection + b"\r\n"

    def send(self, status: int, headers: bytes, body: bytes) -> None:
        """The whole response; ``headers`` are encoded lines without framing ones."""
        if self.started:
            raise RuntimeError("response already started")
        if status in _NO_BODY:
            self._conn.write(self._head(status, headers, b""))
            self.finished = True
            return
        head = self._head(status, headers, b"Content-Length: %d\r\n" % len(body))
        if self._head_only:
            self._conn.write(head)
        elif len(body) < 16384:
            self._conn.write(head + body)
        else:
            self._conn.write(head, body)
        self.finished = True

    def placed(self, on_server: bool) -> None:
        """Whether the request holds a slot on a server now: the proxy says True once a
        slot is acquired, before it sends, and False when that server failed and the
        request waits for a slot again. Nothing to do for a client's connection; the
        batch runner notes it, to tell a line waiting in the buffer from one a server
        is running."""

    def send_json(self, status: int, body: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send(status, encode_headers([("Content-Type", "application/json"), *headers]), data)

    def start(self, status: int, headers: bytes, *, hold: bool = False) -> None:
        """Begin a streamed response. With ``hold``, the head waits to leave with the
        first chunk (one write instead of two) until :meth:`flush` or a write."""
        if self.started:
            raise RuntimeError("response already started")
        if not self._chunked:
            self._close = True
        framing = b"Transfer-Encoding: chunked\r\n" if self._chunked else b""
        self._held = self._head(status, headers, framing)
        if not hold:
            self.flush()

    def flush(self) -> None:
        """Send a held head now."""
        if self._held:
            self._conn.write(self._held)
            self._held = b""

    async def write(self, chunk: bytes, *, last: bool = False) -> None:
        """Send a piece of the body; ``last`` ends the response in the same write."""
        if self._conn.closed:
            raise ConnectionResetError("the client disconnected")
        self.write_nowait(chunk, last=last)
        await self._conn.wait_writable()

    def write_nowait(self, chunk: bytes, *, last: bool = False) -> bool:
        """:meth:`write` without waiting: ``False`` when the client's side is full,
        and the caller should stop producing until :meth:`when_writable` calls back."""
        end = b""
        if last:
            self.finished = True
            end = b"0\r\n\r\n" if self._chunked else b""
        if not chunk:
            self._conn.write(self._held, end)
        elif self._chunked:
            self._conn.write(self._held, b"%x\r\n" % len(chunk), chunk, b"\r\n" + end)
        else:
            self._conn.write(self._held, chunk)
        self._held = b""
        return not self._conn.writing_paused

    def when_writable(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` once the client's side can take more (or has gone);
        ``None`` forgets a callback given before."""
        self._conn.on_writable = callback

    def finish(self) -> None:
        """End a streamed response."""
        if self.finished:
            return
        self.finished = True
        self._conn.write(self._held, b"0\r\n\r\n" if self._chunked else b"")
        self._held = b""

    def abort(self) -> None:
        """Cut the connection (a reset, not a clean close): the client sees a truncated
        response, never a whole one."""
        self.finished = True
        self._close = True
        self._conn.close(abort=True)

    @property
    def closes(self) -> bool:
        return self._close


class _Error:
    """A parse or size error, answered in order after the requests before it."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    if status == 503:
        kind = "unavailable_error"
    return {"error": {"code": status, "message": message, "type": kind}}


class _Connection(FlowControl):
    """One client connection: parser callbacks in, handler tasks out. Flow control
    (pausing reads, waiting until writable) is :class:`FlowControl`'s."""

    __slots__ = (
        "_body",
        "_broken",
        "_head_bytes",
        "_head_timer",
        "_headers",
        "_idle",
        "_queue",
        "_queued_bytes",
        "_raw",
        "_size",
        "_task",
        "_trailers",
        "_url",
        "parser",
        "remote",
        "scheme",
        "server",
    )

    def __init__(self, server: HttpServer) -> None:
        super().__init__(server.loop)
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.remote = "-"
        self.scheme = "http"
        self._queue: list[Request | _Error] = []  # a list: a deque costs 600 bytes more
        self._queued_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = None  # the request head's deadline
        self._broken = False  # a parse or size error: read no more
        # the request being parsed
        self._url = b""
        self._headers: list[Header] = []
        self._trailers = False
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._size = 0
        self._raw: tuple[Request, int] | None = None  # see _upgrade

    # ------------------------------------------------------------ transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.remote = str(peer[0])
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self.server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self._head_timer is not None:
            self._head_timer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client left: the proxy frees the slot
        self._queue.clear()
        self.connection_closed()  # wakes a writer waiting until writable

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._raw is not None:
            self._raw_body(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data, int(exc.args[0]) if exc.args else len(data))
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")
        if self._task is None and not self._queue:
            self._arm_idle()  # half a request so far: it has as long as an idle connection

    def eof_received(self) -> bool | None:
        # The transport closes at once (as with aiohttp and uvicorn): a client that
        # half-closes after its request gets no answer.
        return None

    # ---------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._trailers = False
        self._head_bytes = 0
        self._body = []
        self._size = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.server.head_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        timeout = self.server.head_timeout
        self._fail(408, f"request head not received within {timeout:g} s")

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._fail(431, f"request line and headers over {MAX_HEAD_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._broken:
            return
        self._head_bytes += len(name) + len(value) + 4
        if not self._trailers:  # a trailer is read and dropped: never a header upstream
            self._headers.append((name, value))
        if self._head_bytes > MAX_HEAD_BYTES or len(self._headers) > MAX_HEADERS:
            self._fail(431, f"headers over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} lines")

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._broken:
            return
        self._trailers = True  # header lines after this are a chunked body's trailer
        hosts = 0
        length = coding = None
        expects = False
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"host":
                hosts += 1
                if not _HOST.fullmatch(value):
                    return self._fail(400, f"malformed HTTP request: Host {value!r}")
            elif lower == b"content-length":
                length = value
            elif lower == b"transfer-encoding":
                coding = value if coding is None else coding + b"," + value
            elif lower == b"expect":
                expects = value.strip().lower() == b"100-continue"
        if problem := _head_problem(self.parser.get_http_version(), self._url, hosts, coding):
            return self._fail(*problem)
        pairs = b"".join(b"".join(pair) for pair in self._headers)
        if b"\r" in pairs or b"\n" in pairs or b"\0" in pairs:  # llhttp refuses them too
            return self._fail(400, "malformed HTTP request: CR, LF or NUL in a header")
        limit = self.server.max_body_size
        if length is not None and length.strip().isdigit() and int(length) > limit:
            self._fail(413, f"request body too large: the limit is {limit} bytes")
            return
        if expects and self._task is None and not self._queue:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._broken:
            return
        self._size += len(body)
        if self._size > self.server.max_body_size:
            limit = self.server.max_body_size
            self._fail(413, f"request body too large: the limit is {limit} bytes")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._broken:
            return
        parser = self.parser
        request = Request(
            parser.get_method().decode("ascii", "replace"),
            self._url,
            self._headers,
            b"".join(self._body),
            parser.get_http_version(),
            parser.should_keep_alive(),
            self.remote,
            self.scheme,
        )
        self._body = []
        if parser.should_upgrade():  # its body, if any, is read in _upgrade
            self._raw = (request, -1)
            return
        self._enqueue(request)

    def _upgrade(self, data: bytes, offset: int) -> None:
        """A request offering another protocol (``Upgrade: h2c`` from Java's HTTP
        client, ``websocket``). The server may ignore the offer (RFC 9110 §7.8) and
        does: the request is answered over HTTP/1.1 like any other. llhttp stops at
        the end of the head, so the body is read here and a fresh parser takes the
        bytes after it."""
        if self._raw is None or self._broken:
            self._fail(400, "malformed HTTP request: an upgrade with no request")
            return
        request = self._raw[0]
        if request.header(b"transfer-encoding") is not None:
            self._fail(400, "a chunked body with an Upgrade header is not supported")
            return
        length = request.header(b"content-length") or "0"
        if not length.strip().isdigit():
            self._fail(400, f"malformed HTTP request: Content-Length {length!r}")
            return
        self._raw = (request, int(length))
        self.parser = httptools.HttpRequestParser(self)
        self._raw_body(data[offset:])

    def _raw_body(self, data: bytes) -> None:
        assert self._raw is not None
        request, left = self._raw
        take = data[:left]
        self._body.append(take)
        left -= len(take)
        if left > 0:
            self._raw = (request, left)
            return
        self._raw = None
        request.body = b"".join(self._body)
        self._body = []
        self._enqueue(request)
        if len(data) > len(take):
            self.data_received(data[len(take) :])

    def _enqueue(self, request: Request) -> None:
        self._queue.append(request)
        self._queued_bytes += len(request.body)
        if len(self._queue) >= _MAX_PIPELINED or self._queued_bytes > _MAX_QUEUED_BYTES:
            self.pause_reading()
        if self._task is None:
            self._next()

    # -------------------------------------------------------------- serving
    def _fail(self, status: int, message: str) -> None:
        """Stop reading; answer ``status`` after the requests already queued."""
        if self._broken:
            return
        self._broken = True
        self._queue.append(_Error(status, message))
        if self._task is None:
            self._next()

    def _next(self) -> None:
        if self.closed:
            return
        if not self._queue:
            self._task = None
            self._queued_bytes = 0
            self.resume_reading()
            self._arm_idle()
            return
        item = self._queue.pop(0)
        if isinstance(item, _Error):
            self._task = None
            log.info("%s -> %d %s", self.remote, item.status, item.message)
            responder = Responder(self, keep_alive=False, chunked=True)
            responder.send_json(item.status, error_body(item.status, item.message))
            self._linger()
            return
        if self.server.stopping:  # no new work while shutting down
            responder = Responder(self, keep_alive=False, chunked=True)
            message = "Corral: the balancer is shutting down; try again"
            responder.send_json(503, error_body(503, message), [("Retry-After", "1")])
            self.close()
            return
        self._queued_bytes -= len(item.body)
        chunked = item.version != "1.0"
        responder = Responder(self, item.keep_alive, chunked, item.method == "HEAD")
        self._task = self.loop.create_task(self._serve(item, responder))

    async def _serve(self, request: Request, responder: Responder) -> None:
        try:
            await self.server.handler(request, responder)
            if not responder.finished:
                if responder.started:
                    responder.finish()
                else:
                    log.error("handler sent no response to %r", request)
                    responder.send_json(500, error_body(500, "Corral: no response"))
                    self.close()
            await self.wait_writable()  # a client that reads nothing gets nothing more
        except asyncio.CancelledError:
            if not self.closed:  # cancelled by shutdown, not by the client
                self.close(abort=True)
            raise
        except ConnectionError:
            self.close()
            return
        except Exception:
            log.exception("handler failed on %r", request)
            if not responder.started:
                responder.send_json(500, error_body(500, "Corral: internal error"))
            self.close()
            return
        if responder.closes:
            self.close()
        self._task = None
        self._next()

    def _linger(self) -> None:
        """Close after an error answer, giving the client time to read it: a close
        with its body still arriving would reset the connection and lose the answer."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(_LINGER, self.close)

    def _arm_idle(self) -> None:
        if self._idle is None and not self.closed:
            self._idle = self.loop.call_later(self.server.keepalive_timeout, self._idle_close)

    def _idle_close(self) -> None:
        self._idle = None
        if self._task is None and not self._queue:
            self.close()

    # --------------------------------------------------------------- output
    def write(self, *parts: bytes | None) -> None:
        if self.closed or self.transport is None:
            return
        data = [p for p in parts if p]
        if len(data) == 1:
            self.transport.write(data[0])
        elif data:
            self.transport.writelines(data)

    def close(self, *, abort: bool = False) -> None:
        """Close the connection; ``abort`` resets it at once, whatever is unsent."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if abort:
                transport.abort()
            else:
                transport.close()
        elif transport is not None and abort:
            transport.abort()  # closing, but maybe stuck on a client that reads nothing
        self.closed = True

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def running(self) -> asyncio.Task[None] | None:
        """The handler task serving the current request, if one is."""
        return self._task

    async def cancel(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.close(abort=True)


class HttpServer:
    """A listening socket and its connections; ``await start()``, ``await stop()``."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_size: int,
        keepalive_timeout: float = 75.0,
        head_timeout: float = 20.0,
    ) -> None:
        self.handler = handler
        self.max_body_size = max_body_size
        self.keepalive_timeout = keepalive_timeout
        """Seconds an idle keep-alive connection stays open (aiohttp's default, 75)."""
        self.head_timeout = head_timeout
        """Seconds from a request's first byte to the end of its head, else 408."""
        self.connections: set[_Connection] = set()
        self.stopping = False
        self.loop = asyncio.get_running_loop()  # made inside the running loop
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int, *, ssl: ssl_.SSLContext | None = None) -> int:
        """Listen on ``host:port`` (0: any free port), over TLS when ``ssl`` is given;
        returns the port."""
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=4096, ssl=ssl
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    @property
    def in_flight(self) -> int:
        """Requests being handled now (connections busy with one)."""
        return sum(1 for c in self.connections if c.busy)

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 (a grace period)
        """Stop accepting, close idle connections, let handlers finish up to
        ``timeout`` seconds, then cancel them."""
        self.stopping = True  # responses say Connection: close; no new requests start
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()
        running = [t for c in self.connections if (t := c.running) is not None and not t.done()]
        if running:
            await asyncio.wait(running, timeout=timeout)
        await asyncio.gather(*(c.cancel() for c in list(self.connections)))
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):  # not wait_for (3.11)
                    await self._server.wait_closed()
            self._server = None

    def __repr__(self) -> str:
        busy = sum(1 for c in self.connections if c.busy)
        idle = len(self.connections) - busy
        return f"<HttpServer :{self.port} [connections: {busy} busy, {idle} idle]>"
