"""High availability on real processes (issue #11, docs/ha.md): two balancers, two
llama-servers of two slots, every agent reporting to both, HAProxy in front.

The servers' own ``llamacpp:requests_deferred`` (read from their /metrics while the
load runs) proves the balancers together never send a server more requests than it
has slots; a balancer killed under load loses no request that had not started (the
front retries it on the other), the other gets every slot, and a restarted one gets
the fleet back within seconds."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.procs import Fleet, agents, get_json, wait_until

from corral.llamacpp.process import free_port

pytestmark = pytest.mark.e2e

DEFERRED = re.compile(rb"^llamacpp:requests_deferred\s+(\S+)", re.M)


def chat(port: int, max_tokens: int = 12) -> int:
    """One non-streamed chat request through ``port``; its status (0: no answer)."""
    body = {
        "messages": [{"role": "user", "content": "Tell me a story about a cat."}],
        "max_tokens": max_tokens,
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class DeferredWatch:
    """Samples ``llamacpp:requests_deferred`` of each server until stopped."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.peak = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for port in self.ports:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                        found = DEFERRED.search(r.read())
                except OSError:
                    continue
                assert found, "llama-server's /metrics has no requests_deferred"
                self.peak = max(self.peak, float(found.group(1)))
                self.samples += 1
            self._stop.wait(0.02)

    def __enter__(self) -> DeferredWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def shares(management: int) -> dict[str, tuple[str, int | None]]:
    return {n: (a["state"], a["slots_share"]) for n, a in agents(management).items()}


def haproxy_config(front: int, balancers: list[int]) -> str:
    servers = "\n".join(
        f"  server b{i} 127.0.0.1:{port} check inter 200ms fall 1 rise 2"
        for i, port in enumerate(balancers)
    )
    return f"""\
global
  maxconn 256
defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response
  option http-buffer-request
frontend inference
  bind 127.0.0.1:{front}
  default_backend balancers
backend balancers
  balance roundrobin
{servers}
"""


def test_two_balancers_share_real_servers_and_survive_a_kill(fleet: Fleet):
    _, a = fleet.llama_server("a", 2, 1024, "--metrics")
    _, b = fleet.llama_server("b", 2, 1024, "--metrics")
    _, in1, m1 = fleet.balancer("first")
    second, in2, m2 = fleet.balancer("second")
    for name, port in (("a", a), ("b", b)):
        fleet.agent(name, port, m1, "--management-addr", f"127.0.0.1:{m2}")
    one_each = {"a": ("ready", 1), "b": ("ready", 1)}
    wait_until(lambda: shares(m1) == shares(m2) == one_each, 15, "one slot each")

    # 16 concurrent requests split between the balancers: no server ever queues one
    with DeferredWatch([a, b]) as watch, ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(chat, [(in1, in2)[i % 2] for i in range(16)]))
    assert statuses == [200] * 16
    assert watch.samples > 10 and watch.peak == 0, (watch.samples, watch.peak)

    # HAProxy in front; one balancer killed while it holds requests
    front = free_port()
    fleet.haproxy(haproxy_config(front, [in1, in2]))
    wait_until(lambda: chat(front, 1) == 200, 10, "haproxy up")
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(chat, front, 24) for _ in range(12)]
        wait_until(lambda: sum(x["reserved"] for x in agents(m2).values()) > 0, 20, "load")
        second.kill9()
        killed_at = time.monotonic()
        # the survivor gets every slot of every server
        wait_until(lambda: shares(m1) == {"a": ("ready", 2), "b": ("ready", 2)}, 5, "all")
        alone = time.monotonic() - killed_at
        statuses = [f.result(timeout=60) for f in futures]
    # none had started (non-streamed answers start when done): HAProxy retried them
    assert statuses == [200] * 12, statuses
    assert alone < 3, alone
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(chat, [in1] * 4)) == [200] * 4  # the survivor serves

    # restarted on the same ports: the fleet comes back as the agents reconnect
    restarted_at = time.monotonic()
    fleet.balancer("second", ports=(in2, m2))
    wait_until(lambda: shares(m2) == one_each, 15, "the fleet back on the restarted one")
    back = time.monotonic() - restarted_at
    assert back < 10, back
    wait_until(lambda: shares(m1) == one_each, 3, "the survivor gives a slot back")
    assert chat(in2) == 200
    assert get_json(f"http://127.0.0.1:{m2}/health")[0] == 200
