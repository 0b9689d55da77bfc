"""The programs a section starts beside Corral (``python -m comparison.<module>``) find
the package from any directory, though it is not installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from comparison.common import BENCHMARKS_DIR, child_env, harness_command


@pytest.mark.parametrize("module", ["ticker", "fakeagents", "simfleet"])
def test_a_harness_program_starts_outside_the_repository(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONPATH", raising=False)
    done = subprocess.run(
        [*harness_command(module), "--help"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"python -m comparison.{module}" in done.stdout


def test_child_env_puts_benchmarks_first_and_keeps_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert child_env()["PYTHONPATH"].split(os.pathsep) == [str(BENCHMARKS_DIR), "/elsewhere"]
    assert (BENCHMARKS_DIR / "comparison" / "__init__.py").is_file()
