"""The ``openai`` runner: any OpenAI-compatible server (llama-cpp-python's server,
LM Studio, LocalAI, TGI's Messages API, a hosted endpoint...).

OpenAI's API has no health or load endpoint, so the agent reads one thing:
``GET /v1/models``. A 200 with a model list is ``ready`` and names the model (the
first listed); a refused connection is ``unreachable``; 401 is a wrong key. Slots
are the concurrency the operator gives the agent (``--concurrency``, default 1), and
busy slots are the balancer's own requests (the server cannot say).
"""

from __future__ import annotations

from typing import ClassVar

from corral.agent.runners.base import (
    Clock,
    Fetched,
    Get,
    Reading,
    Runner,
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


class OpenAIRunner(Runner):
    """Reads any OpenAI-compatible server (``--runner openai``)."""

    name: ClassVar[str] = "openai"
    apis: ClassVar[tuple[str, ...]] = ("openai",)
    ready_path: ClassVar[str] = "/v1/models"
    default_concurrency: ClassVar[int] = 1

    async def read(self, get: Get, clock: Clock) -> Reading:
        began = clock()
        return Reading(interpret(await get("/v1/models"), concurrency=self.concurrency), began)

    async def in_flight(self, get: Get, clock: Clock) -> int | None:
        return None  # the server cannot say
