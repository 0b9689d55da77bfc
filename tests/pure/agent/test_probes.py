"""The probe decisions, without a listener: liveness and readiness with their reasons."""

from __future__ import annotations

from corral.agent.probes import liveness, readiness, stall_limit
from corral.protocol import messages as m

READY = m.ServerStatus(condition="ready", issues=[])
CONNECTED = {"http://b:8060/api/v1/agent-socket": "connected"}


def test_alive_while_the_monitor_goes_round():
    limit = stall_limit(poll_interval=0.5, read_timeout=3.0)
    assert limit == 24.0
    assert liveness(last_round=None, running=True, now=1.0, limit=limit) == []
    assert liveness(last_round=100.0, running=True, now=124.0, limit=limit) == []
    assert liveness(last_round=100.0, running=True, now=125.0, limit=limit) == [
        "the agent's monitor has not gone round for 25s"
    ]
    assert liveness(last_round=100.0, running=False, now=100.0, limit=limit) == [
        "the agent's monitor is not running"
    ]


def test_ready_needs_a_ready_server_and_a_balancer():
    assert readiness(READY, CONNECTED) == []
    loading = m.ServerStatus(condition="loading", issues=[m.IssueInfo("loading", "loading model")])
    assert readiness(loading, CONNECTED) == ["llama-server is loading: loading model"]
    assert readiness(READY, {"http://b:8060/api/v1/agent-socket": "connection refused"}) == [
        "not registered with any balancer (http://b:8060/api/v1/agent-socket: connection refused)"
    ]
    assert readiness(m.ServerStatus(condition="unreachable", issues=[]), {}) == [
        "llama-server is unreachable",
        "not registered with any balancer (none configured)",
    ]
    two = {**CONNECTED, "http://c:8060/api/v1/agent-socket": "connection refused"}
    assert readiness(READY, two) == []
