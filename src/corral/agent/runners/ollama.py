"""The ``ollama`` runner: an Ollama server (``ollama serve``).

What it reads (Ollama's ``docs/api.md`` / ``docs.ollama.com/api``):

- ``GET /api/version``: ``{"version": "0.x.y"}``; it answers as soon as the server
  listens (models load on demand, per request).
- ``GET /api/tags``: the models it has (``{"models": [{"name": "gemma3:270m",
  "model": ..., "size": ..., "details": {...}}]}``): every one can be served.
- ``GET /api/ps``: the models loaded in memory now (same shape, plus ``size_vram``
  and ``expires_at``, when ``keep_alive`` unloads it).

Ollama publishes no count of requests in flight, so busy slots come from the
balancer's own count, and the slots are the agent's ``--concurrency``: set it to the
server's ``OLLAMA_NUM_PARALLEL`` (requests per model at once; Ollama's default is 1).

The backend's model is the first *loaded* model, else the first it has. The model
list the agent sends is OpenAI's shape (``data``, as Ollama's own ``/v1/models``
answers) with Ollama's ``models`` beside it, so the balancer's ``/v1/models`` lists
them once. Ollama answers OpenAI's routes (``/v1/chat/completions``...) and its own
``/api/*`` (``apis``: ``openai``, ``ollama``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from corral.agent.runners.base import Clock, Fetched, Get, Reading, Runner, bounded, failure
from corral.core.fleet import Condition
from corral.protocol.messages import IssueInfo, ServerStatus

_HINT = "--llamacpp-api-key, a key for the proxy in front of Ollama"


def model_names(listing: Fetched) -> list[str]:
    """The names in an ``/api/tags`` or ``/api/ps`` answer, in order."""
    if not listing.ok or not isinstance(listing.body, dict):
        return []
    models = listing.body.get("models")
    if not isinstance(models, list):
        return []
    names = []
    for entry in models:
        if isinstance(entry, dict):
            name = entry.get("name") or entry.get("model")
            if isinstance(name, str) and name:
                names.append(name[:1024])
    return names


def interpret(
    version: Fetched,
    tags: Fetched | None = None,
    ps: Fetched | None = None,
    *,
    concurrency: int,
) -> ServerStatus:
    """A status from ``/api/version``, ``/api/tags`` and ``/api/ps`` (``None``: not
    read, the server did not answer ``/api/version``)."""
    failed = failure("/api/version", version, _HINT)
    if failed is not None:
        return failed
    if tags is None or ps is None:
        return ServerStatus(condition=Condition.LOADING)
    for endpoint, fetched in (("/api/tags", tags), ("/api/ps", ps)):
        failed = failure(endpoint, fetched, _HINT)
        if failed is not None:
            return failed
        if not isinstance(fetched.body, dict) or not isinstance(fetched.body.get("models"), list):
            return ServerStatus(
                condition=Condition.BAD_RESPONSE,
                issues=[IssueInfo("bad_response", f"{endpoint} has no list of models")],
            )
    have = model_names(tags)
    loaded = model_names(ps)
    issues: list[IssueInfo] = []
    if not have and not loaded:
        issues.append(IssueInfo("no_model", "Ollama has no model; pull one (`ollama pull NAME`)"))
    named = [*loaded, *(n for n in have if n not in loaded)]
    props: dict[str, Any] = {"loaded_models": loaded}
    if isinstance(version.body, dict) and isinstance(version.body.get("version"), str):
        props["version"] = version.body["version"][:64]
    return ServerStatus(
        condition=Condition.READY,
        model=named[0] if named else None,
        slots_total=concurrency,
        issues=issues,
        props=props,
        model_list=bounded(
            {
                "object": "list",
                "data": [{"id": n, "object": "model", "owned_by": "ollama"} for n in named],
                "models": tags.body["models"],
            }
        ),
    )


class OllamaRunner(Runner):
    """Reads an Ollama server (``--runner ollama``): ``/api/version``, ``/api/tags``
    and ``/api/ps`` every round (each answered from memory, without a model)."""

    name: ClassVar[str] = "ollama"
    apis: ClassVar[tuple[str, ...]] = ("openai", "ollama")
    ready_path: ClassVar[str] = "/api/version"
    default_concurrency: ClassVar[int] = 1
    """Ollama's default ``OLLAMA_NUM_PARALLEL``."""

    async def read(self, get: Get, clock: Clock) -> Reading:
        began = clock()
        version = await get("/api/version")
        if not version.ok:
            return Reading(interpret(version, concurrency=self.concurrency), began)
        tags = await get("/api/tags")
        ps = await get("/api/ps")
        return Reading(interpret(version, tags, ps, concurrency=self.concurrency), began)

    async def in_flight(self, get: Get, clock: Clock) -> int | None:
        return None  # Ollama does not say
