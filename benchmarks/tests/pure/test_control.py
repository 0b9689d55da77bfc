"""Reading the balancer's pick histogram, and the in-process pick timing."""

from __future__ import annotations

import pytest

from comparison.control import _pick_buckets, histogram_quantile, pick_in_process

INF = float("inf")


def test_quantiles_interpolate_within_the_bucket() -> None:
    # 10 picks under 1 us, 80 between 1 and 2 us, 10 between 2 and 5 us
    buckets = [(1e-6, 10.0), (2e-6, 90.0), (5e-6, 100.0), (INF, 100.0)]
    assert histogram_quantile(buckets, 0.5) == pytest.approx(1.5e-6)
    assert histogram_quantile(buckets, 0.05) == pytest.approx(0.5e-6)
    assert histogram_quantile(buckets, 0.99) == pytest.approx(2e-6 + 3e-6 * 0.9)


def test_quantile_in_the_open_bucket_is_the_highest_bound_and_empty_is_none() -> None:
    assert histogram_quantile([(1e-6, 1.0), (INF, 10.0)], 0.99) == 1e-6
    assert histogram_quantile([(1e-6, 0.0), (INF, 0.0)], 0.5) is None
    assert histogram_quantile([], 0.5) is None


def test_pick_buckets_from_prometheus_text() -> None:
    text = (
        "# HELP corral_pick_seconds Time\n# TYPE corral_pick_seconds histogram\n"
        'corral_pick_seconds_bucket{le="1e-06"} 3.0\n'
        'corral_pick_seconds_bucket{le="+Inf"} 5.0\n'
        "corral_pick_seconds_count 5.0\ncorral_pick_seconds_sum 1e-05\n"
    )
    assert _pick_buckets(text) == [(1e-6, 3.0), (INF, 5.0)]
    assert _pick_buckets("") == []


def test_pick_in_process_gives_ordered_positive_percentiles() -> None:
    p50, p99 = pick_in_process(agents=50, seed=1, rounds=500)
    assert 0 < p50 <= p99
