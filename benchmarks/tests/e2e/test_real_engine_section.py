"""The real-engine comparison at tiny scale: real llama-servers, Corral and nginx.

It checks the harness (capacity measured, every run answered, tables and charts
written, nothing left running), never timings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.procs import children

from comparison.common import SuiteEnv
from comparison.real_engine import run

pytestmark = pytest.mark.e2e


async def test_real_servers_behind_each_contender(tmp_path: Path) -> None:
    before = children()
    env = SuiteEnv(out_dir=tmp_path / "charts", docs_dir=tmp_path, quick=True)
    section = await run(env, contenders=("corral", "nginx-rr"))
    assert section.data["capacity_rps"] > 0
    cap = section.data["capacity"]  # speeds measured on the servers, per token
    assert cap["prefill"] > 0 and cap["decode"] > 0 and cap["output_tokens"] > 0
    assert cap["requests_per_second"] == section.data["capacity_rps"]
    results = section.data["results"]
    assert [(r["contender"], r["load"]) for r in results] == [
        (name, load) for load in (0.9, 1.5) for name in ("corral", "nginx-rr")
    ]
    for r in results:
        s = r["summary"]
        assert s["requests"] == s["succeeded"] + s["failed"] > 0
        assert s["failed"] == 0, (r["contender"], s["errors"])
        assert s["output_tokens"] > 0
        assert r["settled_s"] >= 0  # the servers were checked idle before it started
        assert r["cpu_s"] > 0  # what the contender's own processes took from the servers
    assert "Capacity: " in section.markdown and "tokens/s" in section.markdown
    assert "| **corral** |" in section.markdown
    assert (tmp_path / "charts" / "real-engine-ttft-p99.png").stat().st_size > 1000
    assert children() <= before
