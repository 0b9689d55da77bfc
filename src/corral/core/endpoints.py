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

_BLOCKED: Final = (
    ("POST", "/props"),
    ("POST", "/lora-adapters"),
    ("POST", "/slots"),
)

ROUTES: Final[dict[tuple[str, str], Kind]] = {
    **{("POST", p): Kind.INFERENCE for p in _INFERENCE_POST},
    **{("POST", p): Kind.LIGHT for p in _LIGHT_POST},
    **{("GET", p): Kind.LIGHT for p in _LIGHT_GET},
    **{("GET", p): Kind.FLEET for p in _FLEET_GET},
    **{key: Kind.BLOCKED for key in _BLOCKED},
}


def classify(method: str, path: str) -> Kind | None:
    """The kind of a route, or ``None`` when llama-server has no such route."""
    kind = ROUTES.get((method, path))
    if kind is None and method == "POST" and path.startswith("/slots/"):
        return Kind.SLOT_ACTION
    return kind


def known_paths() -> list[str]:
    """Every path the balancer answers on, sorted, for error messages."""
    return sorted({p for (_, p), kind in ROUTES.items() if kind is not Kind.BLOCKED})
