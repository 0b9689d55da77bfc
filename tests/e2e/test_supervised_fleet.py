"""Agents in supervisor mode on real llama-servers: crashes under load are survived."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
from openai import OpenAI
from support.procs import FULL_LENGTH, Fleet, agents, alive, get_json, wait_until

pytestmark = pytest.mark.e2e


def busy(management: int) -> int:
    return sum(a["slots_busy"] for a in agents(management).values())


def test_killed_supervised_server_is_restarted_and_the_fleet_serves_on(fleet: Fleet):
    _, inference, management = fleet.balancer()
    fleet.supervised_agent("one", management, slots=2)
    fleet.supervised_agent("two", management, slots=2)
    before = agents(management)["one"]["supervisor"]
    assert before["state"] == "ready" and before["load_time_s"] > 0
    sdk = OpenAI(base_url=f"http://127.0.0.1:{inference}/v1", api_key="x", max_retries=0)
    with ThreadPoolExecutor(6) as pool:
        futures = [
            pool.submit(sdk.completions.create, model="x", prompt="Count:", max_tokens=30)
            for _ in range(6)
        ]
        wait_until(lambda: busy(management) == 4, 30, "all slots busy")
        os.kill(before["pid"], signal.SIGKILL)  # under load
        results = [f.result() for f in futures]
    assert [r.usage.completion_tokens for r in results] == [30] * 6

    def restarted():
        one = agents(management)["one"]
        info = one["supervisor"]
        return one["state"] == "ready" and info["restarts"] == 1 and info["pid"] != before["pid"]

    wait_until(restarted, 60, "server restarted")
    assert "SIGKILL" in agents(management)["one"]["supervisor"]["last_crash"]
    reply = sdk.completions.create(model="x", prompt="Hi", max_tokens=4, extra_body=FULL_LENGTH)
    assert reply.usage.completion_tokens == 4
    status, health = get_json(f"http://127.0.0.1:{inference}/health")
    assert status == 200 and health["slots_idle"] + health["slots_processing"] == 4


def test_stopping_a_supervised_agent_stops_its_server(fleet: Fleet):
    _, _, management = fleet.balancer()
    agent = fleet.supervised_agent("solo", management, slots=1)
    pid = agents(management)["solo"]["supervisor"]["pid"]
    agent.stop()  # SIGTERM: a clean stop
    wait_until(lambda: not alive(pid), 15, "server stopped with its agent")


def test_a_killed_agent_leaves_no_orphan_server(fleet: Fleet):
    _, _, management = fleet.balancer()
    agent = fleet.supervised_agent("doomed", management, slots=1)
    pid = agents(management)["doomed"]["supervisor"]["pid"]
    agent.kill9()  # no chance to clean up: the kernel tells the server (PDEATHSIG)
    wait_until(lambda: not alive(pid), 15, "orphan server gone")
