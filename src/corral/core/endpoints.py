"""Which llama-server endpoints the balancer serves, and how.

One table, decided once at start-up, so the data path does a single dict lookup per
request. Every route llama-server exposes is listed with a :class:`Kind`:

- ``INFERENCE``: occupies a server slot while it runs (generation, embeddings, reranking,
  infill). Routed slot-aware, buffered when no slot is free.
- ``LIGHT``: answered by any ready server without taking a slot (tokenize, props...).
- ``FLEET``: answered by the balancer itself, aggregated across the fleet
  (``/health``, ``/props``, ``/slots``, ``/v1/models``, ``/metrics``), so a balancer
  looks like one llama-server and balancers can be stacked.
- ``SLOT_ACTION``: ``POST /slots/<id>?action=save|restore|erase``, sent to the server
  that holds fleet slot ``<id>`` (see :func:`corral.balancer.aggregate.slot_owner`).
- ``BLOCKED``: changing one server's settings through a balancer (``POST /props``,
  ``POST /lora-adapters``).
- ``BATCH``: OpenAI's Batch API (``/v1/files``, ``/v1/batches`` and the routes under
  them), answered by the balancer from its ``--data-dir``
  (:mod:`corral.balancer.batches`); its jobs' lines are then run as inference requests.

Each proxied route also belongs to an API family (:func:`api_of`): ``openai`` (the
``/v1/...`` routes every runner answers), ``ollama`` (Ollama's native ``/api/*``)
or ``llamacpp`` (llama-server's own routes and aliases, such as ``/completion`` and
``/tokenize``). Agents report which families their server answers
(``ServerStatus.apis``), and the balancer sends a route only to servers that answer
its family: a vLLM backend never gets ``/completion``.

Routes follow llama.cpp's ``tools/server/server.cpp`` (release b-series pinned in
``corral.llamacpp``), including its aliases.
"""

from __future__ import annotations

import enum
from typing import Final


class Kind(enum.Enum):
    INFERENCE = "inference"
    LIGHT = "light"
    FLEET = "fleet"
    SLOT_ACTION = "slot_action"
    BLOCKED = "blocked"
    BATCH = "batch"


_INFERENCE_POST: Final = (
    "/completion",
    "/completions",
    "/v1/completions",
    "/chat/completions",
    "/v1/chat/completions",
    "/v1/responses",
    "/responses",
    "/v1/messages",
    "/infill",
    "/embedding",
    "/embeddings",
    "/v1/embeddings",
    "/rerank",
    "/reranking",
    "/v1/rerank",
    "/v1/reranking",
    "/audio/transcriptions",
    "/v1/audio/transcriptions",
)

_LIGHT_POST: Final = (
    "/tokenize",
    "/detokenize",
    "/apply-template",
    "/v1/messages/count_tokens",
)

_LIGHT_GET: Final = ("/lora-adapters",)

_FLEET_GET: Final = (
    "/health",
    "/v1/health",
    "/props",
    "/slots",
    "/models",
    "/v1/models",
    "/metrics",
)

_OLLAMA_INFERENCE_POST: Final = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings")
"""Ollama's native generation and embedding routes (``docs/api.md``)."""

_OLLAMA_LIGHT: Final = (("GET", "/api/tags"), ("GET", "/api/ps"), ("POST", "/api/show"))
_OLLAMA_LIGHT_GET_VERSION: Final = ("GET", "/api/version")

_OPENAI: Final = frozenset(
    (
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/audio/transcriptions",
    )
)
"""OpenAI's own routes: every runner answers these (where its model can)."""

OPENAI, LLAMACPP, OLLAMA = "openai", "llamacpp", "ollama"
DEFAULT_APIS: Final = frozenset((OPENAI, LLAMACPP))
"""What a server answers when its agent does not say (agents before runners read
llama-server, which answers both)."""

_BLOCKED: Final = (
    ("POST", "/props"),
    ("POST", "/lora-adapters"),
    ("POST", "/slots"),
)

_BATCH: Final = (
    ("GET", "/v1/files"),
    ("POST", "/v1/files"),
    ("GET", "/v1/batches"),
    ("POST", "/v1/batches"),
)
_BATCH_UNDER: Final = {
    "GET": ("/v1/files/", "/v1/batches/"),
    "DELETE": ("/v1/files/",),
    "POST": ("/v1/batches/",),
}
"""Methods on the routes under a file or a batch (``/v1/files/{id}/content``...);
:mod:`corral.balancer.batches.api` answers 404 for the ones it lacks."""

ROUTES: Final[dict[tuple[str, str], Kind]] = {
    **{("POST", p): Kind.INFERENCE for p in _INFERENCE_POST},
    **{("POST", p): Kind.LIGHT for p in _LIGHT_POST},
    **{("GET", p): Kind.LIGHT for p in _LIGHT_GET},
    **{("GET", p): Kind.FLEET for p in _FLEET_GET},
    **{key: Kind.BLOCKED for key in _BLOCKED},
    **{("POST", p): Kind.INFERENCE for p in _OLLAMA_INFERENCE_POST},
    **{key: Kind.LIGHT for key in (*_OLLAMA_LIGHT, _OLLAMA_LIGHT_GET_VERSION)},
    **{key: Kind.BATCH for key in _BATCH},
}


def api_of(path: str) -> str:
    """The API family of a proxied route: ``openai``, ``ollama`` or ``llamacpp``."""
    if path in _OPENAI:
        return OPENAI
    if path.startswith("/api/"):
        return OLLAMA
    return LLAMACPP


def classify(method: str, path: str) -> Kind | None:
    """The kind of a route, or ``None`` when llama-server has no such route."""
    kind = ROUTES.get((method, path))
    if kind is None and method == "POST" and path.startswith("/slots/"):
        return Kind.SLOT_ACTION
    if kind is None and path.startswith(_BATCH_UNDER.get(method, ())):
        return Kind.BATCH
    return kind


def known_paths() -> list[str]:
    """Every path the balancer answers on, sorted, for error messages."""
    return sorted({p for (_, p), kind in ROUTES.items() if kind is not Kind.BLOCKED})
