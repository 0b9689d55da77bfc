"""The balancer process: configuration, the two listeners, and their lifecycle.

Start-up order: upstream connection pool, management listener (agents can
connect), inference listener, background tasks. Shutdown runs in a fixed order, as
uvicorn does: stop accepting connections, fail what waits in the buffer, let
requests in flight finish up to ``shutdown_timeout``, close agent sockets, cancel
the background tasks, close the upstream connections.

The management listener is aiohttp (WebSockets, SSE, the dashboard); the inference
listener is :mod:`corral.balancer.http_server`, a lean server for the data path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from corral.addr import Addr
from corral.balancer.batches import BatchService
from corral.balancer.cors import Cors, CorsError
from corral.balancer.desired import DesiredStore, Rollout, StoreError
from corral.balancer.dispatcher import Dispatcher
from corral.balancer.errors import error_middleware
from corral.balancer.forwarded import ProxyTrust
from corral.balancer.http_server import HttpServer
from corral.balancer.management import Management
from corral.balancer.metrics import Metrics
from corral.balancer.proxy import InferenceProxy
from corral.balancer.statsd import StatsdReporter
from corral.balancer.upstream import UpstreamPool
from corral.config import BALANCER, default
from corral.config.keys import KeyEntry, Keys, KeysError
from corral.core.clock import Clock, MonotonicClock
from corral.core.fleet import Fleet
from corral.core.queueing import QueueOptions, Tenant, make_queue
from corral.core.routing import RoutingOptions, make_policy
from corral.core.scheduler import Scheduler
from corral.shutdown import requests, talking
from corral.tls import TLSError, server_context

log = logging.getLogger("corral.balancer")


@dataclass(frozen=True)
class BalancerConfig:
    """How a balancer runs. Fields that are ``corral balancer`` settings take their
    defaults from :data:`corral.config.BALANCER`, which declares each one's flag,
    environment variable and help."""

    inference_addr: Addr = default(BALANCER, "inference_addr")
    """Where applications send requests (the llama.cpp / OpenAI API)."""
    management_addr: Addr = default(BALANCER, "management_addr")
    """Where agents connect and operators read the fleet's state."""
    max_buffered_requests: int = default(BALANCER, "max_buffered_requests")
    """Requests that may wait for a slot at once; more get 429 with Retry-After."""
    buffered_request_timeout: float = default(BALANCER, "buffered_request_timeout")
    """Seconds a request may wait for a slot before it gets 503 with Retry-After."""
    heartbeat_interval: float = 1.0
    """Seconds between agent heartbeats (told to agents when they register)."""
    heartbeat_timeout: float = default(BALANCER, "heartbeat_timeout")
    """Seconds without a word from an agent before it is marked unhealthy."""
    agent_token: str | None = field(default=None, repr=False)
    """If set, agents must present it (``Authorization: Bearer``) to register."""
    management_token: str | None = field(default=None, repr=False)
    """If set, the management API requires it (``Authorization: Bearer``)."""
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    """If any, the inference listener requires one (``Authorization: Bearer`` or
    ``x-api-key``), like llama-server's ``--api-key``."""
    tenant_keys: tuple[KeyEntry, ...] = field(default=(), repr=False)
    """Keys that name tenants (a TOML ``--api-key-file``, :mod:`corral.config.keys`):
    their class, limits and weight. Any of them, or of ``api_keys``, is accepted."""
    queue: str = default(BALANCER, "queue")
    """The queue discipline by name (:data:`corral.core.queueing.DISCIPLINES`)."""
    max_buffered_bytes: int = default(BALANCER, "max_buffered_bytes")
    """Request body bytes that may wait at once; more get 429."""
    interactive_reserve: float = default(BALANCER, "interactive_reserve")
    """With ``priority`` or ``fair``: share of each model's slots batch requests
    leave free."""
    priority_aging: float = default(BALANCER, "priority_aging")
    """With ``priority`` or ``fair``: seconds a class may wait without a slot before
    it is served first (the starvation bound)."""
    batch_request_timeout: float = default(BALANCER, "batch_request_timeout")
    """Seconds a batch-class request may wait for a slot before it gets 503."""
    max_body_size: int = default(BALANCER, "max_body_size")
    """Largest request body accepted, in bytes (images in base64 can be large)."""
    forwarded_allow_ips: tuple[str, ...] = default(BALANCER, "forwarded_allow_ips")
    """Peers (IP addresses, networks such as ``10.0.0.0/8``, or ``*``) whose
    ``X-Forwarded-*`` and ``Forwarded`` headers are kept and appended to; from any
    other peer they are replaced. The default, ``127.0.0.1``, is uvicorn's
    ``--forwarded-allow-ips``. See :mod:`corral.balancer.forwarded`."""
    max_attempts: int = 5
    """Servers tried for one request when they fail before responding (only failures
    that are safe to retry: see :mod:`corral.balancer.proxy`)."""
    upstream_connect_timeout: float = default(BALANCER, "upstream_connect_timeout")
    """Seconds to connect to a llama-server before trying another."""
    upstream_head_timeout: float = default(BALANCER, "upstream_head_timeout")
    """Seconds from sending a streamed request (or one that takes no slot) to its
    response head. Non-streamed generations have none (llama-server answers only when
    done): a hung server is found by its agent's reads instead."""
    upstream_idle_timeout: float = default(BALANCER, "upstream_idle_timeout")
    upstream_keepalive_timeout: float = default(BALANCER, "upstream_keepalive_timeout")
    """Seconds a response may send nothing once its head came."""
    request_head_timeout: float = default(BALANCER, "request_head_timeout")
    """Seconds a client has to send a whole request head (slow-loris): then 408."""
    shutdown_timeout: float = default(BALANCER, "shutdown_timeout")
    """Seconds requests in flight get to finish on shutdown."""
    state_file: Path | None = None
    """Where the desired state is kept across restarts (None: in memory only)."""
    state_file_required: bool = False
    """The operator named ``state_file`` (``--state-file``): if no file can be written
    there, the balancer does not start (else it starts, and warns)."""
    rollout_share: float = default(BALANCER, "rollout_share")
    """Share of supervised agents that may change settings at once (at least one)."""
    drain_timeout: float = default(BALANCER, "drain_timeout")
    """Seconds an agent gets to finish its requests before its settings change."""
    routing: str = default(BALANCER, "routing")
    """The routing policy by name (:data:`corral.core.routing.POLICIES`): ``slots`` or
    ``prefix``."""
    prefix_max_wait: float = default(BALANCER, "prefix_max_wait")
    """With ``prefix`` routing: the most seconds a request may wait for the busy holder
    of its prompt (0: never); within it, as long as the wait saves
    (:func:`corral.core.routing.prefix.wait_bound`)."""
    prefix_max_pass: float = default(BALANCER, "prefix_max_pass")
    """With ``prefix`` routing: seconds a request first in line may be passed over for
    ones behind it whose prompt the freed server holds (0: never)."""
    statsd_addr: Addr | None = None
    """Where to send StatsD metrics over UDP (None: not sent)."""
    statsd_prefix: str = default(BALANCER, "statsd_prefix")
    statsd_interval: float = default(BALANCER, "statsd_interval")
    """Seconds between StatsD sends."""
    cors_origins: str = default(BALANCER, "cors_origins")
    """Origins allowed for CORS, as llama-server's ``--cors-origins`` (see
    :mod:`corral.balancer.cors`)."""
    cors_methods: str = default(BALANCER, "cors_methods")
    cors_headers: str = default(BALANCER, "cors_headers")
    cors_credentials: bool = default(BALANCER, "cors_credentials")
    """Off by default, unlike llama-server (see :mod:`corral.balancer.cors`)."""
    tls_cert: Path | None = None
    """PEM certificate chain: both listeners speak TLS (None: plain HTTP)."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert`` (None: the key is in ``tls_cert``)."""
    keda_addr: Addr | None = None
    """Where KEDA's external scaler is served over gRPC (None: not served; see
    :mod:`corral.balancer.keda`)."""
    data_dir: Path | None = None
    """Where the Batch API keeps its database and files (None: no Batch API; see
    :mod:`corral.balancer.batches`)."""
    batch_concurrency: int = default(BALANCER, "batch_concurrency")
    """Batch lines run at once."""
    scaled_models: tuple[str, ...] = ()
    """Models that may have no server now (scaled to zero): requests naming one wait
    in the buffer instead of getting 404."""


