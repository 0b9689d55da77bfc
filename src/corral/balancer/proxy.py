"""The data path: the inference listener, posing as one llama-server.

For each request: look the route up once (:mod:`corral.core.endpoints`), find the
``model`` field of the body (msgspec decodes only that field), reserve a slot
(:class:`~corral.balancer.dispatcher.Dispatcher`), send the original bytes upstream
(:mod:`corral.balancer.upstream`), and relay the response. Streamed responses are
relayed chunk by chunk as they arrive: no parsing, no re-encoding, no buffering.
The HTTP server under it is :mod:`corral.balancer.http_server`.

The retry rule (docs/reliability.md): a failure before the response starts is
retried on another server, after setting the failing one aside, only when it is safe:

- the request was never sent (no connection), or the server refused it (503 while
  loading): retried, up to ``max_attempts`` servers in all;
- the server held the request and then failed (its connection broke, a deadline
  passed, its agent says it stopped answering): retried once. A second such failure
  is answered 502 in OpenAI's error format and logged, not sent to a third server: a
  request that crashes its server (a query of death) takes down two at most.

A failure after the response started ends a stream with an SSE error event (a
non-streamed body is cut, so it cannot pass for complete); both are counted
(``corral_streams_cut``). A client that disconnects cancels its handler, which
closes the upstream connection (llama-server then stops the generation) and frees
the slot at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from corral.balancer import aggregate, llamacpp_metrics, slot_actions
from corral.balancer.cors import Cors
from corral.balancer.dispatcher import Dispatcher, Reservation
from corral.balancer.errors import HTTPError, log_error, not_utf8, sse_error_event
from corral.balancer.forwarded import FORWARDED_HEADERS, ProxyTrust, forwarded_lines
from corral.balancer.http_server import Request, Responder, encode_headers
from corral.balancer.lora import with_lora
from corral.balancer.metrics import (
    Counted,
    Metrics,
    last_counted_event,
    read_counts,
    token_events,
)
from corral.balancer.prompt import prompt_of
from corral.balancer.upstream import (
    UpstreamBroken,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
)
from corral.config.keys import KeyEntry, Keys
from corral.core.endpoints import Kind, api_of, classify, known_paths
from corral.core.events import Timings
from corral.core.fleet import Backend
from corral.core.policy import Reject, RequestInfo, resolve_pools
from corral.core.queueing import DEFAULT_TENANT, Priority, Tenant
from corral.core.routing.filters import has_adapter

log = logging.getLogger("corral.proxy")
access_log = logging.getLogger("corral.access")
"""One line per request: id, route, status, model, agent, buffer wait, durations."""

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
# RFC 9110 §7.6.1, and Host and Content-Length, which the pool sets; so are the
# headers a Connection header names (_nominated). Bodies are sent upstream decoded
# (see _decoded), so their encoding goes too; the balancer answers Expect itself,
# sets its own X-Request-Id and the forwarded headers (corral.balancer.forwarded).
_DROP_REQUEST = (
    FORWARDED_HEADERS
    | _HOP_BY_HOP
    | {
        b"authorization",
        b"x-api-key",
        b"content-encoding",
        b"expect",
        b"x-request-id",
        b"x-corral-priority",  # the balancer's to read, not the server's
        b"http2-settings",  # with Upgrade: h2c, which the balancer declines
    }
)
# Headers the balancer sets itself replace the server's (never sent twice).
# CORS is the balancer's (corral.balancer.cors), whatever the servers' settings.
_DROP_RESPONSE = _HOP_BY_HOP | {
    b"x-request-id",
    b"x-corral-server",
    b"x-corral-buffer-wait",
    b"x-corral-predicted-cached-tokens",
    b"access-control-allow-origin",
    b"access-control-allow-credentials",
}
_PUBLIC_PATHS = frozenset({"/health", "/v1/health"})
_READ_WHOLE_LIMIT = 4 * 1024 * 1024  # non-streamed bodies up to this are sent in one go


class _Body(msgspec.Struct):
    model: str | None = None
    id_slot: Any = None
    stream: Any = None


_body_decoder = msgspec.json.Decoder(_Body)


def request_model(body: bytes) -> str | None:
    """The ``model`` field of a JSON request body. Raises a 400 :class:`HTTPError`."""
    return request_fields(body).model


def request_fields(body: bytes) -> _Body:
    """The fields of a JSON request body the balancer reads (``model``, ``id_slot``).
    Raises a 400 :class:`HTTPError`."""
    if not body:
        raise HTTPError(400, "request body is empty; expected a JSON object")
    try:
        return _body_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise HTTPError(400, f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # msgspec's, for a string that is not UTF-8
        raise HTTPError(400, f"request body is not valid JSON: {not_utf8(exc)}") from None


def _decoded(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A request body without its Content-Encoding (gzip or deflate), as llama-server
    reads bodies plain. Raises a 400 or 413 :class:`HTTPError`."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    kind = encoding.strip().lower()
    if kind not in ("gzip", "x-gzip", "deflate"):
        raise HTTPError(415, f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
    wbits = 47 if kind != "deflate" else 15  # gzip (or zlib) / zlib
    try:
        decoder = zlib.decompressobj(wbits)
        data = decoder.decompress(body, limit + 1)
        if len(data) > limit or decoder.unconsumed_tail:
            raise HTTPError(413, f"request body too large once decoded: the limit is {limit} bytes")
        return data + decoder.flush()
    except zlib.error as exc:
        raise HTTPError(400, f"request body is not valid {kind}: {exc}") from None


def _refused_unread(status: int) -> bool:
    """Whether a server that answered ``status`` refused the request before reading its
    prompt: a 503 (llama-server with no slot, or loading) or any 4xx (it checks the
    fields, and the prompt's length against the slot's context, first), so its cache
    holds what it held (:class:`~corral.core.events.Finished`'s ``sent``)."""
    return status == 503 or 400 <= status < 500


def _line(name: bytes, value: str) -> bytes:
    """One header line from a value we did not choose (names, ids): never two lines."""
    clean = value.encode("latin-1", "replace").replace(b"\r", b" ").replace(b"\n", b" ")
    return name + b": " + clean + b"\r\n"


class _Retry(Exception):
    """The server failed before the response started; another may be tried.

    ``held``: the server may have received the request (it broke, timed out or hung
    while holding it), so it is retried only once; else it never got it, or refused
    it, and retrying is safe."""

    def __init__(self, message: str, *, held: bool) -> None:
        super().__init__(message)
        self.held = held


class InferenceProxy:
    """The inference listener's handler."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        pool: UpstreamPool,
        *,
        metrics: Metrics,
        api_keys: Iterable[str] = (),
        keys: Keys | None = None,
        max_attempts: int = 5,
        head_timeout: float | None = None,
        max_body_size: int = 64 * 1024 * 1024,
        trust: ProxyTrust | None = None,
        cors: Cors | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.fleet = dispatcher.fleet
        self.pool = pool
        self.keys = keys or Keys(KeyEntry(Tenant(), key=k) for k in api_keys if k)
        """Accepted keys and the tenants they name (:mod:`corral.config.keys`)."""
        self.max_attempts = max_attempts
        self.head_timeout = head_timeout
        """Seconds to a response head for streamed requests and those that take no
        slot (see :mod:`corral.balancer.upstream`)."""
        self.max_body_size = max_body_size
        self.metrics = metrics
        self.trust = trust if trust is not None else ProxyTrust()
        """Peers whose X-Forwarded-* and Forwarded headers are believed."""
        self.cors = cors or Cors()
        self.started = int(time.time())
        self._light_turn = 0
        self._prompts = dispatcher.scheduler.policy.needs_prompt
        """The policy routes by prompt (prefix routing): read it."""
        self.batches: Callable[[Request, Responder, Tenant | None], Awaitable[None]] | None = None
        """The Batch API's handler (:mod:`corral.balancer.batches`), with ``--data-dir``."""

    # ------------------------------------------------------------- routing
    async def handle(self, request: Request, out: Responder) -> None:
        """Every request of the inference listener."""
        try:
            await self._route(request, out)
        except HTTPError as exc:
            log_error(request.method, request.path, request.remote, exc)
            if out.started:  # pragma: no cover - errors are raised before responding
                out.abort()
                return
            headers = list(exc.header_pairs())
            headers += self.cors.response_headers(request.header(b"origin"))
            out.send_json(exc.status, exc.body(), headers)

    async def _route(self, request: Request, out: Responder) -> None:
        path = request.path
        if request.method == "OPTIONS":  # browsers send preflights keyless
            headers = self.cors.preflight_headers(request.header(b"origin"))
            return out.send(200, encode_headers(headers), b"")
        head = request.method == "HEAD"  # answered like GET, without the body
        kind = classify("GET" if head else request.method, path)
        if head and kind is not Kind.FLEET:
            kind = None  # a HEAD is never proxied
        if request.tenant is not None:  # made in the balancer (a batch line): no key
            tenant = self._tenant_named(request.tenant)
        elif self.keys and path not in _PUBLIC_PATHS:
            tenant = self._check_key(request)
        else:
            tenant = None
        if kind is Kind.INFERENCE:
            return await self._proxy(request, out, inference=True, tenant=tenant)
        if kind is Kind.LIGHT:
            return await self._proxy(request, out, inference=False, tenant=tenant)
        if kind is Kind.SLOT_ACTION:
            return await self._slot_action(request, out)
        if kind is Kind.BATCH:
            if self.batches is None:
                raise HTTPError(404, f"{path}: the Batch API is served with --data-dir only")
            return await self.batches(request, out, tenant)
        if kind is Kind.FLEET and path == "/metrics":
            return await self._metrics(request, out)
        if kind is Kind.FLEET:
            return self._fleet(request, out)
        if kind is Kind.BLOCKED:
            raise HTTPError(
                404,
                f"{request.method} {path} changes one server and is not exposed "
                "through the balancer",
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

    def _tenant_named(self, name: str) -> Tenant | None:
        """The tenant an in-process request runs as (None: the default one, when no
        keys are asked). Raises a 401 :class:`HTTPError` when no key names it now (a
        batch made before the balancer restarted with other keys: its creator's key was
        revoked; ``default``'s too when no ``--api-key`` is left, or a batch made while
        no key was asked)."""
        if not self.keys:
            return None
        if name not in self.keys.named:
            raise HTTPError(
                401,
                f"no key names the tenant {name!r} now: the key that made this batch "
                "is no longer accepted",
            )
        return self.keys.tenants[name]

    def _check_key(self, request: Request) -> Tenant:
        """The tenant of the request's key. Raises a 401 :class:`HTTPError`."""
        header = request.header(b"authorization") or ""
        key = header[7:] if header[:7].lower() == "bearer " else request.header(b"x-api-key")
        if key is not None:
            tenant = self.keys.match(key.strip().encode("latin-1", "replace"))
            if tenant is not None:
                return tenant
        raise HTTPError(401, "Invalid API Key")

    def _fleet(self, request: Request, out: Responder) -> None:
        path = request.path
        status = 200
        body: object
        down = aggregate.not_ready(self.fleet)
        if path in ("/health", "/v1/health"):
            status, body = aggregate.health(self.fleet)
        elif down is not None:  # as llama-server while it loads: 503 on every route
            status, body = 503, down
        elif path == "/props":
            body = aggregate.props(self.fleet)
        elif path == "/slots":
            status, body = aggregate.slots(self.fleet)
        else:
            body = aggregate.models(self.fleet, self.started)
        out.send_json(status, body, self.cors.response_headers(request.header(b"origin")))

    async def _metrics(self, request: Request, out: Responder) -> None:
        """llama.cpp's metrics of the ready servers, combined (read on scrape)."""
        if (down := aggregate.not_ready(self.fleet)) is not None:
            return out.send_json(503, down, self.cors.response_headers(request.header(b"origin")))
        answer = await llamacpp_metrics.scrape(self.pool, [a for a in self.fleet if a.routable])
        headers = [
            ("Content-Type", answer.content_type),
            ("Process-Start-Time-Unix", str(self.started)),
            *self.cors.response_headers(request.header(b"origin")),
        ]
        out.send(answer.status, encode_headers(headers), answer.body)

    async def _slot_action(self, request: Request, out: Responder) -> None:
        """``POST /slots/<fleet id>?action=...`` on the server that holds the slot."""
        request_id = request.header(b"x-request-id") or os.urandom(16).hex()
        headers = _upstream_headers(request, request_id, self.trust.trusts(request.remote))
        status, body, server = await slot_actions.forward(self.fleet, self.pool, request, headers)
        pairs = [
            ("Content-Type", "application/json; charset=utf-8"),
            ("X-Request-Id", request_id),
            ("X-Corral-Server", server),
            *self.cors.response_headers(request.header(b"origin")),
        ]
        out.send(status, encode_headers(pairs), body)

    # ----------------------------------------------------------- data path
    async def _proxy(
        self, request: Request, out: Responder, *, inference: bool, tenant: Tenant | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        ex = _Exchange(request.header(b"x-request-id") or os.urandom(16).hex(), loop.time())
        ex.tenant = tenant or self.keys.tenants[DEFAULT_TENANT]
        ex.priority = ex.tenant.priority_for(request.header(b"x-corral-priority"))
        try:
            await self._attempts(request, out, ex, inference=inference)
        except HTTPError as exc:
            exc.headers["X-Request-Id"] = ex.request_id
            ex.status = exc.status
            if exc.buffer is not None:  # the buffer turned it away (not a message's words)
                self.metrics.buffer_rejections.labels(exc.buffer).inc()
                self.metrics.counts.rejected += 1
            raise
        except (asyncio.CancelledError, ConnectionError):
            ex.status = 499  # the client went away
            raise
        finally:
            self._finish(request, ex, loop.time())

    async def _attempts(
        self, request: Request, out: Responder, ex: _Exchange, *, inference: bool
    ) -> None:
        body = _decoded(request.body, request.header(b"content-encoding"), self.max_body_size)
        pinned = None
        head_timeout = None if inference else self.head_timeout
        if request.method == "POST" and "multipart" not in (request.header(b"content-type") or ""):
            fields = request_fields(body)
            if fields.stream is True:
                head_timeout = self.head_timeout
            ex.model = fields.model
            id_slot = fields.id_slot
            if inference and type(id_slot) is int and id_slot >= 0:  # a fleet slot id
                body, pinned = slot_actions.pin(self.fleet, body, id_slot)
        prompt = prompt_of(body) if inference and self._prompts and pinned is None else None
        adapter = ex.model if ex.model is not None and self.fleet.is_adapter(ex.model) else None
        info = ex.info = RequestInfo(
            request.path,
            ex.model,
            pinned,
            prompt,
            api=api_of(request.path),
            priority=ex.priority,
            tenant=ex.tenant.name,
            size=len(body),
            adapter=adapter,
        )
        headers = b""  # built once a slot is found: nothing extra held while waiting
        last_error = ""
        held = 0  # servers that failed while holding the request
        for attempt in range(self.max_attempts):
            if attempt:
                self.metrics.retries.inc()
            if inference:
                asked = self.dispatcher.clock.now()
                try:
                    target = await self.dispatcher.acquire(info)
                except BaseException:  # timed out, refused, or the client left: it waited
                    ex.waited += self.dispatcher.clock.now() - asked
                    raise
            else:
                target = self._any_ready(info)
            ex.waited += target.waited  # 0 when a slot was free at once
            out.placed(True)
            ex.backend = target.name
            ex.served_model = target.model
            sent = body
            if adapter is not None:  # its id on that server, alone (see balancer/lora.py)
                sent = self._with_lora(body, target, adapter, info, inference=inference)
            if not headers:
                trusted = self.trust.trusts(request.remote)
                headers = _upstream_headers(request, ex.request_id, trusted)
            try:
                return await self._forward(
                    request, out, target, sent, headers, ex, head_timeout, inference=inference
                )
            except _Retry as exc:
                out.placed(False)  # it waits for a slot again
                last_error = str(exc)
                held += exc.held
                if held > 1:
                    self.metrics.not_retried.inc()
                    log.warning("%s not sent to a third server: %s", ex.request_id, last_error)
                    raise HTTPError(
                        502,
                        "Corral: two servers failed in turn while holding this request; it "
                        "is not sent to another, as it may be what makes them fail. Last "
                        f"error: {last_error}",
                    ) from None
        raise HTTPError(
            502, f"Corral: {self.max_attempts} servers failed in turn; last error: {last_error}"
        )

    def _finish(self, request: Request, ex: _Exchange, now: float) -> None:
        """Metrics and the log line of one request.

        Metrics are labelled with the model the server runs, never the client's
        ``model`` string: a one-model fleet accepts any name, and labels made from
        client input would grow without bound."""
        total = now - ex.started
        model = ex.served_model or ""
        self.metrics.request_done(request.path, model, ex.status, total, ex.waited)
        self.metrics.tenant_done(ex.tenant.name, ex.priority.label, ex.status, ex.waited)
        if ex.counts is not None:
            agent = ex.backend or ""
            self.metrics.count_tokens(agent, model or agent, ex.counts, ex.streamed)
            if ex.timings is not None:  # measured under any routing
                self.metrics.count_cached(agent, ex.predicted, ex.timings)
        self.request_log(request, ex, total)

    def request_log(self, request: Request, ex: _Exchange, total: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        ttfb = ex.first_byte - ex.started if ex.first_byte is not None else None
        # a prompt's reused tokens as the server measured them, of the prompt's, and as
        # the balancer predicted them: where prefix routing misjudged a cache (#10)
        timings, predicted = ex.timings, ex.predicted
        cached = "-"
        if timings is not None:  # measured under any routing; predicted under prefix's
            cached = f"{timings.cache_n}/{timings.prompt_tokens}"
            if predicted is not None:
                cached += f"~{predicted}"
        fields = {
            "request_id": ex.request_id,
            "method": request.method,
            "path": request.path,
            "status": ex.status,
            "model": ex.model,
            "agent": ex.backend,
            "tenant": ex.tenant.name,
            "priority": ex.priority.label,
            "buffer_wait_s": round(ex.waited, 6),
            "route": ex.info.note.reason if ex.info else None,
            "cache_n": timings.cache_n if timings is not None else None,
            "prompt_tokens": timings.prompt_tokens if timings is not None else None,
            "predicted_cached": predicted,
            "ttfb_s": round(ttfb, 6) if ttfb is not None else None,
            "duration_s": round(total, 6),
        }
        access_log.info(
            "%s %s %s %d model=%s agent=%s tenant=%s priority=%s route=%s cached=%s wait=%.3fs "
            "ttfb=%s total=%.3fs",
            ex.request_id,
            request.method,
            request.path,
            ex.status,
            ex.model or "-",
            ex.backend or "-",
            ex.tenant.name,
            ex.priority.label,
            (ex.info.note.reason if ex.info else "") or "-",
            cached,
            ex.waited,
            f"{ttfb:.3f}s" if ttfb is not None else "-",
            total,
            extra={"fields": fields},
        )

    def _with_lora(
        self, body: bytes, target: Reservation, adapter: str, info: RequestInfo, *, inference: bool
    ) -> bytes:
        """The body for ``target`` with its ``lora`` field set to apply ``adapter``; on
        failure the slot is given back (the error goes to the client)."""
        backend = self.fleet.get(target.backend_id) if target.backend_id in self.fleet else None
        try:
            return with_lora(body, backend.adapters if backend else (), adapter)
        except HTTPError:
            if inference:
                self.dispatcher.release(target.backend_id, request=info, sent=False)
            raise

    def _any_ready(self, info: RequestInfo) -> Reservation:
        """A routable server for a request that takes no slot, in rotating order."""
        pools = resolve_pools(self.fleet, info)
        if isinstance(pools, list):
            models = set(pools)
            ready = [
                a
                for a in self.fleet
                if a.routable
                and any(m in models for m in a.hot)
                and (info.api is None or info.api in a.apis)
                and has_adapter(a, info)
            ]
            if ready:
                self._light_turn += 1
                backend: Backend = ready[self._light_turn % len(ready)]
                return Reservation(
                    backend.id,
                    backend.address,
                    backend.api_key,
                    backend.name,
                    0.0,
                    backend.model_for(info.model),
                )
        elif isinstance(pools, Reject):
            raise HTTPError(pools.status, pools.message)
        raise HTTPError(503, "Corral: no server is ready", retry_after=1)

    async def _forward(
        self,
        request: Request,
        out: Responder,
        target: Reservation,
        body: bytes,
        headers: bytes,
        ex: _Exchange,
        head_timeout: float | None,
        *,
        inference: bool,
    ) -> None:
        """One attempt on one server. Frees the slot whatever happens."""
        healthy = True
        read = False  # whether the server may have read the request (the prefix index)
        try:
            if target.api_key:
                headers += _line(b"Authorization", f"Bearer {target.api_key}")
            try:
                upstream = await self.pool.request(
                    target.address, request.method, request.target, headers, body, head_timeout
                )
            except UpstreamError as exc:
                self.metrics.upstream_failures.labels(exc.kind).inc()
                read = exc.sent
                raise _Retry(f"{target.name}: {exc}", held=exc.sent) from None
            read = not _refused_unread(upstream.status)
            try:
                if upstream.status == 503:
                    self.metrics.upstream_failures.labels("unavailable").inc()
                    try:
                        reason = (await upstream.read())[:200].decode(errors="replace")
                    except UpstreamBroken:
                        reason = ""
                    raise _Retry(f"{target.name}: 503 {reason}", held=False)
                healthy = await self._relay(request, out, upstream, target, ex)
            finally:
                upstream.close()
        except _Retry:
            healthy = False
            raise
        finally:
            if healthy:
                if inference:
                    # a relayed 4xx was refused unread: the prefix index takes it back
                    sent = not _refused_unread(ex.status)
                    self.dispatcher.release(
                        target.backend_id, request=ex.info, timings=ex.timings, sent=sent
                    )
            elif inference:
                self.dispatcher.failed(target.backend_id, "request failed", ex.info, sent=read)
            else:
                self.dispatcher.set_aside(target.backend_id, "request failed")

    async def _relay(
        self,
        request: Request,
        out: Responder,
        upstream: UpstreamResponse,
        target: Reservation,
        ex: _Exchange,
    ) -> bool:
        """Relay the response; ``False`` if the server broke off mid-response."""
        head = _response_headers(upstream.headers, _DROP_RESPONSE, target.name)
        head += _line(b"X-Request-Id", ex.request_id)
        head += _line(b"X-Corral-Server", target.name)
        head += b"X-Corral-Buffer-Wait: %.6f\r\n" % ex.waited
        if (predicted := ex.predicted) is not None:
            head += b"X-Corral-Predicted-Cached-Tokens: %d\r\n" % predicted
        # browsers (the dashboard's playground) may read it; one value only: browsers
        # refuse a response that repeats this header
        allowed = self.cors.allow_origin(request.header(b"origin"))
        if allowed is not None:
            head += _line(b"Access-Control-Allow-Origin", allowed)
        ex.status = upstream.status
        length = upstream.content_length
        if (length is not None and length <= _READ_WHOLE_LIMIT) or upstream.status in (204, 304):
            try:
                data = await upstream.read()
            except UpstreamBroken as exc:
                self.metrics.upstream_failures.labels(exc.kind).inc()
                raise _Retry(f"{target.name}: {exc}", held=True) from None
            ex.first_byte = asyncio.get_running_loop().time()
            self.metrics.first_byte_at(request.path, ex.first_byte - ex.started)
            out.send(upstream.status, bytes(head), data)
            if upstream.status == 200 and (b'"usage"' in data or b'"timings"' in data):
                ex.counts = read_counts(data)  # after the answer left: not on its way
            return True

        # The head leaves with the first chunk when that has already arrived.
        out.start(upstream.status, bytes(head), hold=upstream.waiting)
        sse = "event-stream" in (upstream.header(b"content-type") or "")
        tail: deque[bytes] = deque(maxlen=16)  # the end of the stream, for token counts
        loop = asyncio.get_running_loop()
        # tokens/s live: one piece of content, one token (settled when the stream ends)
        tally = self.metrics.tally(target.name, target.model or target.name)
        live = sse and upstream.status == 200
        first_byte_at, path = self.metrics.first_byte_at, request.path

        def relay(chunk: bytes, last: bool) -> None:
            """Straight from the server's socket to the client's, once per read."""
            if chunk:
                if ex.first_byte is None:  # time to first token, counted now
                    ex.first_byte = loop.time()
                    first_byte_at(path, ex.first_byte - ex.started)
                tail.append(chunk)
                if live and (events := token_events(chunk)):
                    ex.streamed += events
                    tally.stream(events)
            if not out.write_nowait(chunk, last=last) and not last:  # the client is slower
                upstream.pause_reading()
                out.when_writable(upstream.resume_reading)

        upstream.relay(relay)
        try:
            await upstream.ended()
        except UpstreamBroken as exc:
            out.when_writable(None)
            log.warning("%s failed mid-response: %s", target.name, exc)
            self.metrics.upstream_failures.labels("mid_response").inc()
            self.metrics.streams_cut.labels(exc.kind).inc()
            ex.status = 502
            if not sse:
                # No way to say so in a plain body: cut the connection, so the
                # client sees a truncated response rather than a complete one.
                out.abort()
                return False
            message = f"Corral: the server {target.name} failed mid-response: {exc}"
            with contextlib.suppress(ConnectionError):  # the client may be gone too
                await out.write(sse_error_event(502, message))
                out.finish()
            return False
        out.when_writable(None)  # the connection goes back to the pool: forget it here
        if out.client_gone:
            raise ConnectionResetError("the client disconnected")
        out.finish()
        if sse and upstream.status == 200:
            ex.counts = read_counts(last_counted_event(b"".join(tail)))
        return True


_DEFAULT = Tenant()


@dataclass(slots=True)
class _Exchange:
    """What one request went through, for its metrics and log line."""

    request_id: str
    started: float
    model: str | None = None  # as the client asked (logs only)
    served_model: str | None = None  # what the server that answered runs
    backend: str | None = None
    status: int = 500
    waited: float = 0.0
    first_byte: float | None = None
    counts: Counted | None = None  # the tokens its answer reports (usage, timings)
    info: RequestInfo | None = None  # what routing knew and decided (its note)
    streamed: int = 0  # token events counted live as the answer was relayed
    tenant: Tenant = _DEFAULT  # whose key it came with (its name in metrics and logs)
    priority: Priority = Priority.INTERACTIVE

    @property
    def timings(self) -> Timings | None:
        """The answer's ``timings`` (cache reuse, prefill time), once read; else None."""
        return None if self.counts is None else self.counts.timings

    @property
    def predicted(self) -> int | None:
        """The prompt tokens prefix routing predicted the server holds; None where the
        policy read no prompt (slot routing predicts nothing)."""
        info = self.info
        return info.note.predicted_cached if info is not None and info.prompt is not None else None


def _nominated(values: list[bytes]) -> frozenset[bytes]:
    """The header names ``Connection`` values list: hop-by-hop, never forwarded (RFC
    9110 §7.6.1). ``Connection: close, X-Foo`` names ``x-foo``."""
    names = {n.strip().lower() for value in values for n in value.split(b",")}
    names.discard(b"close")
    return frozenset(names)


def _upstream_headers(
    request: Request, request_id: str, trusted: bool, drop: frozenset[bytes] = _DROP_REQUEST
) -> bytes:
    """The request's header lines for the server: end-to-end ones as they came, then
    X-Request-Id and the forwarded headers. Values were checked by the HTTP server
    (no CR, LF or NUL; at most one valid Host)."""
    head = bytearray()
    forwarded: dict[bytes, list[bytes]] = {}
    host = None
    connection = []
    for name, value in request.headers:
        lower = name.lower()
        if lower not in drop:
            head += name + b": " + value + b"\r\n"
        elif lower == b"host":
            host = value.strip()
        elif lower == b"connection":
            connection.append(value)
        elif lower in FORWARDED_HEADERS:
            forwarded.setdefault(lower, []).append(value.strip())
    if connection:  # rarely names more than keep-alive: then go again without them
        nominated = _nominated(connection)
        if not nominated <= drop:
            return _upstream_headers(request, request_id, trusted, drop | nominated)
        for name in nominated & FORWARDED_HEADERS:
            forwarded.pop(name, None)
    head += _line(b"X-Request-Id", request_id)
    head += forwarded_lines(forwarded, request.remote, host, trusted, request.scheme)
    return bytes(head)


def _response_headers(
    headers: list[tuple[bytes, bytes]], drop: frozenset[bytes], server: str
) -> bytearray:
    """The server's response header lines for the client, less hop-by-hop ones (and
    those its ``Connection`` names) and ``drop``. A header with CR, LF or NUL in it
    (llhttp lets none through) is left out: one line in, one line out."""
    head = bytearray()
    lines = 0
    connection = []
    for name, value in headers:
        lower = name.lower()
        if lower not in drop:
            head += name + b": " + value + b"\r\n"
            lines += 1
        elif lower == b"connection":
            connection.append(value)
    if connection and not (nominated := _nominated(connection)) <= drop:
        return _response_headers(headers, drop | nominated, server)
    if head.count(b"\n") == lines == head.count(b"\r") and b"\0" not in head:
        return head
    head.clear()
    for name, value in headers:
        if name.lower() in drop:
            continue
        if any(c in name or c in value for c in (b"\r", b"\n", b"\0")):
            log.warning("%s sent an invalid header, not relayed: %r", server, name)
            continue
        head += name + b": " + value + b"\r\n"
    return head
