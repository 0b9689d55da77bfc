"""The ``openai`` runner: any OpenAI-compatible server (llama-cpp-python's server,
LM Studio, LocalAI, TGI's Messages API, a hosted endpoint...).

OpenAI's API has no health or load endpoint, so the agent reads ``GET /v1/models``
until the server lists its models: a 200 with a model list is ``ready`` and names the
model (the first listed); a refused connection is ``unreachable``; 401 is a wrong key.
Slots are the concurrency the operator gives the agent (``--concurrency``, default 1),
and busy slots are the balancer's own requests (the server cannot say).

Once ready, the agent does not read ``/v1/models`` again until the server stops
answering: some servers answer it under the lock their generations hold
(llama-cpp-python's server does, and with its default ``--interrupt_requests`` that
read ends the stream in flight; without it, the read waits for the generation and
times out). It checks instead that the server still answers HTTP at all, with
``GET /health`` (:data:`LIVENESS_PATH`): any answer below 500, even a 404, is a server
that is up (a web framework answers an unknown path without taking a model's lock); a
5xx is an ``error`` (an unhealthy engine), a refused connection or no answer within
``--read-timeout`` is ``unreachable``, and after either the models are read anew
once it is well again (it may have restarted with another one). A server restarted
with another model between two reads keeps its old name until it fails a read.
"""

from __future__ import annotations

from typing import ClassVar

from corral.agent.runners.base import (
    Clock,
    Fetched,
    Get,
    Reading,
    Runner,
    RunnerOptions,
    bounded,
    failure,
    openai_model_ids,
)
from corral.core.fleet import Condition
from corral.protocol.messages import IssueInfo, ServerStatus


def interpret(models: Fetched, *, concurrency: int) -> ServerStatus:
    """A status from ``GET /v1/models`` alone; ``concurrency`` slots, none busy."""
    failed = failure("/v1/models", models, "--llamacpp-api-key, the server's key")
    if failed is not None:
        return failed
    if not isinstance(models.body, dict) or not isinstance(models.body.get("data"), list):
        return ServerStatus(
            condition=Condition.BAD_RESPONSE,
            issues=[IssueInfo("bad_response", "/v1/models is not an OpenAI model list")],
        )
    ids = openai_model_ids(models)
    issues = [] if ids else [IssueInfo("no_model_id", "/v1/models did not name a model")]
    return ServerStatus(
        condition=Condition.READY,
        model=ids[0] if ids else None,
        slots_total=concurrency,
        issues=issues,
        model_list=bounded(models.body),
    )


LIVENESS_PATH = "/health"
"""Read once the server is ready: vLLM, SGLang and TGI answer it (200); other servers
answer 404, which says as much (see the module docstring)."""


def alive(fetched: Fetched) -> ServerStatus | None:
    """``None`` when the server answered :data:`LIVENESS_PATH` below 500 (any 2xx, 3xx
    or 4xx: a 404 is a server without that path); else the status to report: a 5xx
    (vLLM, SGLang and TGI answer one there when their engine is unhealthy) is an
    ``error``, no answer is ``unreachable``."""
    if 0 < fetched.status < 500:
        return None
    return failure(LIVENESS_PATH, fetched) or failure(LIVENESS_PATH, Fetched(error="no answer"))


class OpenAIRunner(Runner):
    """Reads any OpenAI-compatible server (``--runner openai``)."""

    name: ClassVar[str] = "openai"
    apis: ClassVar[tuple[str, ...]] = ("openai",)
    ready_path: ClassVar[str] = "/v1/models"
    default_concurrency: ClassVar[int] = 1

    def __init__(self, options: RunnerOptions | None = None) -> None:
        super().__init__(options)
        self._ready: ServerStatus | None = None  # what /v1/models said, once ready

    async def read(self, get: Get, clock: Clock) -> Reading:
        began = clock()
        if self._ready is None:
            status = interpret(await get("/v1/models"), concurrency=self.concurrency)
            if status.condition == Condition.READY:
                self._ready = status
            return Reading(status, began)
        down = alive(await get(LIVENESS_PATH))
        if down is not None:
            self._ready = None
            return Reading(down, began)
        return Reading(self._ready, began)

    def forget(self) -> None:
        self._ready = None

    async def in_flight(self, get: Get, clock: Clock) -> int | None:
        return None  # the server cannot say
