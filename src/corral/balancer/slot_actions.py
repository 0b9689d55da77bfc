"""Fleet slot ids: ``POST /slots/<id>?action=save|restore|erase`` and a request's
``id_slot``, sent to the server that holds the slot, with its own slot id.

The balancer's ``/slots`` numbers the ready servers' slots across the fleet
(:func:`corral.balancer.aggregate.slot_owner` maps one back). A slot action goes to
that server with the local id in its path, and its answer's ``id_slot`` is the fleet
id again. A generation request with ``id_slot`` is pinned to that server (it waits
for a free slot there) and sent with the local id; an id no ready server holds is
sent as ``-1`` (any slot), as llama-server treats an id it does not have.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from corral.balancer import aggregate
from corral.balancer.errors import HTTPError, not_utf8
from corral.balancer.http_server import Request
from corral.balancer.upstream import UpstreamBroken, UpstreamError, UpstreamPool
from corral.core.fleet import Fleet


def pin(fleet: Fleet, body: bytes, fleet_slot: int) -> tuple[bytes, str | None]:
    """A request body with fleet slot ``fleet_slot`` as its server's ``id_slot``, and
    the agent to send it to (``None``: no such slot; the body then asks for any slot).

    Raises a 400 :class:`HTTPError` when the body is not a JSON object."""
    try:
        fields = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"request body is not valid JSON: {not_utf8(exc)}") from None
    if not isinstance(fields, dict):
        raise HTTPError(400, "request body is not a JSON object")
    owner = aggregate.slot_owner(fleet, fleet_slot)
    fields["id_slot"] = owner[1] if owner is not None else -1
    return msgspec.json.encode(fields), owner[0].id if owner is not None else None


async def forward(
    fleet: Fleet, pool: UpstreamPool, request: Request, headers: bytes, limit: float = 60.0
) -> tuple[int, bytes, str]:
    """Send one slot action to the server that holds the slot.

    Args:
        headers: Encoded header lines for the server (the client's, cleaned).
        limit: Seconds for the whole exchange (saving a large slot takes a while).

    Returns:
        ``(status, JSON body, agent name)``, the body's ``id_slot`` the fleet id.

    Raises:
        HTTPError: 400 for an id that is not a fleet slot, 502 when the server fails.
    """
    text = request.path.removeprefix("/slots/")
    fleet_slot = int(text) if text.isdigit() else -1
    owner = aggregate.slot_owner(fleet, fleet_slot)
    if owner is None:
        raise HTTPError(400, "Invalid slot ID")
    backend, local = owner
    query = request.target.partition(b"?")[2]
    target = b"/slots/%d" % local + (b"?" + query if query else b"")
    if backend.api_key:
        headers += (
            b"Authorization: Bearer " + backend.api_key.encode("latin-1", "replace") + b"\r\n"
        )
    try:
        async with asyncio.timeout(limit):
            response = await pool.request(backend.address, "POST", target, headers, request.body)
            try:
                data = await response.read()
            finally:
                response.close()
    except (UpstreamError, UpstreamBroken, TimeoutError) as exc:
        raise HTTPError(502, f"Corral: the server {backend.name} failed: {exc}") from None
    return response.status, _with_fleet_id(data, local, fleet_slot), backend.name


def _with_fleet_id(data: bytes, local: int, fleet_slot: int) -> bytes:
    try:
        body: Any = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return data
    if isinstance(body, dict) and body.get("id_slot") == local:
        body["id_slot"] = fleet_slot
        return msgspec.json.encode(body)
    return data
