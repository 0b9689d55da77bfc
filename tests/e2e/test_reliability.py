"""Reliability on real parts (issue #11): a llama-server stopped with SIGSTOP while
requests arrive (a GPU hang or a deadlock looks the same)."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.procs import Fleet, agent_state, agents, wait_until

pytestmark = pytest.mark.e2e


def chat(port: int, max_tokens: int = 32) -> tuple[int, str, float]:
    """One non-streamed chat request: status, the server that answered, seconds."""
    body = {
        "messages": [{"role": "user", "content": "Tell me a story about a cat."}],
        "max_tokens": max_tokens,
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
        return response.status, response.headers["X-Corral-Server"], time.monotonic() - started


def test_requests_held_by_a_stopped_server_complete_on_the_other(fleet: Fleet):
    stopped, a = fleet.llama_server("a", slots=2)
    _, b = fleet.llama_server("b", slots=2)
    # the requests that move to b wait their turn there: on a loaded machine b answers
    # them slowly, and this test is about the stopped server, not the buffer's timeout
    _, inference, management = fleet.balancer("balancer", "--buffered-request-timeout", "120")
    fleet.agent("a", a, management, "--read-timeout", "1")
    fleet.agent("b", b, management, "--read-timeout", "1")

    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(chat, inference) for _ in range(10)]
        wait_until(lambda: agents(management)["a"]["reserved"] > 0, 10, "a request on a")
        stopped.process.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: agent_state(management, "a") != "ready", 10, "a set aside")
            results = [f.result(timeout=90) for f in futures]
        finally:
            stopped.process.send_signal(signal.SIGCONT)

    assert [status for status, _, _ in results] == [200] * 10
    # those a held were sent again to b; none waited for a to come back
    assert max(seconds for _, _, seconds in results) < 60, results
