"""Repeated runs of a real-server section: each cell is the median with its range."""

from __future__ import annotations

import json

import pytest

from comparison.common import SuiteEnv
from comparison.routing import Result, cpu_lines, runs_of, spread, tables
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


def test_the_cpu_a_contender_used_is_per_second_of_its_run_median_over_runs() -> None:
    def run(contender: str, cpu: float | None, i: int) -> Result:
        outcomes = [
            Outcome(index=0, start=0.0, end=3.0, first_token=0.5, output_tokens=8),
            Outcome(index=1, start=1.0, end=10.0, first_token=1.5, output_tokens=8),
        ]  # the run lasts 10 s: first sent to last answer
        return Result(contender, 0.9, 1.0, summarise(outcomes), outcomes, run=i, cpu=cpu)

    results = [run("corral", cpu, i) for i, cpu in enumerate((3.0, 2.0, 4.0))]
    results += [run("haproxy", 0.5, 0), run("nginx-rr", None, 0)]
    assert results[0].cpu_share == pytest.approx(0.3)
    assert results[-1].cpu_share is None  # not read: left out
    assert cpu_lines(results) == [
        "- at 90%, CPU seconds each contender's own processes used per second of its "
        "run: corral 0.30, haproxy 0.05"
    ]


def test_a_section_run_alone_prints_its_page_and_keeps_its_data(tmp_path, capsys) -> None:
    from comparison.common import Section, section_main

    async def run(env: SuiteEnv) -> Section:
        assert env.out_dir == tmp_path
        return Section("A title", "the page", {"capacity_rps": 0.65})

    assert section_main("prefix", "doc", run, ["--out", str(tmp_path)]) == 0
    assert "## A title\n\nthe page" in capsys.readouterr().out
    kept = json.loads((tmp_path / "prefix.json").read_text())
    assert kept == {"title": "A title", "data": {"capacity_rps": 0.65}}


def test_repeated_runs_draw_arrivals_from_successive_seeds_the_same_for_every_contender(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run k's trace is seeded ``env.seed + k`` for every contender: one trace's bursts
    must not decide a section, and contenders are compared on the same traces."""
    import asyncio
    from types import SimpleNamespace

    from comparison import routing
    from corral.bench.workload import WorkloadSpec

    seeds: list[tuple[str, int]] = []

    class FakeRunner:
        def __init__(self, target: object, workload: object, load: routing.Load) -> None:
            self.load = load

        async def run(self) -> list[Outcome]:
            seeds.append((current[0], self.load.seed))
            return [Outcome(index=0, start=0.0, end=1.0, first_token=0.1, output_tokens=4)]

    current = [""]

    async def fake_start(name: str, *args: object, **kwargs: object) -> object:
        current[0] = name
        return SimpleNamespace(url="http://127.0.0.1:1")

    async def idle(*args: object, **kwargs: object) -> float:
        return 0.0

    procs = SimpleNamespace(
        mark=lambda: 0, pids_since=lambda mark: [], stop_since=lambda mark: None
    )
    monkeypatch.setattr(routing, "Runner", FakeRunner)
    monkeypatch.setattr(routing, "start", fake_start)
    monkeypatch.setattr(routing, "wait_idle", idle)
    env = SuiteEnv(out_dir=None, docs_dir=None, seed=5)  # type: ignore[arg-type]
    spec = WorkloadSpec(shape="heavy-tail", seed=1)
    results = asyncio.run(
        routing.compare(env, procs, [], spec, [(0.9, 1.0)], 1.0, ["a", "b"], repeat=3)  # type: ignore[arg-type]
    )
    assert sorted(seeds) == [("a", 5), ("a", 6), ("a", 7), ("b", 5), ("b", 6), ("b", 7)]
    assert [(r.contender, r.run) for r in results] == [
        ("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)
    ]  # fmt: skip
