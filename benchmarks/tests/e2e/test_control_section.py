"""The control-plane section at tiny scale: real balancers, fake agents, a simulated
server. It checks the harness (rows for each fleet size, the pick histogram read, the
buffer filled, nothing left running), never timings."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.procs import children

from comparison.common import SuiteEnv
from comparison.control import run

pytestmark = pytest.mark.e2e


async def test_fleet_sizes_and_the_waiting_buffer(tmp_path: Path) -> None:
    before = children()
    env = SuiteEnv(out_dir=tmp_path / "charts", docs_dir=tmp_path, quick=True)
    section = await run(env)
    rows = section.data["rows"]
    assert [r["agents"] for r in rows] == [5, 20]
    for r in rows:
        assert r["requests_per_second"] > 0 and r["rss_mib"] > 10
        assert 0 < r["pick_p50"] <= r["pick_p99"]
        assert r["pick_live_p50"] is not None  # the balancer timed its picks
    memory = section.data["buffer_memory"]
    assert memory["requests"] == 300 and memory["after_mib"] >= memory["before_mib"]
    assert "| 20 |" in section.markdown
    assert (tmp_path / "charts" / "control-plane.png").stat().st_size > 1000
    assert children() <= before
