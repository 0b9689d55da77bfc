"""The queueing benchmark at quick scale: it runs, and the disciplines make the
difference they are for (the figures themselves come from a full run)."""

from __future__ import annotations

import queueing
from corral.core.queueing import Priority, Tenant


def test_quick_scale_runs_and_priority_protects_interactive_users():
    rows = {(r.scenario, r.discipline): r for r in queueing.measure(queueing.QUICK)}
    fifo, priority = rows["batch flood", "fifo"], rows["batch flood", "priority"]
    assert priority.p99_flood < fifo.p99_flood / 5
    assert priority.flood_per_s and priority.flood_per_s > 0  # the batch work still ran
    fair = rows["two tenants, b floods", "fair"]
    assert fair.p99_flood < rows["two tenants, b floods", "fifo"].p99_flood
    assert "| batch flood | priority |" in queueing.markdown(list(rows.values()), queueing.QUICK)


def test_every_flood_request_completes():
    scale = queueing.QUICK
    run = queueing.simulate(scale, "priority", flood=True, flood_class=Priority.BATCH)
    assert run.flood_done == scale.flood
    run = queueing.simulate(
        scale, "fair", flood=True, flood_class=Priority.INTERACTIVE,
        tenants=(Tenant("a"), Tenant("b", max_concurrent=2)),
    )  # fmt: skip
    assert run.flood_done == scale.flood
