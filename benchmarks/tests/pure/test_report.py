"""The benchmarks page: command, environment, sections in order."""

from __future__ import annotations

import pytest

from comparison.common import Section
from comparison.report import SECTIONS, main, render


def test_the_page_has_the_command_the_environment_and_the_sections_in_order() -> None:
    page = render(
        "python benchmarks/compare.py",
        {"cpu": "x86, 2 cores", "nginx": "1.22.1"},
        [Section("First", "table one"), Section("Second", "table two")],
    )
    assert page.startswith("# Benchmarks")
    assert "```sh\npython benchmarks/compare.py\n```" in page
    assert "| cpu | x86, 2 cores |" in page
    assert page.index("## 1. First") < page.index("table one") < page.index("## 2. Second")


def test_unknown_sections_are_refused(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--sections", "routing,speed"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown section(s) speed" in err
    assert all(name in err for name in SECTIONS)


def test_a_section_kept_from_an_earlier_run_says_when_it_ran(tmp_path) -> None:
    from comparison.report import _load, _save

    when = {"date": "2026-11-21", "commit": "abc1234", "command": "python x.py"}
    _save(tmp_path / "routing.json", Section("Routing", "| a |", {"n": 1}), when)
    section, ran = _load(tmp_path / "routing.json")
    assert section == Section("Routing", "| a |", {"n": 1}) and ran == when
    page = render("cmd", {}, [section], [ran])
    assert "*Ran 2026-11-21 on commit abc1234: `python x.py`*" in page
    several = {"date": "2026-11-30", "text": "Ran 2026-11-29/30: parts on commits a and b."}
    assert "\n*Ran 2026-11-29/30: parts on commits a and b.*\n" in render(
        "cmd", {}, [section], [several]
    )
    assert _load(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert _load(tmp_path / "bad.json") is None


def test_the_foundation_targets_are_judged_from_the_sections_figures() -> None:
    from comparison.report import targets

    data = {
        "overhead": {
            "tokens_per_response": 32,
            "rows": [
                {"name": "direct", "p50_us": 40.0, "p99_us": 80.0, "tokens_per_second": 9e5},
                {"name": "corral", "p50_us": 640.0, "p99_us": 1580.0, "tokens_per_second": 6e4},
            ],
        },
        "control": {
            "rows": [{"agents": 10, "pick_p99": 9e-6}, {"agents": 1000, "pick_p99": 1.2e-5}],
            "buffer_memory": {"per_request_bytes": 14_500.0, "after_mib": 180.0},
        },
    }
    table = targets(data)
    assert "p50 +0.60 ms, p99 +1.50 ms | p99 met, p50 not" in table
    assert "60,000 tokens/s" in table and "| yes |" in table
    assert "12.0 µs p99 with 1,000 agents (in-process) | yes" in table
    assert "145 MB for the requests (14,500 bytes each)" in table
    assert "whole RSS with them 189 MB | **no**" in table
    assert targets({}) == ""
    data["overhead"]["token_relay"] = {
        "rows": [
            {"name": "direct", "tokens_per_core_second": None},
            {"name": "corral", "tokens_per_core_second": 48_000.0, "cpu_per_token_us": 20.8,
             "tokens_per_second": 45_000.0},
        ]
    }  # fmt: skip
    table = targets(data)
    assert "48,000 tokens/s per core (20.8 µs of CPU per token" in table
    assert "45,000 tokens/s delivered in the run) | **no** |" in table


def test_a_regenerated_page_keeps_the_sections_other_scripts_measured() -> None:
    from comparison.report import KEPT, with_kept

    old = f"# Benchmarks\n\nold tables\n\n{KEPT}\n\n## Fuzzing\n\n100,000 cases\n\n## Chaos\n"
    page = with_kept("# Benchmarks\n\nnew tables\n", old)
    assert "new tables" in page and "old tables" not in page
    assert page.endswith(f"{KEPT}\n\n## Fuzzing\n\n100,000 cases\n\n## Chaos\n")
    assert with_kept("# B\n", None) == f"# B\n\n{KEPT}\n"
    with pytest.raises(ValueError, match="add this line above them"):
        with_kept("# B\n", "# B\n\nno line\n\n## Fuzzing\n")


def test_a_page_without_the_kept_line_is_refused_before_anything_runs(tmp_path, capsys) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\n## Fuzzing\n\nwritten by hand\n")
    assert main(["--sections", "routing", "--out", str(page)]) == 1
    assert "add this line above them" in capsys.readouterr().err
    assert page.read_text() == "# Benchmarks\n\n## Fuzzing\n\nwritten by hand\n"
    assert not (tmp_path / "benchmarks").exists()  # nothing ran, no charts folder


def test_a_saved_section_that_cannot_say_when_it_ran_is_refused_before_anything_runs(
    tmp_path, capsys
) -> None:
    from comparison.report import KEPT

    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\n\n{KEPT}\n")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "prefix.json").write_text(
        '{"title": "Prefix", "markdown": "x", "ran": {"date": "2026-11-30"}}'
    )
    assert main(["--sections", "routing", "--out", str(page)]) == 1
    assert "cannot be written again" in capsys.readouterr().err
    assert page.read_text() == f"# Benchmarks\n\n{KEPT}\n"
