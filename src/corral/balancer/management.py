"""The management listener: the agent socket and the operators' API.

- ``GET /api/v1/agent-socket``: agents connect here (WebSocket, see
  :mod:`corral.protocol.messages`). A socket that closes removes its agent.
- ``GET /api/v1/agents``: the fleet as JSON.
- ``GET /api/v1/agents/stream``: the same, as Server-Sent Events on every change
  (coalesced to at most one event per ``--stream-interval``).
- ``GET /api/v1/buffered-requests``: what waits in the buffer.
- ``GET /health``: the balancer process is up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import uuid
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from corral import dashboard
from corral.balancer.desired import Rollout, StoreError
from corral.balancer.dispatcher import Dispatcher
from corral.balancer.errors import HTTPError
from corral.balancer.metrics import Metrics
from corral.core.clock import Clock
from corral.core.endpoints import DEFAULT_APIS
from corral.core.fleet import Adapter, Backend, Condition, Issue, Report
from corral.protocol import messages as m

log = logging.getLogger("corral.management")

MAX_FRAME = 1024 * 1024
MAX_BAD_FRAMES = 20  # consecutive bad frames before a socket is closed


_CONDITION_WORDS = {
    Condition.LOADING: "its server is loading the model",
    Condition.UNREACHABLE: "its agent cannot reach its server",
    Condition.UNAUTHORIZED: "its server refuses the agent's API key",
    Condition.BAD_RESPONSE: "its server does not answer as llama-server does",
    Condition.ERROR: "its server answers with errors",
}


def not_routable(backend: Backend, now: float) -> list[str]:
    """Why the balancer sends a backend no requests, in words; empty when it does.

    One sentence per reason, in the order an operator would look into them (the
    agent's own issues are listed beside them, not repeated here).
    """
    reasons: list[str] = []
    if not backend.heartbeat_ok:
        reasons.append(
            f"heartbeat missed: last heard from {max(0.0, now - backend.last_seen):.0f} s ago"
        )
    if backend.condition is not Condition.READY:
        reasons.append(
            _CONDITION_WORDS.get(backend.condition, f"its server is {backend.condition}")
        )
    if backend.set_aside:
        reasons.append("set aside after a failed request, until its agent reports it ready again")
    if backend.cordoned:
        ago = max(0.0, now - backend.cordoned_at)
        reasons.append(f"cordoned for a rollout {ago:.0f} s ago (draining its requests)")
    if backend.applying:
        reasons.append("its agent is applying new settings (restarting its server)")
    return reasons


def backend_json(backend: Backend, now: float) -> dict[str, Any]:
    """A backend (an agent and its server) as operators see it (never its API key)."""
    return {
        "id": backend.id,
        "name": backend.name,
        "address": backend.address,
        "model": backend.model,
        "models": {name: state.value for name, state in backend.models.items()} or None,
        "state": backend.state.value,
        "condition": backend.condition.value,
        "slots_total": backend.slots_total,
        "slots_busy": backend.busy,
        "slots_free": backend.free,
        "slots_share": backend.slots_share,
        "slots_processing_reported": backend.slots_processing,
        "reserved": backend.reserved,
        "set_aside": backend.set_aside,
        "issues": [{"code": i.code, "message": i.message} for i in backend.issues],
        "not_routable": not_routable(backend, now),
        "runner": backend.runner or "llamacpp",
        "apis": sorted(backend.apis),
        "adapters": [
            {"name": a.name, "id": a.id, "path": a.path, "scale": a.scale} for a in backend.adapters
        ],
        "supervisor": backend.supervisor,
        "applied_generation": backend.applied_generation if backend.supervised else None,
        "last_seen_ago_s": round(max(0.0, now - backend.last_seen), 3),
        "registered_ago_s": round(max(0.0, now - backend.registered_at), 3),
    }


def to_report(status: m.ServerStatus) -> Report:
    return Report(
        cache_ram_mib=status.cache_ram_mib,
        condition=status.condition,
        model=status.model,
        slots_total=status.slots_total,
        slots_processing=min(status.slots_processing, status.slots_total),
        issues=tuple(Issue(i.code, i.message) for i in status.issues),
        props=status.props,
        model_list=status.model_list,
        apis=frozenset(status.apis) if status.apis else DEFAULT_APIS,
        runner=status.runner,
        supervisor=msgspec.to_builtins(status.supervisor) if status.supervisor else None,
        applied_generation=status.applied.generation if status.applied else 0,
        failed_generation=status.failed_generation,
        applying=status.applying,
        models=tuple((info.id, info.state) for info in status.models),
        models_max=status.models_max or None,
        adapters=tuple(Adapter(a.name, a.id, a.path, a.scale) for a in status.adapters),
    )


def read_span(message: m.Status, now: float) -> tuple[float | None, float | None]:
    """When the agent's read behind ``message`` began and ended, on the balancer's
    clock (``now``: when it arrived): :class:`Report`'s ``(read_at, read_end)``. Either
    is None when unsaid (no end without a start); an end said before the start is taken
    as the start."""
    if message.read_age is None:
        return None, None
    read_at = now - message.read_age
    if message.read_end_age is None:
        return read_at, None
    return read_at, max(read_at, now - message.read_end_age)


class Management:
    """Handlers of the management listener, and the live agent sockets."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        clock: Clock,
        *,
        agent_token: str | None,
        management_token: str | None,
        heartbeat_interval: float,
        stream_interval: float = 0.1,
        socket_heartbeat: float = 5.0,
    ) -> None:
        self.dispatcher = dispatcher
        self.fleet = dispatcher.fleet
        self.clock = clock
        self.agent_token = agent_token
        self.management_token = management_token
        self.heartbeat_interval = heartbeat_interval
        self.stream_interval = stream_interval
        self.socket_heartbeat = socket_heartbeat
        self._streams: set[asyncio.Task[Any]] = set()
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.rollout: Rollout | None = None
        self.metrics: Metrics | None = None
        self.batches: Any = None
        """The Batch API (:class:`corral.balancer.batches.BatchService`), with --data-dir."""
        self.inference_port = 0
        self.inference_scheme = "http"
        self._page = dashboard.page()

    def install(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/agent-socket", self.agent_socket)
        app.router.add_get("/api/v1/agents", self.agents)
        app.router.add_get("/api/v1/agents/stream", self.agents_stream)
        app.router.add_get("/api/v1/buffered-requests", self.buffered_requests)
        app.router.add_get("/api/v1/batches", self.batch_jobs)
        app.router.add_get("/api/v1/desired-state", self.get_desired)
        app.router.add_put("/api/v1/desired-state", self.put_desired)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/", self.dashboard)
        app.router.add_get("/dashboard", self.dashboard)
        app.router.add_get("/dashboard/vendor/{name}", self.vendor)
        app.router.add_get("/api/v1/info", self.info)
        app.router.add_get("/health", self.health)

    # ---------------------------------------------------------------- auth
    @staticmethod
    def _bearer_ok(request: web.Request, token: str | None) -> bool:
        if token is None:
            return True
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else ""
        return hmac.compare_digest(given.encode(), token.encode())

    def _require_management(self, request: web.Request) -> None:
        if not self._bearer_ok(request, self.management_token):
            raise HTTPError(401, "management token missing or wrong (--management-token)")

    # ---------------------------------------------------------------- API
    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def snapshot(self) -> dict[str, Any]:
        now = self.clock.now()
        idle, processing = self.fleet.totals()
        return {
            "agents": [backend_json(b, now) for b in self.fleet],
            "slots_idle": idle,
            "slots_processing": processing,
            "buffered_requests": len(self.dispatcher.scheduler.buffer),
        }

    async def agents(self, request: web.Request) -> web.Response:
        self._require_management(request)
        return web.json_response(self.snapshot())

    async def dashboard(self, request: web.Request) -> web.Response:
        """The web dashboard (its data comes from the API, with the token if set)."""
        return web.Response(body=self._page, content_type="text/html", charset="utf-8")

    async def vendor(self, request: web.Request) -> web.Response:
        """The dashboard's vendored charting library (no token: it is public code)."""
        found = dashboard.vendor(request.match_info["name"])
        if found is None:
            raise HTTPError(404, "no such file")
        body, content_type = found
        return web.Response(
            body=body, content_type=content_type, headers={"Cache-Control": "max-age=86400"}
        )

    async def info(self, request: web.Request) -> web.Response:
        """Where the inference listener is, as seen from this request's host."""
        self._require_management(request)
        host = request.url.host or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return web.json_response(
            {"inference_url": f"{self.inference_scheme}://{host}:{self.inference_port}"}
        )

    async def prometheus(self, request: web.Request) -> web.Response:
        """Prometheus text format (``--management-token`` applies when set)."""
        self._require_management(request)
        if self.metrics is None:
            raise HTTPError(404, "no metrics")
        return web.Response(
            body=self.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def get_desired(self, request: web.Request) -> web.Response:
        self._require_management(request)
        if self.rollout is None:
            raise HTTPError(404, "this balancer has no desired state")
        return web.json_response(self.rollout.status())

    async def put_desired(self, request: web.Request) -> web.Response:
        self._require_management(request)
        if self.rollout is None:
            raise HTTPError(404, "this balancer has no desired state")
        try:
            state = m.decode_desired_state(await request.read())
        except m.ProtocolError as exc:
            raise HTTPError(400, str(exc)) from None
        try:
            generation = self.rollout.store.put(state)
        except StoreError as exc:
            raise HTTPError(500, str(exc)) from None
        log.info("desired state generation %d: %s", generation, state)
        self.dispatcher.changed()  # starts the rollout
        return web.json_response(self.rollout.status())

    def send(self, agent_id: str, message: m.BalancerMessage) -> None:
        """Send a command to an agent (dropped if its socket is gone: it left)."""
        ws = self.sockets.get(agent_id)
        if ws is not None and not ws.closed:
            self._spawn(ws.send_bytes(m.encode(message)))

    async def batch_jobs(self, request: web.Request) -> web.Response:
        """The Batch API's recent jobs with their progress (``enabled``: false without
        ``--data-dir``)."""
        self._require_management(request)
        if self.batches is None:
            return web.json_response({"enabled": False, "batches": [], "lines_in_flight": 0})
        return web.json_response({"enabled": True, **self.batches.listing()})

    async def buffered_requests(self, request: web.Request) -> web.Response:
        self._require_management(request)
        buffer = self.dispatcher.scheduler.buffer
        now = self.clock.now()
        waiting = list(buffer)
        return web.json_response(
            {
                "buffered_requests": len(buffer),
                "capacity": buffer.capacity,
                "timeout_s": buffer.timeout,
                "batch_timeout_s": buffer.batch_timeout,  # batch-class requests wait longer
                "oldest_wait_s": round(waiting[0].waited(now), 3) if waiting else 0.0,
                "by_model": [
                    {"model": model, "count": count} for model, count in buffer.by_model().items()
                ],
            }
        )

    async def agents_stream(self, request: web.Request) -> web.StreamResponse:
        self._require_management(request)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            await self._stream(response)
        except asyncio.CancelledError:
            if not self._closing:
                raise
        finally:
            self._streams.discard(task)
        return response

    async def _stream(self, response: web.StreamResponse) -> None:
        while True:
            payload = json.dumps(self.snapshot())
            await response.write(f"event: fleet\ndata: {payload}\n\n".encode())
            try:
                async with asyncio.timeout(15):  # not wait_for (3.11)
                    await self.dispatcher.wait_changed()
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
            await asyncio.sleep(self.stream_interval)

    # -------------------------------------------------------- agent socket
    async def agent_socket(self, request: web.Request) -> web.StreamResponse:
        if not self._bearer_ok(request, self.agent_token):
            log.warning("agent from %s refused: wrong or missing agent token", request.remote)
            raise HTTPError(401, "agent token missing or wrong (--agent-token)")
        # WebSocket pings find a vanished peer (half-open TCP) and close its socket,
        # which removes the agent; protocol heartbeats say the agent itself is alive.
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=self.socket_heartbeat)
        await ws.prepare(request)
        session = _AgentSession(self, ws, request.remote or "?")
        try:
            await session.run()
        finally:
            session.leave()
        return ws

    def refresh(self, backend: Backend) -> None:
        """Ask an agent to read its server again (after a failed request)."""
        ws = self.sockets.get(backend.id)
        if ws is not None and not ws.closed:
            self._spawn(ws.send_bytes(m.encode(m.Refresh())))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """End event streams and close every agent socket (shutdown)."""
        self._closing = True
        for task in list(self._streams):
            task.cancel()
        for ws in list(self.sockets.values()):
            await ws.close(message=b"balancer shutting down")
        for task in list(self._tasks):
            task.cancel()


class _AgentSession:
    """One agent's socket, from register to close."""

    def __init__(self, management: Management, ws: web.WebSocketResponse, peer: str) -> None:
        self.mgmt = management
        self.ws = ws
        self.peer = peer
        self.agent_id: str | None = None
        self.bad_frames = 0

    async def run(self) -> None:
        async for frame in self.ws:
            if frame.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await self._frame(frame.data)
            elif frame.type == WSMsgType.ERROR:
                log.warning("agent socket from %s failed: %s", self.peer, self.ws.exception())
                break
            if self.ws.closed:
                break

    async def _frame(self, data: str | bytes) -> None:
        try:
            message = m.decode_agent_message(data)
        except m.ProtocolError as exc:
            await self._bad(str(exc), fatal=self.agent_id is None)
            return
        if self.agent_id is None:
            if not isinstance(message, m.Register):
                await self._bad(f"expected register first, got {type(message).__name__}", True)
                return
            self._register(message)
            assert self.agent_id is not None
            await self.ws.send_bytes(
                m.encode(m.Registered(self.agent_id, self.mgmt.heartbeat_interval))
            )
            return
        self.bad_frames = 0
        self._handle(message)
        if isinstance(message, m.Deregister):
            await self.ws.close()

    def _register(self, message: m.Register) -> None:
        self.agent_id = uuid.uuid4().hex[:12]
        now = self.mgmt.clock.now()
        fleet = self.mgmt.fleet
        fleet.register(
            self.agent_id,
            name=message.name,
            address=message.address.rstrip("/"),
            api_key=message.api_key,
            now=now,
        )
        report = dataclasses.replace(to_report(message.status), slots_share=message.share)
        agent = fleet.report(self.agent_id, report, now)
        self.mgmt.sockets[self.agent_id] = self.ws
        log.info("agent registered from %s: %r", self.peer, agent)
        self.mgmt.dispatcher.changed()

    def _handle(self, message: m.AgentMessage) -> None:
        assert self.agent_id is not None
        fleet = self.mgmt.fleet
        now = self.mgmt.clock.now()
        if isinstance(message, m.Status):
            before = fleet.get(self.agent_id).state
            read_at, read_end = read_span(message, now)
            report = dataclasses.replace(
                to_report(message.status),
                slots_share=message.share,
                read_at=read_at,
                read_end=read_end,
            )
            was = fleet.get(self.agent_id).condition
            agent = fleet.report(self.agent_id, report, now)
            if agent.state is not before:
                log.info("agent %s is now %s", agent.name, agent.state.value)
            if agent.condition is Condition.UNREACHABLE and was is not Condition.UNREACHABLE:
                reason = "; ".join(i.message for i in agent.issues) or "unreachable"
                self.mgmt.dispatcher.lost(agent.id, reason)
            self.mgmt.dispatcher.changed()
        elif isinstance(message, m.Heartbeat):
            if fleet.heartbeat(self.agent_id, now):
                self.mgmt.dispatcher.changed()
        elif isinstance(message, m.Deregister):
            self.leave(f"deregistered ({message.reason or 'no reason given'})")
        else:  # a second register
            self._send_error("already registered on this socket")

    async def _bad(self, reason: str, fatal: bool) -> None:
        self.bad_frames += 1
        fatal = fatal or self.bad_frames >= MAX_BAD_FRAMES
        log.warning("bad frame from agent at %s: %s", self.peer, reason)
        if not self.ws.closed:
            await self.ws.send_bytes(m.encode(m.Error(reason, fatal=fatal)))
            if fatal:
                await self.ws.close(message=reason[:120].encode())

    def _send_error(self, reason: str) -> None:
        log.warning("agent at %s: %s", self.peer, reason)
        self.mgmt._spawn(self.ws.send_bytes(m.encode(m.Error(reason))))

    def leave(self, why: str = "socket closed") -> None:
        if self.agent_id is None:
            return
        agent_id, self.agent_id = self.agent_id, None
        self.mgmt.sockets.pop(agent_id, None)
        if agent_id in self.mgmt.fleet:
            agent = self.mgmt.fleet.remove(agent_id)
            log.info("agent %s left: %s", agent.name, why)
            self.mgmt.dispatcher.changed()
