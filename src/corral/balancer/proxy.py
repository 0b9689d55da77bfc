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

import hmac
import logging
import time
from collections.abc import Iterable, Mapping

import aiohttp
import msgspec
from aiohttp import web
from multidict import CIMultiDict

from corral.balancer import aggregate
from corral.balancer.dispatcher import Dispatcher, Slot
from corral.balancer.errors import HTTPError, render, sse_error_event
from corral.core.endpoints import Kind, classify, known_paths
from corral.core.fleet import Agent
from corral.core.policy import Reject, RequestInfo, resolve_pools

log = logging.getLogger("corral.proxy")

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
        api_keys: Iterable[str] = (),
        max_attempts: int = 5,
    ) -> None:
        self.dispatcher = dispatcher
        self.fleet = dispatcher.fleet
        self.session = session
        self.api_keys = tuple(k.encode() for k in api_keys if k)
        self.max_attempts = max_attempts
        self.started = int(time.time())
        self._light_turn = 0

    def install(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)

    # ------------------------------------------------------------- routing
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Every request of the inference listener (no middleware: one frame less
        per waiting request)."""
        try:
            return await self._route(request)
        except HTTPError as exc:
            return render(request, exc)
        except web.HTTPException as exc:  # 413 from reading the body
            if exc.status < 400:
                raise
            return render(request, exc)

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
        body = await request.read()
        model = None
        if request.method == "POST" and "multipart" not in request.content_type:
            model = request_model(body)
        info = RequestInfo(request.path, model)
        headers = None  # built once a slot is found: nothing extra held while waiting
        last_error = ""
        for _ in range(self.max_attempts):
            target = await self.dispatcher.acquire(info) if slot else self._any_ready(info)
            if headers is None:
                headers = _upstream_headers(request.headers)
            try:
                return await self._forward(request, target, body, headers, slot=slot)
            except _Retry as exc:
                last_error = str(exc)
        raise HTTPError(
            502, f"Corral: {self.max_attempts} servers failed in turn; last error: {last_error}"
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
                return Slot(agent.id, agent.address, agent.api_key, agent.name, 0.0)
        elif isinstance(pools, Reject):
            raise HTTPError(pools.status, pools.message)
        raise HTTPError(503, "Corral: no server is ready", retry_after=1)

    async def _forward(
        self,
        request: web.Request,
        target: Slot,
        body: bytes,
        headers: CIMultiDict[str],
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
                raise _Retry(f"{target.name}: {_describe(exc)}") from None
            if upstream.status == 503:
                healthy = False
                try:
                    reason = (await upstream.read())[:200].decode(errors="replace")
                except (aiohttp.ClientError, TimeoutError, OSError):
                    reason = ""
                finally:
                    upstream.close()
                raise _Retry(f"{target.name}: 503 {reason}")
            try:
                response, healthy = await self._relay(request, upstream, target)
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
        self, request: web.Request, upstream: aiohttp.ClientResponse, target: Slot
    ) -> tuple[web.StreamResponse, bool]:
        headers = CIMultiDict(
            (k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        length = upstream.content_length
        if length is not None and length <= _READ_WHOLE_LIMIT:
            try:
                data = await upstream.read()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise _Retry(f"{target.name}: {_describe(exc)}") from None
            return web.Response(status=upstream.status, body=data, headers=headers), True

        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        healthy = True
        content = upstream.content
        while True:
            try:
                chunk = await content.readany()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("%s failed mid-response: %s", target.name, _describe(exc))
                healthy = False
                if "event-stream" in upstream.headers.get("Content-Type", ""):
                    await response.write(
                        sse_error_event(
                            502, f"Corral: the server {target.name} failed mid-response"
                        )
                    )
                break
            if not chunk:
                break
            await response.write(chunk)
        await response.write_eof()
        return response, healthy


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
        },
    )
