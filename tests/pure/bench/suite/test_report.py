"""The benchmarks page: command, environment, sections in order."""

from __future__ import annotations

import pytest

from corral.bench.suite.common import Section
from corral.bench.suite.report import SECTIONS, main, render


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
