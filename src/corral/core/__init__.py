"""Pure logic: fleet state, routing policy, request buffer. No I/O, no asyncio.

Start with :mod:`corral.core.routing` (who gets a request), then
:mod:`corral.core.fleet` (what the balancer knows of each server) and
:mod:`corral.core.scheduler` (how waiting requests get the slots that free up).
"""

from corral.core.buffer import Buffer, BufferFull, Waiter
from corral.core.clock import Clock, ManualClock, MonotonicClock
from corral.core.endpoints import Kind, classify
from corral.core.fleet import (
    Backend,
    BackendState,
    Condition,
    Fleet,
    FleetError,
    Issue,
    ModelState,
    Report,
)
from corral.core.policy import Decision, Dispatch, Policy, Reject, RequestInfo, Rule, Wait
from corral.core.scheduler import Assigned, Refused, Scheduler

__all__ = [
    "Assigned",
    "Backend",
    "BackendState",
    "Buffer",
    "BufferFull",
    "Clock",
    "Condition",
    "Decision",
    "Dispatch",
    "Fleet",
    "FleetError",
    "Issue",
    "Kind",
    "ManualClock",
    "ModelState",
    "MonotonicClock",
    "Policy",
    "Refused",
    "Reject",
    "Report",
    "RequestInfo",
    "Rule",
    "Scheduler",
    "Wait",
    "Waiter",
    "classify",
]
