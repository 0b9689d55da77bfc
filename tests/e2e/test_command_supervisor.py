"""Supervisor mode for any runner: the agent runs a server from its command line.

The server here is not llama-server: `corral sim` run as a subprocess, read by the
`openai` runner (any OpenAI-compatible server: only `/v1/models`), as a user would run
`corral agent --runner vllm --server-addr 127.0.0.1:8000 -- vllm serve ...`.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest
from openai import OpenAI
from support.procs import Fleet, agents, alive, wait_until

from corral.llamacpp.process import free_port

pytestmark = pytest.mark.e2e


def test_an_agent_runs_restarts_and_stops_a_server_from_a_command_line(fleet: Fleet):
    _, inference, management = fleet.balancer()
    port = free_port()
    agent = fleet._start(
        "agent-cmd",
        [
            sys.executable, "-m", "corral", "agent",
            "--runner", "openai", "--concurrency", "2",
            "--server-addr", f"127.0.0.1:{port}",
            "--management-addr", f"127.0.0.1:{management}",
            "--name", "cmd", "--poll-interval", "0.1",
            "--",
            sys.executable, "-m", "corral", "sim", "--addr", f"127.0.0.1:{port}",
            "--model", "sim-model", "--slots", "2",
        ],
    )  # fmt: skip

    def ready() -> dict | None:
        one = agents(management).get("cmd")
        return one if one and one["state"] == "ready" else None

    first = wait_until(ready, 60, "the agent's server ready")
    assert first["supervisor"]["state"] == "ready"
    assert first["slots_total"] == 2  # --concurrency: the openai runner has no slot count
    pid = first["supervisor"]["pid"]
    assert alive(pid)

    sdk = OpenAI(base_url=f"http://127.0.0.1:{inference}/v1", api_key="x", max_retries=0)
    models = [m.id for m in sdk.models.list().data]
    assert models == ["sim-model"]
    reply = sdk.chat.completions.create(
        model="sim-model", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
    )
    assert reply.choices[0].message.content

    # a crash: the agent starts the command again, on the same address
    os.kill(pid, signal.SIGKILL)

    def restarted() -> dict | None:
        one = ready()
        info = one["supervisor"] if one else None
        return one if info and info.get("restarts") == 1 and info["pid"] != pid else None

    again = wait_until(restarted, 60, "the server restarted")
    crash = again["supervisor"]["last_crash"]
    assert crash.startswith("python") and "SIGKILL" in crash, crash  # not "llama-server"
    reply = sdk.completions.create(model="sim-model", prompt="Hi", max_tokens=4)
    assert reply.choices[0].text

    # the agent's stop stops its server
    second = again["supervisor"]["pid"]
    agent.stop()
    wait_until(lambda: not alive(second), 15, "the server stopped with its agent")
