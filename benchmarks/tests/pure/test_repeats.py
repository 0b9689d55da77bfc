"""Repeated runs of a real-server section: each cell is the median with its range."""

from __future__ import annotations

import pytest

from comparison.common import SuiteEnv
from comparison.routing import Result, runs_of, spread, tables
from corral.bench.stats import Outcome, summarise


def test_one_run_gives_the_figure_and_several_the_median_with_the_range() -> None:
    assert spread([0.534]) == "0.53"
    assert spread([0.70, 0.41, 0.53]) == "0.53 (0.41-0.70)"
    assert spread([0.5, None, 0.7], "{:.0%}") == "60% (50%-70%)"
    assert spread([None]) == "-" and spread([]) == "-"


def _run(contender: str, ttft: float, run: int) -> Result:
    outcome = Outcome(index=0, start=0.0, end=1.0, first_token=ttft, output_tokens=8)
    return Result(contender, 0.9, 1.0, summarise([outcome]), [outcome], run=run)


def test_a_table_row_summarises_every_run_of_a_contender() -> None:
    results = [_run("corral", t, i) for i, t in enumerate((0.2, 0.4, 0.3))]
    results += [_run("haproxy", t, i) for i, t in enumerate((1.0, 3.0, 2.0))]
    assert list(runs_of(results)) == [(0.9, "corral"), (0.9, "haproxy")]
    text = tables(results, with_usage=False)
    assert "3 runs each: median (min-max)" in text
    assert "| **corral** | 0.30 (0.20-0.40) |" in text
    assert "| haproxy | 2.00 (1.00-3.00) |" in text


@pytest.mark.parametrize("repeat", [0, -1])
def test_repeat_must_be_positive(repeat: int, capsys: pytest.CaptureFixture[str]) -> None:
    from comparison.report import main

    with pytest.raises(SystemExit):
        main(["--sections", "prefix", "--repeat", str(repeat)])
    assert "--repeat must be at least 1" in capsys.readouterr().err


def test_the_suite_runs_once_unless_told() -> None:
    assert SuiteEnv(out_dir=None, docs_dir=None).repeat == 1  # type: ignore[arg-type]
