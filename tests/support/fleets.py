"""Fleets of ready backends for tests of routing and scheduling (no sockets)."""

from __future__ import annotations

from typing import Any

from corral.core import Condition, Fleet, Report


def ready_fleet(*backends: tuple[str, int] | tuple[str, str, int], **report: Any) -> Fleet:
    """A fleet whose backends have reported ready: each ``(name, slots)`` (serving model
    ``m``) or ``(name, model, slots)``, named and addressed by its name (``http://NAME``).
    ``report``: more :class:`~corral.core.Report` fields for every one of them
    (``cache_ram_mib=64``: a host prompt cache)."""
    fleet = Fleet()
    for backend in backends:
        name, model, slots = backend if len(backend) == 3 else (backend[0], "m", backend[1])
        fleet.register(name, name=name, address=f"http://{name}", api_key=None, now=0)
        fleet.report(name, Report(Condition.READY, model=model, slots_total=slots, **report), now=0)
    return fleet
