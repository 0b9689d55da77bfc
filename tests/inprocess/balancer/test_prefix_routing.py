"""Prefix routing through the balancer, with simulated servers and real agents: a
conversation's turns stay on one server, the header and the metrics say what was
predicted and measured, and the log line says why."""

from __future__ import annotations

import logging

import pytest
from support.harness import Harness, mgmt, url

CHAT = "/v1/chat/completions"
SYSTEM = "You answer questions about the long document below. " + "Lorem ipsum dolor. " * 300


async def test_a_conversation_stays_where_its_prefix_is(
    harness: Harness, caplog: pytest.LogCaptureFixture
):
    balancer = await harness.balancer(routing="prefix")
    for name in ("a", "b"):
        _, port = await harness.sim(name=name, slots=2, tokens_per_second=500)
        await harness.agent(port, balancer, name=name)

    messages = [{"role": "system", "content": SYSTEM}]
    served, predicted = [], []
    caplog.set_level(logging.INFO, "corral.access")
    for turn in range(4):
        messages.append({"role": "user", "content": f"question {turn}?"})
        body = {"messages": messages, "max_tokens": 4}
        async with harness.http.post(url(balancer, CHAT), json=body) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
            served.append(r.headers["X-Sim-Server"])
            predicted.append(int(r.headers["X-Corral-Predicted-Cached-Tokens"]))
        messages.append(answer["choices"][0]["message"])

    assert len(set(served)) == 1, served  # every turn where the first one went
    assert predicted[0] == 0 and all(p > 500 for p in predicted[1:]), predicted
    routes = [r.fields["route"] for r in caplog.records if hasattr(r, "fields")]
    assert routes[0] == "slots" and routes[-1] == "prefix", routes
    assert "route=prefix" in caplog.records[-1].getMessage()
    last = caplog.records[-1].fields  # type: ignore[attr-defined]
    assert last["predicted_cached"] == predicted[-1] and 0 < last["cache_n"] < last["prompt_tokens"]
    cached = f"cached={last['cache_n']}/{last['prompt_tokens']}~{predicted[-1]} "
    assert cached in caplog.records[-1].getMessage()

    async with harness.http.get(mgmt(balancer, "/metrics")) as r:
        text = await r.text()
    line = next(
        x for x in text.splitlines() if x.startswith("corral_cached_prompt_tokens_predicted_total")
    )
    assert float(line.split()[-1]) == sum(predicted)
    assert f'corral_agent_timed_prompt_tokens_total{{agent="{served[0]}"}}' in text


async def test_slot_routing_predicts_nothing_and_measures_the_caches(harness: Harness, caplog):
    """Slot routing reads no prompt, so it predicts nothing (no header, no ``~``), but
    the servers' reuse is measured under it too: the cache counters stayed at 0, so an
    operator had no hit rate to compare before turning prefix routing on."""
    balancer = await harness.balancer()
    _, port = await harness.sim(name="a", slots=2, tokens_per_second=500)
    await harness.agent(port, balancer, name="a")
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
    caplog.set_level(logging.INFO, "corral.access")
    for _ in range(2):  # the second turn finds the first's prompt in the server's slot
        async with harness.http.post(url(balancer, CHAT), json={"messages": messages,
                                                                "max_tokens": 2}) as r:  # fmt: skip
            assert r.status == 200
            assert "X-Corral-Predicted-Cached-Tokens" not in r.headers
            answer = await r.json()
        messages += [answer["choices"][0]["message"], {"role": "user", "content": "more"}]
    line = caplog.records[-1]
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["predicted_cached"] is None and 0 < fields["cache_n"] < fields["prompt_tokens"]
    assert f" cached={fields['cache_n']}/{fields['prompt_tokens']} " in line.getMessage()
    async with harness.http.get(mgmt(balancer, "/metrics")) as r:
        text = await r.text()
    values = {
        x.split()[0]: float(x.split()[-1]) for x in text.splitlines() if x.startswith("corral_")
    }
    assert values["corral_cached_prompt_tokens_total"] >= fields["cache_n"] > 0
    assert values["corral_timed_prompt_tokens_total"] > values["corral_cached_prompt_tokens_total"]
    assert values["corral_cached_prompt_tokens_predicted_total"] == 0
    assert 'corral_agent_cached_prompt_tokens_predicted_total{agent="a"}' not in text


async def test_a_turn_sent_with_cache_prompt_false_forgets_nothing(harness: Harness):
    # llama-server reuses nothing for it (cache_n 0), and holds it afterwards: the
    # prediction is 0, and the next turn is still predicted where the conversation is
    balancer = await harness.balancer(routing="prefix")
    for name in ("a", "b"):
        _, port = await harness.sim(name=name, slots=2, tokens_per_second=500)
        await harness.agent(port, balancer, name=name)
    messages = [{"role": "system", "content": SYSTEM}]
    seen = []
    for turn, cache_prompt in enumerate([True, True, False, True]):
        messages.append({"role": "user", "content": f"question {turn}?"})
        body = {"messages": messages, "max_tokens": 4, "cache_prompt": cache_prompt}
        async with harness.http.post(url(balancer, CHAT), json=body) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
            predicted = int(r.headers["X-Corral-Predicted-Cached-Tokens"])
            seen.append((predicted, answer["timings"]["cache_n"]))
        messages.append(answer["choices"][0]["message"])
    assert seen[2] == (0, 0), seen  # predicted and reused nothing
    assert seen[3][0] > 500 and seen[3][1] > 500, seen  # the history is still known
