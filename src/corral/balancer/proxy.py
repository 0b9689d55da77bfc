"""The data path: the inference listener, posing as one llama-server.

For each request: look the route up once (:mod:`corral.core.endpoints`), read the
body, find the ``model`` field (msgspec decodes only that field), reserve a slot
(:class:`~corral.balancer.dispatcher.Dispatcher`), send the original bytes upstream,
and relay the response. Streamed responses are relayed chunk by chunk as they
arrive: no parsing, no re-encoding, no buffering.

Failures before the response starts (connection refused, server gone, 503 while
loading) are retried on another server after setting the failing one aside; the
client never sees them. A failure after streaming started ends the stream with an
SSE error event. A client that disconnects cancels its handler (aiohttp's handler
cancellation), which closes the upstream connection (llama-server then stops the
generation) and frees the slot at once.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp
import msgspec
from aiohttp import web
from multidict import CIMultiDict

from corral.balancer import aggregate
from corral.balancer.dispatcher import Dispatcher, Slot
from corral.balancer.errors import HTTPError, render, sse_error_event
from corral.balancer.metrics import Metrics, last_counted_event
from corral.core.endpoints import Kind, classify, known_paths
from corral.core.fleet import Agent
from corral.core.policy import Reject, RequestInfo, resolve_pools

log = logging.getLogger("corral.proxy")
access_log = logging.getLogger("corral.access")
"""One line per request: id, route, status, model, agent, buffer wait, durations."""

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# aiohttp hands us request bodies already decompressed, so their encoding goes too.
_DROP_REQUEST = _HOP_BY_HOP | {"authorization", "x-api-key", "content-encoding"}
_PUBLIC_PATHS = frozenset({"/health", "/v1/health"})
_READ_WHOLE_LIMIT = 4 * 1024 * 1024  # non-streamed bodies up to this are sent in one go


class _Body(msgspec.Struct):
    model: str | None = None


_body_decoder = msgspec.json.Decoder(_Body)


def request_model(body: bytes) -> str | None:
    """The ``model`` field of a JSON request body. Raises a 400 :class:`HTTPError`."""
    if not body:
        raise HTTPError(400, "request body is empty; expected a JSON object")
    try:
        return _body_decoder.decode(body).model
    except msgspec.ValidationError as exc:
        raise HTTPError(400, f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None


class _Retry(Exception):
    """The server failed before the response started; try another one."""


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class InferenceProxy:
    """The inference listener's handlers."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        session: aiohttp.ClientSession,
        *,
        metrics: Metrics,
        api_keys: Iterable[str] = (),
        max_attempts: int = 5,
    ) -> None:
        self.dispatcher = dispatcher
        self.fleet = dispatcher.fleet
        self.session = session
        self.api_keys = tuple(k.encode() for k in api_keys if k)
        self.max_attempts = max_attempts
        self.metrics = metrics
        self.started = int(time.time())
        self._light_turn = 0

    def install(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)

    # ------------------------------------------------------------- routing
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Every request of the inference listener (no middleware: one frame less
        per waiting request)."""
        try:
            response = await self._route(request)
        except HTTPError as exc:
            response = render(request, exc)
        except web.HTTPException as exc:  # 413 from reading the body
            if exc.status < 400:
                raise
            response = render(request, exc)
        origin = request.headers.get("Origin")
        if origin is not None and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = origin
        return response

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.method == "OPTIONS":
            return _preflight(request)
        kind = classify(request.method, path)
        if self.api_keys and path not in _PUBLIC_PATHS:
            self._check_key(request)
        if kind is Kind.SLOT:
            return await self._proxy(request, slot=True)
        if kind is Kind.LIGHT:
            return await self._proxy(request, slot=False)
        if kind is Kind.FLEET:
            return self._fleet(path)
        if kind is Kind.BLOCKED:
            raise HTTPError(
                404,
                f"{request.method} {path} is a per-server endpoint and is not exposed "
                "through the balancer (fleet metrics are on the management listener)",
            )
        if any(classify(m, path) is not None for m in ("GET", "POST")):
            allowed = [m for m in ("GET", "POST") if classify(m, path) is not None]
            raise HTTPError(
                405,
                f"{request.method} is not allowed on {path}; use {' or '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        raise HTTPError(
            404, f"no such endpoint: {request.method} {path}. Known: {', '.join(known_paths())}"
        )

    def _check_key(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        key = header[7:] if header[:7].lower() == "bearer " else request.headers.get("x-api-key")
        if key is not None:
            given = key.strip().encode(errors="surrogateescape")
            if any(hmac.compare_digest(given, k) for k in self.api_keys):
                return
        raise HTTPError(401, "Invalid API Key")

    def _fleet(self, path: str) -> web.Response:
        if path in ("/health", "/v1/health"):
            status, body = aggregate.health(self.fleet)
            return web.json_response(body, status=status)
        if path == "/props":
            return web.json_response(aggregate.props(self.fleet))
        if path == "/slots":
            return web.json_response(aggregate.slots(self.fleet))
        return web.json_response(aggregate.models(self.fleet, self.started))

    # ----------------------------------------------------------- data path
    async def _proxy(self, request: web.Request, *, slot: bool) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        ex = _Exchange(request.headers.get("X-Request-Id") or os.urandom(16).hex(), loop.time())
        try:
            response = await self._attempts(request, ex, slot=slot)
        except HTTPError as exc:
            exc.headers["X-Request-Id"] = ex.request_id
            ex.status = exc.status
            if exc.status == 429:
                self.metrics.buffer_rejections.labels("full").inc()
                self.metrics.counts.rejected += 1
            elif exc.status == 503 and "no slot became free" in exc.message:
                self.metrics.buffer_rejections.labels("timeout").inc()
                self.metrics.counts.rejected += 1
            raise
        except asyncio.CancelledError:
            ex.status = 499  # the client went away
            raise
        finally:
            self._finish(request, ex, loop.time())
        return response

    async def _attempts(
        self, request: web.Request, ex: _Exchange, *, slot: bool
    ) -> web.StreamResponse:
        body = await request.read()
        if request.method == "POST" and "multipart" not in request.content_type:
            ex.model = request_model(body)
        info = RequestInfo(request.path, ex.model)
        headers = None  # built once a slot is found: nothing extra held while waiting
        last_error = ""
        for attempt in range(self.max_attempts):
            if attempt:
                self.metrics.retries.inc()
            target = await self.dispatcher.acquire(info) if slot else self._any_ready(info)
            ex.waited += target.waited
            ex.agent = target.name
            ex.served_model = target.model
            if headers is None:
                headers = _upstream_headers(request.headers)
                headers["X-Request-Id"] = ex.request_id
            try:
                return await self._forward(request, target, body, headers, ex, slot=slot)
            except _Retry as exc:
                last_error = str(exc)
        raise HTTPError(
            502, f"Corral: {self.max_attempts} servers failed in turn; last error: {last_error}"
        )

    def _finish(self, request: web.Request, ex: _Exchange, now: float) -> None:
        """Metrics and the log line of one request.

        Metrics are labelled with the model the server runs, never the client's
        ``model`` string: a one-model fleet accepts any name, and labels made from
        client input would grow without bound."""
        total = now - ex.started
        ttfb = None if ex.first_byte is None else ex.first_byte - ex.started
        model = ex.served_model or ""
        self.metrics.request_done(request.path, model, ex.status, total, ex.waited, ttfb)
        if ex.counted is not None:
            self.metrics.count_tokens(model or ex.agent or "", ex.counted)
        self.request_log(request, ex, total)

    def request_log(self, request: web.Request, ex: _Exchange, total: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        ttfb = ex.first_byte - ex.started if ex.first_byte is not None else None
        fields = {
            "request_id": ex.request_id,
            "method": request.method,
            "path": request.path,
            "status": ex.status,
            "model": ex.model,
            "agent": ex.agent,
            "buffer_wait_s": round(ex.waited, 6),
            "ttfb_s": round(ttfb, 6) if ttfb is not None else None,
            "duration_s": round(total, 6),
        }
        access_log.info(
            "%s %s %s %d model=%s agent=%s wait=%.3fs ttfb=%s total=%.3fs",
            ex.request_id,
            request.method,
            request.path,
            ex.status,
            ex.model or "-",
            ex.agent or "-",
            ex.waited,
            f"{ttfb:.3f}s" if ttfb is not None else "-",
            total,
            extra={"fields": fields},
        )

    def _any_ready(self, info: RequestInfo) -> Slot:
        """A routable server for a request that takes no slot, in rotating order."""
        pools = resolve_pools(self.fleet, info)
        if isinstance(pools, list):
            models = set(pools)
            ready = [a for a in self.fleet if a.routable and a.model in models]
            if ready:
                self._light_turn += 1
                agent: Agent = ready[self._light_turn % len(ready)]
                return Slot(agent.id, agent.address, agent.api_key, agent.name, 0.0, agent.model)
        elif isinstance(pools, Reject):
            raise HTTPError(pools.status, pools.message)
        raise HTTPError(503, "Corral: no server is ready", retry_after=1)

    async def _forward(
        self,
        request: web.Request,
        target: Slot,
        body: bytes,
        headers: CIMultiDict[str],
        ex: _Exchange,
        *,
        slot: bool,
    ) -> web.StreamResponse:
        """One attempt on one server. Frees the slot whatever happens."""
        healthy = True
        try:
            if target.api_key:
                headers["Authorization"] = f"Bearer {target.api_key}"
            else:
                headers.popall("Authorization", None)
            try:
                upstream = await self.session.request(
                    request.method,
                    target.address + request.path_qs,
                    data=body or None,
                    headers=headers,
                )
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                healthy = False
                self.metrics.upstream_failures.labels("connect").inc()
                raise _Retry(f"{target.name}: {_describe(exc)}") from None
            if upstream.status == 503:
                healthy = False
                self.metrics.upstream_failures.labels("unavailable").inc()
                try:
                    reason = (await upstream.read())[:200].decode(errors="replace")
                except (aiohttp.ClientError, TimeoutError, OSError):
                    reason = ""
                finally:
                    upstream.close()
                raise _Retry(f"{target.name}: 503 {reason}")
            try:
                response, healthy = await self._relay(request, upstream, target, ex)
            finally:
                upstream.close()
            return response
        except _Retry:
            healthy = False
            raise
        finally:
            if healthy:
                if slot:
                    self.dispatcher.release(target.agent_id)
            elif slot:
                self.dispatcher.failed(target.agent_id, "request failed")
            else:
                self.dispatcher.set_aside(target.agent_id, "request failed")

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        target: Slot,
        ex: _Exchange,
    ) -> tuple[web.StreamResponse, bool]:
        headers = CIMultiDict(
            (k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        headers["X-Request-Id"] = ex.request_id
        headers["X-Corral-Server"] = target.name
        headers["X-Corral-Buffer-Wait"] = f"{ex.waited:.6f}"
        origin = request.headers.get("Origin")
        if origin is not None:  # browsers (the dashboard's playground) may read it
            headers["Access-Control-Allow-Origin"] = origin
        ex.status = upstream.status
        length = upstream.content_length
        if length is not None and length <= _READ_WHOLE_LIMIT:
            try:
                data = await upstream.read()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self.metrics.upstream_failures.labels("mid_response").inc()
                raise _Retry(f"{target.name}: {_describe(exc)}") from None
            ex.first_byte = asyncio.get_running_loop().time()
            if upstream.status == 200 and (b'"usage"' in data or b'"timings"' in data):
                ex.counted = data
            return web.Response(status=upstream.status, body=data, headers=headers), True

        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        sse = "event-stream" in upstream.headers.get("Content-Type", "")
        tail: deque[bytes] = deque(maxlen=16)  # the end of the stream, for token counts
        content = upstream.content
        while True:
            try:
                chunk = await content.readany()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("%s failed mid-response: %s", target.name, _describe(exc))
                self.metrics.upstream_failures.labels("mid_response").inc()
                if not sse:
                    # No way to say so in a plain body: cut the connection, so the
                    # client sees a truncated response rather than a complete one.
                    ex.status = 502
                    if request.transport is not None:
                        request.transport.close()
                    return response, False
                await response.write(
                    sse_error_event(502, f"Corral: the server {target.name} failed mid-response")
                )
                ex.status = 502
                await response.write_eof()
                return response, False
            if not chunk:
                break
            if ex.first_byte is None:
                ex.first_byte = asyncio.get_running_loop().time()
            tail.append(chunk)
            await response.write(chunk)
        await response.write_eof()
        if sse and upstream.status == 200:
            ex.counted = last_counted_event(b"".join(tail))
        return response, True


@dataclass(slots=True)
class _Exchange:
    """What one request went through, for its metrics and log line."""

    request_id: str
    started: float
    model: str | None = None  # as the client asked (logs only)
    served_model: str | None = None  # what the server that answered runs
    agent: str | None = None
    status: int = 500
    waited: float = 0.0
    first_byte: float | None = None
    counted: bytes | None = None  # the JSON that reports usage/timings


def _upstream_headers(incoming: Mapping[str, str]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in incoming.items():
        if key.lower() not in _DROP_REQUEST:
            headers.add(key, value)
    return headers


def _preflight(request: web.Request) -> web.Response:
    """Answer a CORS preflight as llama-server does (browsers send it keyless)."""
    asked = request.headers.get("Access-Control-Request-Headers", "*")
    return web.Response(
        status=200,
        headers={
            "Access-Control-Allow-Origin": request.headers.get("Origin", "*"),
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": "GET, POST",
            "Access-Control-Allow-Headers": asked,
            "Access-Control-Expose-Headers": "X-Request-Id",
        },
    )
