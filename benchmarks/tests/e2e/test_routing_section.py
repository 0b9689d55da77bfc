"""The routing comparison at tiny scale, with real nginx, HAProxy and Corral processes.

It checks the harness (every contender ran, counts add up, the servers' usage was
read, charts were drawn, nothing is left running), never timings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.procs import children

from comparison.common import SuiteEnv
from comparison.routing import run

pytestmark = pytest.mark.e2e


async def test_every_contender_runs_the_same_trace(tmp_path: Path) -> None:
    before = children()
    env = SuiteEnv(out_dir=tmp_path / "charts", docs_dir=tmp_path, quick=True)
    section = await run(env, contenders=("corral", "haproxy", "nginx-rr"))
    results = section.data["results"]
    assert [(r["contender"], r["load"]) for r in results] == [
        (name, load) for load in (0.5, 1.5) for name in ("corral", "haproxy", "nginx-rr")
    ]
    for load in (0.5, 1.5):
        runs = [r for r in results if r["load"] == load]
        # the same arrival trace: the same number of requests for everyone
        assert len({r["summary"]["requests"] for r in runs}) == 1
        for r in runs:
            s = r["summary"]
            assert s["requests"] == s["succeeded"] + s["failed"] > 0
            assert s["failed"] == 0, (r["contender"], s["errors"])
            assert set(r["usage"]["busy_share"]) == {"sim-1", "sim-2"}
            assert 0 < r["usage"]["busy_share_mean"] <= 1
    corral = [r for r in results if r["contender"] == "corral"]
    assert all(r["usage"]["max_queue"] == 0 for r in corral)  # it never overloads a server
    assert "| **corral** |" in section.markdown and "| haproxy |" in section.markdown
    for chart in ("routing-ttft-p99.png", "routing-cdf.png"):
        assert (tmp_path / "charts" / chart).stat().st_size > 1000
        assert f"charts/{chart}" in section.markdown
    assert children() <= before  # every process it started is gone
