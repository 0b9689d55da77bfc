"""The Grafana dashboard in the repo queries only metrics Corral exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from corral.balancer.metrics import Metrics
from corral.core.buffer import Buffer
from corral.core.fleet import Fleet

DASHBOARD = Path(__file__).parents[3] / "docs" / "grafana" / "corral.json"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def exported() -> set[str]:
    """Every sample name Corral's registry can produce (labelled families included)."""
    metrics = Metrics(Fleet(), Buffer(capacity=1, timeout=1.0))
    names = set()
    for family in metrics.registry.collect():
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in board["panels"] for t in panel["targets"]]


def test_every_query_names_a_metric_corral_exports():
    names = exported()
    used = {name for expr in queries() for name in re.findall(r"\bcorral_\w+", expr)}
    assert used, "no query found"
    assert used <= names, sorted(used - names)


def test_the_main_signals_have_a_panel():
    text = " ".join(queries())
    for metric in (
        "corral_generated_tokens_total",
        "corral_agent_generated_tokens_total",
        "corral_buffered_requests",
        "corral_slots",
        "corral_time_to_first_byte_seconds_bucket",
    ):
        assert metric in text, metric


def test_the_check_can_fail():
    assert "corral_no_such_metric_total" not in exported()
