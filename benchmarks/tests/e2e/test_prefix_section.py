"""The prefix-routing comparison at tiny scale: real llama-servers and a simulated fleet.

It checks the harness (every contender ran on idle servers, the servers' cache figures
and work shares were read, nothing is left running), never timings. Until Corral has
``--routing``, the Corral contenders run as plain ``corral``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.procs import children

from comparison.common import SuiteEnv
from comparison.prefix import run

pytestmark = pytest.mark.e2e


async def test_real_and_simulated_servers_behind_each_contender(tmp_path: Path) -> None:
    before = children()
    env = SuiteEnv(out_dir=tmp_path / "charts", docs_dir=tmp_path, quick=True)
    section = await run(env, contenders=("corral-prefix", "corral-slots", "nginx-sticky"))
    data = section.data
    corral = ["corral-prefix", "corral-slots"] if data["routing_option"] else ["corral"]
    assert data["contenders"] == [*corral, "nginx-sticky"]
    assert data["real"]["capacity_rps"] > 0
    cap = data["real"]["capacity"]  # from speeds measured on the servers, read whole
    assert cap["prefill"] > 0 and cap["decode"] > 0 and cap["prompt_tokens"] > 0
    real = data["real"]["results"]
    assert [r["contender"] for r in real] == data["contenders"]
    for r in real:
        s = r["summary"]
        assert s["failed"] == 0, (r["contender"], s["errors"])
        assert r["settled_s"] >= 0
        # the real servers said how much of each prompt they reused, and who worked
        assert s["prompt_tokens"] > 0 and 0 < s["cache_hit_rate"] < 1
        assert set(r["usage"]["work"]) == {"llama-1", "llama-2"}
        assert r["busiest_over_mean"] >= 1.0
    sim = data["sim"]
    assert [(r["contender"], r["load"]) for r in sim["results"]] == [
        (name, load) for load in (0.5, 3.0) for name in [*data["contenders"], "nginx-rr"]
    ]
    for r in sim["results"] + sim["control"]:
        assert r["summary"]["failed"] == 0, (r["contender"], r["summary"]["errors"])
    shared = [r["summary"]["cache_hit_rate"] for r in sim["results"]]
    control = [r["summary"]["cache_hit_rate"] for r in sim["control"]]
    assert min(shared) > 0.2 and max(control) < 0.05  # the control has nothing to reuse
    assert "cache hit rate" in section.markdown and "Why Corral was behind" in section.markdown
    assert "At saturation (300%)" in section.markdown  # the ratios to round robin
    assert children() <= before


async def test_the_replica_runs_the_real_workload_on_simulated_servers(tmp_path: Path) -> None:
    before = children()
    env = SuiteEnv(out_dir=tmp_path / "charts", docs_dir=tmp_path, quick=True)
    section = await run(
        env, contenders=("corral-prefix", "nginx-sticky"), parts=("replica",), speedup=2.0
    )
    data = section.data
    assert data["speedup"] == 2.0 and data["capacity_rps"] > 0
    results = data["results"]
    assert [r["contender"] for r in results][-1] == "nginx-sticky"
    for r in results:
        s = r["summary"]
        assert s["failed"] == 0, (r["contender"], s["errors"])
        assert s["prompt_tokens"] > 0 and 0 < s["cache_hit_rate"] < 1  # multi-turn reuse
    assert "A replica, not a result" in section.markdown
    assert children() <= before
