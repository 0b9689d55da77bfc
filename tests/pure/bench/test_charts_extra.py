"""Charts are an optional extra (matplotlib): ``corral bench --charts`` names it when it
is missing, and nothing else in Corral needs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from corral.bench.command import charts_unavailable
from corral.cli import main


def test_bench_charts_without_matplotlib_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    monkeypatch.delitem(sys.modules, "corral.bench.charts", raising=False)
    out = tmp_path / "charts"
    assert main(["bench", "http://127.0.0.1:9", "--requests", "1", "--charts", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "corral bench: --charts needs matplotlib, which is not installed: "
        "pip install 'corral[charts]'"
    ]
    assert captured.out == ""  # refused before the run, not after it
    assert not out.exists()


def test_charts_are_available_where_the_extra_is_installed() -> None:
    assert charts_unavailable() is None  # the dev extra includes charts


def test_no_module_but_the_charts_imports_matplotlib() -> None:
    code = """
import importlib, pkgutil, sys
sys.modules["matplotlib"] = None  # any import of it now fails
import corral
for module in pkgutil.walk_packages(corral.__path__, "corral."):
    if module.name not in ("corral.__main__", "corral.bench.charts"):
        importlib.import_module(module.name)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
