"""The prefix buffer benchmark at quick scale: it runs the pure core end to end, loses
no request, and prefix routing makes the difference it is for (the figures
themselves come from a full run, docs/benchmarks.md section 5)."""

from __future__ import annotations

import pytest

import prefix_buffer


def test_quick_scale_prefix_routing_reuses_the_cache_and_finishes_more():
    scale = prefix_buffer.QUICK
    results = {
        (r.contender, r.load): r
        for r in prefix_buffer.measure(scale, [2.0, 10.0], seeds=1, loads=[3.0])
    }
    slots = results["corral-slots", 3.0]
    for max_pass in ("2", "10"):
        prefix = results[f"corral-prefix, max_pass {max_pass} s", 3.0]
        assert prefix.done == slots.done == 1.0  # every request sent was answered
        assert prefix.hit > 2 * slots.hit
        assert prefix.throughput > 1.5 * slots.throughput  # saturated: the cache is capacity
        assert prefix.p50 < slots.p50


def test_the_page_names_every_point():
    scale = prefix_buffer.QUICK
    results = prefix_buffer.measure(scale, [10.0], seeds=1, loads=[0.9])
    page = prefix_buffer.markdown(results, scale, 1)
    assert "| 90% | corral-slots |" in page
    assert "| 90% | corral-prefix, max_pass 10 s |" in page


@pytest.mark.parametrize("argv", [["--max-pass", "x"], ["--loads", "-1"], ["--seeds", "0"]])
def test_bad_arguments_are_refused_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prefix_buffer.main(["--quick", *argv])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
