"""The queueing benchmark at quick scale: it runs, and the disciplines make the
difference they are for (the figures themselves come from a full run)."""

from __future__ import annotations

import queueing
from corral.core.queueing import Priority, Tenant


def test_quick_scale_runs_and_priority_protects_interactive_users():
    scale = queueing.QUICK
    rows = {(r.scenario, r.discipline): r for r in queueing.measure(scale)}
    fifo, priority = rows["batch flood", "fifo"], rows["batch flood", "priority"]
    assert priority.ratio <= 1.2  # the target
    assert priority.flood_done == 1.0 and priority.flood_per_s > 0  # batch work completes
    assert fifo.ratio > 10  # what the discipline is for
    fair = rows["two tenants, b floods", "fair"]
    assert fair.p99_flood < rows["two tenants, b floods", "fifo"].p99_flood / 10
    assert fair.flood_done == 1.0
    assert "| batch flood | priority |" in queueing.markdown(list(rows.values()), scale)


def test_every_flood_request_completes():
    scale = queueing.QUICK
    run = queueing.simulate(scale, "priority", flood=True, flood_class=Priority.BATCH)
    assert run.flood_done == scale.flood
    run = queueing.simulate(
        scale, "fair", flood=True, flood_class=Priority.INTERACTIVE,
        tenants=(Tenant("a"), Tenant("b", max_concurrent=2)),
    )  # fmt: skip
    assert run.flood_done == scale.flood
