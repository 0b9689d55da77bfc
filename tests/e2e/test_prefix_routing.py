"""Prefix routing on real llama-servers: a conversation's later turns go where its
history is cached (the server's own ``timings.cache_n`` grows), a turn sent with
``cache_prompt: false`` is predicted to reuse nothing and forgets nothing, a turn the
server refuses unread (past its context: 400) leaves the history where it was, and a
server restart that empties its cache is noticed (the balancer stops predicting a
cache there)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from support.procs import Fleet, agents, wait_until

from corral.llamacpp import bundled_model, llama_server_path
from corral.llamacpp.process import llama_server_command

pytestmark = pytest.mark.e2e

SYSTEM = "You are a librarian. Answer in one short sentence. The catalogue follows. " + " ".join(
    f"Book {i}: a history of the river towns, volume {i}." for i in range(40)
)


def turn(
    port: int, messages: list[dict[str, Any]], **fields: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    body = json.dumps({"messages": messages, "max_tokens": 4, "temperature": 0, **fields})
    body = body.encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        body,
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as r:
        return json.loads(r.read()), dict(r.headers)


def test_later_turns_reuse_the_cache_and_a_restart_is_noticed(fleet: Fleet):
    servers = {}
    for name in ("a", "b"):
        proc, port = fleet.llama_server(name, 2, 2048)
        servers[name] = (proc, port)
    _, inference, management = fleet.balancer("balancer", "--routing", "prefix")
    for name, (_, port) in servers.items():
        fleet.agent(name, port, management)
    wait_until(lambda: len(agents(management)) == 2, 30, "two agents")

    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    seen = []
    for i in range(4):
        messages.append({"role": "user", "content": f"Which volume is number {i + 1}?"})
        answer, headers = turn(inference, messages)
        seen.append(
            (
                headers["X-Corral-Server"],
                answer["timings"]["cache_n"],
                int(headers["X-Corral-Predicted-Cached-Tokens"]),
            )
        )
        reply = answer["choices"][0]["message"]["content"]
        messages.append({"role": "assistant", "content": reply})
    holder = seen[0][0]
    assert [s[0] for s in seen] == [holder] * 4, seen  # every turn on one server
    cached = [s[1] for s in seen]
    assert cached[0] < 50 and all(c > 400 for c in cached[1:]), seen  # the history is reused
    assert all(s[2] > 200 for s in seen[1:]), seen  # and the balancer expected it

    # Restart the holder on the same port: its cache is empty now.
    proc, port = servers[holder]
    proc.kill9()
    command = llama_server_command(
        llama_server_path(), bundled_model(), port=port, slots=2, ctx_size=2048, threads=1
    )
    fleet._start(f"{holder}-again", command)
    wait_until(
        lambda: (
            agents(management)[holder]["state"] == "ready"
            if holder in agents(management)
            else False
        ),
        120,
        "the holder back",
    )
    messages.append({"role": "user", "content": "And the last volume?"})
    answer, headers = turn(inference, messages)
    assert int(headers["X-Corral-Predicted-Cached-Tokens"]) == 0, headers  # noticed
    assert answer["timings"]["cache_n"] < 50

    # A turn that asks for no cache reuse: the server reuses nothing (cache_n 0), the
    # balancer expects nothing (it routes by load), and the next turn still finds the
    # history, where it was or where that turn went (which now holds more of it)
    for cache_prompt in (False, True):
        messages.append({"role": "user", "content": "And the one after?"})
        answer, headers = turn(inference, messages, cache_prompt=cache_prompt)
        predicted = int(headers["X-Corral-Predicted-Cached-Tokens"])
        if cache_prompt:
            assert predicted > 200 and answer["timings"]["cache_n"] > 400, (headers, answer)
        else:
            assert predicted == 0 and answer["timings"]["cache_n"] == 0, answer["timings"]
        reply = answer["choices"][0]["message"]["content"]
        messages.append({"role": "assistant", "content": reply})

    # A turn past the slot's context (1,024 tokens each): llama-server refuses it before
    # reading it (400), the balancer passes that on and releases the slot unsent, and
    # the next turn still finds the history and is expected to
    too_long = [*messages, {"role": "user", "content": "Describe every book. " * 800}]
    with pytest.raises(urllib.error.HTTPError) as refused:
        turn(inference, too_long)
    assert refused.value.code == 400
    assert "exceeds the available context size" in refused.value.read().decode()
    messages.append({"role": "user", "content": "And the one before?"})
    answer, headers = turn(inference, messages)
    assert int(headers["X-Corral-Predicted-Cached-Tokens"]) > 200, headers
    assert answer["timings"]["cache_n"] > 400, answer["timings"]
