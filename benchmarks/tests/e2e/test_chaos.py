"""The chaos run at small scale (benchmarks/chaos.py): two real llama-servers and a
simulated one behind an HA pair and HAProxy, a server, an agent and a balancer hit in
turn. It checks the goal (no request lost that had not started streaming, no slot
counter drift, capacity back after every hit), and that nothing is left running."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.procs import children

from chaos import markdown, run

pytestmark = pytest.mark.e2e


def test_a_short_chaos_run_loses_no_request_that_had_not_started(tmp_path: Path) -> None:
    before = children()
    report = run(seconds=36, servers=2, sims=1, interval=9, down=2, seed=3, logs=tmp_path)
    print(markdown(report))
    assert [h["kind"] for h in report["hits"]] == ["server", "agent", "balancer"]
    assert report["sent"] > 20
    assert report["failed_before_first_byte"] == 0, report["failures"]
    assert report["sent"] == (
        report["succeeded"] + report["failed_before_first_byte"] + report["cut_mid_stream"]
    )
    assert all(h["back_after_return_s"] is not None for h in report["hits"]), report["hits"]
    assert not report["counters"]["drift"], report["counters"]
    assert "| sent | succeeded |" in markdown(report)
    assert children() <= before
