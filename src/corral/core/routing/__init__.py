"""Routing: which server gets a request, as stages chosen by name.

Theory of operation
-------------------
``policy.pick(fleet, request) -> Dispatch | Wait | Reject`` is a pure function of the
fleet as it is at that moment (the caller does not await between the pick and the
reservation, so the fleet it reads is a consistent snapshot):

- :class:`Dispatch`: send it to this backend (the caller reserves the slot at once);
- :class:`Wait`: no server should take it now; buffer it;
- :class:`Reject`: it can never be served as asked (an unknown model).

A policy is made of stages, one idea per module, in the shape of llm-d's scheduler
and SGLang's gateway:

- :mod:`.request`: the request context. What a stage needs of the request is
  computed only when that stage is on: the prompt's canonical text is read only for a
  policy that says ``needs_prompt``, and its block hashes on first use;
- :mod:`.filters`: who may serve it (model pool, free slot, pinned backend, rules);
- :mod:`.scorers`: how well each would (estimated time to first token from the
  predicted cache, the measured prefill rate and the load);
- :mod:`.picker`: the choice, with a balance guard;
- :mod:`.prefix_index`: which prompt prefixes each server probably holds.

Policies (:mod:`.registry`, ``--routing``): :mod:`.slots` (filters only: most free
slots first) and :mod:`.prefix` (all stages). A policy with a view of its own
(``observe``) is told what happens to backends by the fleet
(:mod:`corral.core.events`). In every policy a server never gets more requests than
it has slots: only the capacity filter offers backends, and it offers those with a
free slot.
"""

from corral.core.routing.decision import Decision, Dispatch, Reject, Wait
from corral.core.routing.filters import Rule, resolve_pools
from corral.core.routing.prefix import PrefixPolicy
from corral.core.routing.prefix_index import PrefixIndex
from corral.core.routing.registry import POLICIES, RoutingOptions, RoutingPolicy, make_policy
from corral.core.routing.request import Prompt, RequestInfo, RouteNote
from corral.core.routing.slots import SlotPolicy

__all__ = [
    "POLICIES",
    "Decision",
    "Dispatch",
    "PrefixIndex",
    "PrefixPolicy",
    "Prompt",
    "Reject",
    "RequestInfo",
    "RouteNote",
    "RoutingOptions",
    "RoutingPolicy",
    "Rule",
    "SlotPolicy",
    "Wait",
    "make_policy",
    "resolve_pools",
]