class Balancer:
    """A running balancer. ``await start()``, then ``await stop()``."""

    def __init__(self, config: BalancerConfig, clock: Clock | None = None) -> None:
        """Raises :class:`corral.tls.TLSError` when the TLS files cannot be used, and
        :class:`corral.balancer.cors.CorsError` for credentials with any origin."""
        self.config = config
        self.cors = Cors(
            config.cors_origins, config.cors_methods, config.cors_headers, config.cors_credentials
        )
        self.ssl = (
            server_context(config.tls_cert, config.tls_key) if config.tls_cert is not None else None
        )
        self.clock = clock or MonotonicClock()
        self.fleet = Fleet()
        self.fleet.expect(config.scaled_models)
        self.keys = Keys(
            [*(KeyEntry(Tenant(), key=k) for k in config.api_keys if k), *config.tenant_keys]
        )
        self.buffer = make_queue(
            config.queue,
            QueueOptions(
                capacity=config.max_buffered_requests,
                timeout=config.buffered_request_timeout,
                max_bytes=config.max_buffered_bytes,
                batch_timeout=config.batch_request_timeout,
                aging=config.priority_aging,
                tenants=self.keys.tenants,
            ),
        )
        policy = make_policy(
            config.routing, RoutingOptions(prefix_max_wait=config.prefix_max_wait), self.clock.now
        )
        reserve = config.interactive_reserve if config.queue != "fifo" else 0.0
        self.scheduler = Scheduler(
            self.fleet, policy, self.buffer, reserve=reserve, max_pass=config.prefix_max_pass
        )
        self.dispatcher = Dispatcher(self.scheduler, self.clock, on_set_aside=self._refresh)
        self.management = Management(
            self.dispatcher,
            self.clock,
            agent_token=config.agent_token,
            management_token=config.management_token,
            heartbeat_interval=config.heartbeat_interval,
            socket_heartbeat=config.heartbeat_timeout,
        )
        self.rollout = Rollout(
            self.fleet,
            DesiredStore(config.state_file, required=config.state_file_required),
            self.clock,
            self.management.send,
            share=config.rollout_share,
            drain_timeout=config.drain_timeout,
        )
        self.management.rollout = self.rollout
        self.metrics = Metrics(self.fleet, self.buffer)
        self.management.metrics = self.metrics
        self.dispatcher.on_change = self.rollout.tick
        self.dispatcher.on_pick = self.metrics.pick.observe
        self.dispatcher.on_cold_start = self._cold_start
        self.batches = (
            BatchService(
                config.data_dir,
                concurrency=config.batch_concurrency,
            )
            if config.data_dir is not None
            else None
        )
        self.management.batches = self.batches

        self._pool: UpstreamPool | None = None
        self._inference: HttpServer | None = None
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._scaler: Any = None  # keda.ScalerServer, with --keda-addr
        self.keda_port = 0
        self.inference_port = 0
        self.management_port = 0

    def _cold_start(self, model: str, seconds: float) -> None:
        self.metrics.cold_start.labels(model).observe(seconds)

    def _refresh(self, agent: Any) -> None:
        self.management.refresh(agent)

    def management_app(self) -> web.Application:
        app = web.Application(middlewares=[error_middleware], client_max_size=1024 * 1024)
        self.management.install(app)
        return app

    def inference_server(self, pool: UpstreamPool) -> HttpServer:
        proxy = InferenceProxy(
            self.dispatcher,
            pool,
            metrics=self.metrics,
            keys=self.keys,
            max_attempts=self.config.max_attempts,
            head_timeout=self.config.upstream_head_timeout,
            max_body_size=self.config.max_body_size,
            trust=ProxyTrust(self.config.forwarded_allow_ips),
            cors=self.cors,
        )
        if self.batches is not None:
            proxy.batches = self.batches.api.handle
            self.batches.start(proxy.handle)
        return HttpServer(
            proxy.handle,
            max_body_size=self.config.max_body_size,
            head_timeout=self.config.request_head_timeout,
        )

    async def start(self) -> None:
        # The pool keeps no cookies (it has no cookie jar at all): one client's must
        # never reach another's request.
        self._pool = pool = UpstreamPool(
            connect_timeout=self.config.upstream_connect_timeout,
            idle_timeout=self.config.upstream_idle_timeout,
            keepalive_timeout=self.config.upstream_keepalive_timeout,
        )
        self.dispatcher.on_lost = lambda backend, reason: pool.abort(backend.address, reason)
        self.management_port = await self._listen(
            self.management_app(), self.config.management_addr
        )
        self._inference = self.inference_server(self._pool)
        addr = self.config.inference_addr
        self.inference_port = await self._inference.start(addr.host, addr.port, ssl=self.ssl)
        self.management.inference_port = self.inference_port
        self.management.inference_scheme = "https" if self.ssl is not None else "http"
        self._tasks.append(asyncio.create_task(self._watch_heartbeats()))
        if self.config.keda_addr is not None:
            try:
                from corral.balancer.keda import ScalerServer
            except ImportError as exc:
                raise SystemExit(
                    f"corral balancer: --keda-addr needs the k8s extra "
                    f"(pip install 'corral[k8s]'): {exc}"
                ) from None
            self._scaler = ScalerServer(self.dispatcher, self.config.keda_addr)
            self.keda_port = await self._scaler.start()
        if self.config.statsd_addr is not None:
            reporter = StatsdReporter(
                self.config.statsd_addr,
                self.config.statsd_prefix,
                self.config.statsd_interval,
                self.fleet,
                self.buffer,
                self.metrics.counts,
            )
            self._tasks.append(asyncio.create_task(reporter.run()))
        log.info(
            "balancer up: inference on %s:%d, management on %s:%d%s",
            self.config.inference_addr.host,
            self.inference_port,
            self.config.management_addr.host,
            self.management_port,
            " (TLS)" if self.ssl is not None else "",
        )

    async def _listen(self, app: web.Application, addr: Addr) -> int:
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=self.config.shutdown_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, addr.host, addr.port, reuse_address=True, ssl_context=self.ssl)
        await site.start()
        self._runners.append(runner)
        port: int = runner.addresses[0][1]
        return port

    async def _watch_heartbeats(self) -> None:
        period = max(0.05, self.config.heartbeat_timeout / 5)
        while True:
            await asyncio.sleep(period)
            for agent in self.fleet.expire(self.clock.now(), self.config.heartbeat_timeout):
                log.warning("agent %s missed its heartbeats: marked unhealthy", agent.name)
                self.dispatcher.changed()
            if self.rollout.tick(force=True):  # drain timeouts
                self.dispatcher.changed()

    async def stop(self) -> None:
        # 0. batch lines: start no more, let those in flight finish and be recorded.
        if self.batches is not None:
            await self.batches.stop(self.config.shutdown_timeout)
        # 1. fail what waits in the buffer: no slot will come for it now.
        self.dispatcher.close()
        # 2. inference: stop accepting, let requests in flight finish, cancel the rest.
        # 3. agent sockets, then the management listener.
        if self._inference is not None:
            await self._inference.stop(self.config.shutdown_timeout)
            self._inference = None
        if self._scaler is not None:
            await self._scaler.stop()
            self._scaler = None
        await self.management.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        # 4. background tasks, then the client session.
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._pool is not None:
            self._pool.close()
        log.info("balancer stopped")

    @property
    def in_flight(self) -> int:
        """Requests the inference listener is handling now (0 once it stopped)."""
        return self._inference.in_flight if self._inference is not None else 0

    def __repr__(self) -> str:
        ports = f"inference=:{self.inference_port} management=:{self.management_port}"
        return f"<Balancer {ports} {self.fleet!r}>"


async def run(config: BalancerConfig) -> None:
    """Run a balancer until cancelled (the CLI cancels on SIGINT/SIGTERM)."""
    try:
        balancer = Balancer(config)
    except (StoreError, TLSError, CorsError, KeysError, OSError, sqlite3.Error) as exc:
        raise SystemExit(f"corral balancer: {exc}") from None
    await balancer.start()
    try:
        await asyncio.Event().wait()
    finally:
        # says what the stop waits for, with a countdown (a second Ctrl-C: corral.cli._run)
        async with talking("the balancer", lambda: _waiting(balancer), config.shutdown_timeout):
            await balancer.stop()


def _waiting(balancer: Balancer) -> str | None:
    """What the balancer's stop waits for, in words: its clients' requests in flight
    and its batch lines in flight (made in the balancer: the listener does not count
    them); None for nothing."""
    n = balancer.in_flight
    lines = balancer.batches.runner.in_flight if balancer.batches is not None else 0
    parts = [f"{requests(n)} in flight"] if n else []
    if lines:
        parts.append(f"{lines} batch line{'' if lines == 1 else 's'} in flight")
    return " and ".join(parts) + " to finish" if parts else None
