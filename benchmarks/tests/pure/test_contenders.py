"""The nginx and HAProxy configurations the suite runs, and the fleet usage accounting."""

from __future__ import annotations

from pathlib import Path

import pytest

from comparison.common import SuiteError, markdown_table
from comparison.contenders import Backend, corral_routing, haproxy_config, nginx_config
from comparison.routing import Scale, capacity
from comparison.simfleet import Usage

BACKENDS = [Backend("sim-1", 9001, 4), Backend("sim-2", 9002, 2)]


@pytest.mark.parametrize(
    ("policy", "directive"),
    [("nginx-rr", None), ("nginx-least-conn", "least_conn;"), ("nginx-random", "random;")],
)
def test_nginx_config(policy: str, directive: str | None, tmp_path: Path) -> None:
    conf = nginx_config(policy, BACKENDS, 8000, tmp_path)
    assert "worker_processes 1;" in conf
    assert "server 127.0.0.1:9001;" in conf and "server 127.0.0.1:9002;" in conf
    assert "listen 127.0.0.1:8000;" in conf
    assert "proxy_buffering off;" in conf  # streams relayed as they come
    assert 'proxy_set_header Connection "";' in conf and "keepalive" in conf
    for other in ("least_conn;", "random;"):
        assert (other in conf) == (other == directive)
    assert str(tmp_path) in conf  # nothing written outside the work directory
    assert conf.count("{") == conf.count("}")


def test_unknown_nginx_policy() -> None:
    with pytest.raises(SuiteError, match="unknown nginx policy"):
        nginx_config("nginx-hash", BACKENDS, 8000, Path("/tmp"))


def test_haproxy_config_caps_each_server_at_its_slots_and_queues() -> None:
    conf = haproxy_config(BACKENDS, 8000, queue_timeout=120)
    assert "balance leastconn" in conf
    assert "server sim-1 127.0.0.1:9001 maxconn 4" in conf
    assert "server sim-2 127.0.0.1:9002 maxconn 2" in conf
    assert "timeout queue 120s" in conf
    assert "bind 127.0.0.1:8000" in conf


def test_haproxy_config_opens_a_server_connection_per_request_and_logs_failures() -> None:
    # reusing llama-server's idle connections lost requests (inprocess/test_haproxy_reuse)
    conf = haproxy_config(BACKENDS, 8000, queue_timeout=120)
    assert "option http-server-close" in conf and "http-reuse" not in conf
    assert "log stdout" in conf and "option httplog" in conf


def test_usage_accounting_on_a_known_trace() -> None:
    usage = Usage(("a", "b"), (2, 2))
    usage.sample(busy=[2, 0], queued=[3, 0], dt=1.0)  # 3 wait in a; b has 2 free slots
    usage.sample(busy=[2, 2], queued=[1, 0], dt=1.0)  # 1 waits in a; no slot free anywhere
    report = usage.report()
    assert report["seconds"] == 2.0
    assert report["busy_share"] == {"a": 1.0, "b": 0.5}
    assert report["busy_share_spread"] == 0.5
    assert report["queued_in_servers"] == 2.0  # (3 + 1) request-seconds over 2 s
    assert report["misplaced"] == 1.0  # min(3, 2) in the first second, then none
    assert report["max_queue"] == 3


def test_usage_needs_one_slot_count_per_server() -> None:
    with pytest.raises(ValueError, match="one slot count per server"):
        Usage(("a", "b"), (2,))


def test_capacity_of_a_simulated_fleet() -> None:
    scale = Scale(4, 4, 50.0, 0.1, 32, 1024, (1.0,), 1.0)
    # all 4 slots busy: 50 / 1.3 tok/s each; 65 tokens take 1.69 s, 64 prompt tokens 0.032 s
    assert capacity(scale, 65.0, 64) == pytest.approx(16 / (0.032 + 65 / (50 / 1.3)))


def test_markdown_table() -> None:
    assert markdown_table(["a", "b"], [[1, 2]]) == "| a | b |\n| --- | ---: |\n| 1 | 2 |"


def test_the_sticky_oracle_hashes_the_session_header(tmp_path: Path) -> None:
    conf = nginx_config("nginx-sticky", BACKENDS, 8000, tmp_path)
    assert "hash $http_x_session_id consistent;" in conf


@pytest.mark.parametrize(
    ("name", "mode"),
    [("corral", None), ("corral-prefix", "prefix"), ("corral-slots", "slots"), ("haproxy", None)],
)
def test_a_corral_contender_names_its_routing_mode(name: str, mode: str | None) -> None:
    assert corral_routing(name) == mode
