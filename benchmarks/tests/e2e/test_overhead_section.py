"""The overhead section at tiny scale, with real nginx, wrk and Corral processes.

It checks the harness (every path measured, figures read, chart drawn, nothing left
running), never timings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.procs import children

from comparison.common import SuiteEnv
from comparison.overhead import TOKENS, run
from comparison.relay import RELAY_QUICK

pytestmark = pytest.mark.e2e


async def test_direct_nginx_and_corral_are_measured(tmp_path: Path) -> None:
    before = children()
    env = SuiteEnv(out_dir=tmp_path / "charts", docs_dir=tmp_path, quick=True)
    section = await run(env)
    rows = {r["name"]: r for r in section.data["rows"]}
    assert list(rows) == ["direct", "nginx", "corral"]
    for row in rows.values():
        assert row["p50_us"] > 0 and row["p99_us"] >= row["p50_us"]
        assert row["requests_per_second"] > 0
        assert row["tokens_per_second"] == pytest.approx(row["requests_per_second"] * TOKENS)
        assert row["errors"] == 0
    for proxy in ("nginx", "corral"):
        assert rows[proxy]["proxy_busy"] > 0  # the proxy's own CPU time was read
    assert rows["direct"]["proxy_busy"] is None
    assert rows["corral"]["cpu_per_request_us"] > 0
    json.dumps(section.data)  # the suite saves it to results.json
    lines = section.markdown.splitlines()
    for label in ("| direct (no proxy) |", "| nginx |", "| **Corral** |"):
        assert any(line.startswith(label) for line in lines), label
    assert "wrk -t1 -c1" in section.markdown and "taskset" in section.markdown
    assert (tmp_path / "charts" / "overhead.png").stat().st_size > 1000
    assert "charts/overhead.png" in section.markdown

    # The token-by-token part: the ticker reached directly and through Corral.
    relay = section.data["token_relay"]
    q = RELAY_QUICK
    assert relay["scale"]["offered"] == q.connections * q.rate
    paced = {r["name"]: r for r in relay["rows"]}
    assert list(paced) == ["direct", "corral"]
    for row in paced.values():
        assert row["tokens"] > 0 and row["streams"] > 0
        assert row["bad_streams"] == 0 and row["connection_errors"] == 0
        # Tokens counted fit the streams that ended: at most one stream per
        # connection straddles each end of the window.
        assert (row["streams"] - q.connections) * q.tokens <= row["tokens"]
        assert row["tokens"] <= (row["streams"] + q.connections) * q.tokens
        assert row["tokens_per_second"] > 0 and row["backend_cpu_per_token_us"] > 0
        assert len(relay["runs"][row["name"]]) == q.rounds
    assert paced["direct"]["proxy_busy"] is None and paced["direct"]["cpu_per_token_us"] is None
    corral = paced["corral"]
    assert corral["proxy_busy"] > 0 and corral["cpu_per_token_us"] > 0
    assert corral["tokens_per_core_second"] == pytest.approx(1e6 / corral["cpu_per_token_us"])
    # The ticker wrote at least every token the driver counted, and finished streams.
    assert relay["ticker"]["tokens"] >= sum(r["tokens"] for r in paced.values())
    assert relay["ticker"]["finished"] >= sum(r["streams"] for r in paced.values())
    assert "### Token by token" in section.markdown
    for label in ("| direct (no proxy) |", "| **Corral** |"):
        assert sum(line.startswith(label) for line in lines) == 2, label
    assert children() <= before  # every process it started is gone
