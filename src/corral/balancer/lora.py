"""LoRA adapters on the request path: the ``lora`` field a server is sent.

A client names an adapter as its ``model`` (as with vLLM); llama-server takes the
adapters to apply per request, as a ``lora`` list of ``{id, scale}`` by its own ids,
and applies each adapter the list leaves out at its default scale (what its
``/lora-adapters`` shows). So the balancer sends the chosen server a list that names
every adapter it has loaded: the one asked for at scale 1, the others at 0. Only
such requests' bodies are rewritten.
"""

from __future__ import annotations

import msgspec

from corral.balancer.errors import HTTPError, not_utf8
from corral.core.fleet import Adapter


def with_lora(body: bytes, adapters: tuple[Adapter, ...], name: str) -> bytes:
    """``body`` (a JSON object) with its ``lora`` field set to apply adapter ``name``
    alone, by the ids of the server that loaded ``adapters``.

    Raises a 400 :class:`HTTPError` when the body is not a JSON object, and a 503 one
    when the server does not have ``name`` loaded (it unloaded it since its report)."""
    if not any(a.name == name for a in adapters):
        raise HTTPError(503, f"Corral: the server no longer has adapter {name}", retry_after=1)
    try:
        fields = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"request body is not valid JSON: {not_utf8(exc)}") from None
    if not isinstance(fields, dict):
        raise HTTPError(400, "request body is not a JSON object")
    fields["lora"] = [{"id": a.id, "scale": 1.0 if a.name == name else 0.0} for a in adapters]
    return msgspec.json.encode(fields)
