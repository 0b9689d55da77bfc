"""The routing policy's public names, kept where callers import them.

Routing lives in :mod:`corral.core.routing` (filters, scorers, a picker, policies by
name); start there. ``Policy`` is slot routing (:class:`~corral.core.routing.SlotPolicy`).
"""

from __future__ import annotations

from corral.core.routing import (
    Decision,
    Dispatch,
    Reject,
    RequestInfo,
    RoutingPolicy,
    Rule,
    Wait,
    resolve_pools,
)
from corral.core.routing.slots import SlotPolicy as Policy

__all__ = [
    "Decision",
    "Dispatch",
    "Policy",
    "Reject",
    "RequestInfo",
    "RoutingPolicy",
    "Rule",
    "Wait",
    "resolve_pools",
]
