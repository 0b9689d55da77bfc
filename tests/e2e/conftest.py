"""Tier 3 fixtures: real llama-servers with the bundled model, real corral processes."""

from collections.abc import Iterator

import pytest
from support.procs import Fleet

from corral.llamacpp import bundled_model, llama_server_path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session", autouse=True)
def real_parts() -> None:
    # Fail loudly, never skip: CI installs both (scripts/install).
    llama_server_path()
    bundled_model()


@pytest.fixture
def fleet(request, tmp_path) -> Iterator[Fleet]:
    procs = Fleet(tmp_path)
    yield procs
    report = getattr(request.node, "rep_call", None)
    procs.stop(failed=report is None or report.failed)
