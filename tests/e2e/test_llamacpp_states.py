"""Through Corral, a llama-server that is loading or sleeping answers as it does alone.

Loading: llama-server opens its HTTP listener before it loads the model and answers
every endpoint with 503 "Loading model" meanwhile. A named pipe as the model file
keeps it loading for as long as the test needs (nothing writes to the pipe).

Sleeping: with ``--sleep-idle-seconds`` an idle server unloads its model and says so
in ``/props`` (``is_sleeping``); ``/health`` stays 200. The agent's reads must neither
keep it awake nor wake it: a ``/slots`` read does both (it is a task), so the agent
reads ``/slots`` of an idle server rarely or, with ``--idle-slots-interval 0``, never,
and not at all while ``/props`` says it sleeps.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.procs import Fleet, agent_state, get_json, wait_until

from corral.llamacpp import bundled_model, llama_server_command, llama_server_path
from corral.llamacpp.process import free_port

pytestmark = pytest.mark.e2e

EXTRA = frozenset({"corral", "slots_idle", "slots_processing"})
FLEET_ROUTES = ("/health", "/props", "/slots", "/v1/models", "/models", "/metrics")


def _server(fleet: Fleet, name: str, model: Path, *extra: str) -> int:
    port = free_port()
    command = llama_server_command(
        llama_server_path(), model, port=port, slots=2, ctx_size=512, threads=1
    )
    fleet._start(name, [*command, "--metrics", *extra])
    return port


def _corral(fleet: Fleet, server: int, want: str, *agent_args: str) -> int:
    """A balancer and an agent watching ``server``; the inference port once the
    balancer sees the backend in state ``want``."""
    _, inference, management = fleet.balancer("balancer")
    fleet._start(
        "agent",
        [
            sys.executable, "-m", "corral", "agent",
            "--local-llamacpp-addr", f"127.0.0.1:{server}",
            "--management-addr", f"127.0.0.1:{management}",
            "--name", "a", "--poll-interval", "0.1", *agent_args,
        ],
    )  # fmt: skip
    wait_until(lambda: agent_state(management, "a") == want, 60, f"backend {want}")
    return inference


def _same(direct: tuple[int, Any], through: tuple[int, Any], path: str) -> None:
    assert through[0] == direct[0], (path, direct, through)
    if isinstance(direct[1], dict):
        assert isinstance(through[1], dict), (path, through)
        assert set(through[1]) - EXTRA == set(direct[1]), (path, direct[1], through[1])
        if "error" in direct[1]:
            assert through[1]["error"] == direct[1]["error"], path


@pytest.fixture
def fleet_logs(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path)
    failed = True
    try:
        yield fleet
        failed = False
    finally:
        fleet.stop(failed=failed)


def test_a_loading_server_answers_503_loading_model_through_corral_too(
    fleet_logs: Fleet, tmp_path: Path
) -> None:
    pipe = tmp_path / "loading.gguf"
    os.mkfifo(pipe)  # llama-server blocks reading it: loading until the test ends
    server = _server(fleet_logs, "loading", pipe)
    wait_until(lambda: get_json(f"http://127.0.0.1:{server}/health")[0] == 503, 60, "listening")
    inference = _corral(fleet_logs, server, "loading")
    for path in FLEET_ROUTES:
        direct = get_json(f"http://127.0.0.1:{server}{path}")
        assert direct[0] == 503 and direct[1]["error"]["message"] == "Loading model", direct
        _same(direct, get_json(f"http://127.0.0.1:{inference}{path}"), path)
    body = get_json(f"http://127.0.0.1:{inference}/props")[1]
    assert "loading" in body["corral"]["reason"]


def test_a_sleeping_server_sleeps_behind_corral_and_says_so(fleet_logs: Fleet) -> None:
    server = _server(fleet_logs, "sleepy", bundled_model(), "--sleep-idle-seconds", "2")
    wait_until(lambda: get_json(f"http://127.0.0.1:{server}/health")[0] == 200, 120, "ready")
    # attach mode does not know the server's setting: say so (supervisor mode reads it
    # from the server's arguments)
    inference = _corral(fleet_logs, server, "ready", "--idle-slots-interval", "0")

    def sleeping(port: int) -> bool:
        return get_json(f"http://127.0.0.1:{port}/props")[1].get("is_sleeping") is True

    # the agent reads the server every 0.1 s; the server still falls asleep
    wait_until(lambda: sleeping(server), 30, "the server asleep while the agent watches")
    wait_until(lambda: sleeping(inference), 10, "Corral's /props to say it sleeps")
    for path in ("/health", "/props"):
        _same(
            get_json(f"http://127.0.0.1:{server}{path}"),
            get_json(f"http://127.0.0.1:{inference}{path}"),
            path,
        )
    assert sleeping(server), "reading through Corral woke the server"
