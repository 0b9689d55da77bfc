"""The agent's probe listener: liveness and readiness over HTTP, as Kubernetes asks.

- ``GET /livez``: 200 while the agent's monitor loop runs and has gone round lately
  (within :func:`stall_limit`); else 503. A failing liveness probe means "restart me".
- ``POST /drain?timeout=S``: the preStop hook (``corral k8s drain``): the agent tells
  its balancers to send nothing new and answers once its server's requests in flight
  have ended (or after ``S`` seconds). Supervisor mode only; the listener is bound to
  the pod's addresses, so only what runs in the pod or the cluster network reaches it.
- ``GET /readyz``: 200 when the agent's llama-server is ready and at least one
  balancer has registered the agent; else 503. A failing readiness probe means "not
  serving yet" (loading a model, no balancer reachable), not "restart me".

Both answer JSON: ``{"ok": bool, "reasons": [...], ...}`` with what is wrong, so
``kubectl describe`` and a person with curl see why. The decisions are plain functions
(:func:`liveness`, :func:`readiness`); :class:`ProbeListener` only serves them. Off
unless the agent is given ``--probe-addr``: several agents often share a host.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from corral.addr import Addr
from corral.core.fleet import Condition
from corral.protocol import messages as m

if TYPE_CHECKING:
    from corral.agent.agent import Agent

log = logging.getLogger("corral.agent")


def stall_limit(poll_interval: float, read_timeout: float) -> float:
    """Seconds without a monitor round after which the agent counts as stuck.

    One round reads the server up to three times in a row (``/health``, then
    ``/props`` with ``/v1/models``, then ``/slots``), each bounded by
    ``read_timeout``, then waits up to ``poll_interval``; twice that, plus 5 s of
    slack for a busy machine, is not a slow round any more.
    """
    return 2 * (3 * read_timeout + poll_interval) + 5.0


def liveness(last_round: float | None, running: bool, now: float, limit: float) -> list[str]:
    """Why the agent is not alive (empty: it is).

    Args:
        last_round: When the monitor last finished a round (event loop seconds), or
            ``None`` before its first.
        running: Whether the monitor task is running.
        now: The current time, same clock.
        limit: Seconds a round may take (:func:`stall_limit`).
    """
    if not running:
        return ["the agent's monitor is not running"]
    if last_round is not None and now - last_round > limit:
        return [f"the agent's monitor has not gone round for {now - last_round:.0f}s"]
    return []


def readiness(status: m.ServerStatus, links: Mapping[str, str]) -> list[str]:
    """Why the agent is not ready (empty: it is).

    Args:
        status: The agent's latest reading of its server.
        links: Balancer URL to ``"connected"`` or why not.
    """
    reasons = []
    if status.condition != Condition.READY:
        issues = "; ".join(issue.message for issue in status.issues)
        reasons.append(f"llama-server is {status.condition}" + (f": {issues}" if issues else ""))
    if not any(state == "connected" for state in links.values()):
        why = "; ".join(f"{url}: {state}" for url, state in links.items()) or "none configured"
        reasons.append(f"not registered with any balancer ({why})")
    return reasons


class ProbeListener:
    """Serves ``/livez`` and ``/readyz`` for one agent. ``await start()``, then
    ``await stop()``.

    Raises:
        OSError: From :meth:`start`, when the address cannot be bound.
    """

    def __init__(self, agent: Agent, addr: Addr) -> None:
        self.agent = agent
        self.addr = addr
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        """The bound port (useful when ``addr`` asked for port 0)."""

    def __repr__(self) -> str:
        return f"<ProbeListener {self.addr.host}:{self.port or self.addr.port}>"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_post("/drain", self._drain)
        return app

    async def _drain(self, request: web.Request) -> web.Response:
        try:
            limit = float(request.query.get("timeout", "120"))
        except ValueError:
            return web.json_response(
                {"ok": False, "reasons": ["timeout: not a number"]}, status=400
            )
        took = await self.agent.drain(max(0.0, limit))
        return web.json_response({"ok": True, "drained_s": round(took, 3)})

    async def _livez(self, request: web.Request) -> web.Response:
        agent = self.agent
        limit = stall_limit(agent.config.poll_interval, agent.config.read_timeout)
        now = asyncio.get_running_loop().time()
        reasons = liveness(agent.monitor_round_at, agent.monitor_running, now, limit)
        return _answer(reasons, {})

    async def _readyz(self, request: web.Request) -> web.Response:
        agent = self.agent
        reasons = readiness(agent.status, agent.links)
        detail = {"server": agent.status.condition, "balancers": dict(agent.links)}
        return _answer(reasons, detail)

    async def start(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.addr.host, self.addr.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("probes on http://%s:%d/livez and /readyz", self.addr.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _answer(reasons: list[str], detail: dict[str, Any]) -> web.Response:
    body = {"ok": not reasons, "reasons": reasons, **detail}
    return web.json_response(body, status=503 if reasons else 200)


__all__ = ["ProbeListener", "liveness", "readiness", "stall_limit"]
