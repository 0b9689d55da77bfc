"""Metrics and request logs, read as Prometheus and an operator would."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client.parser import text_string_to_metric_families
from support.harness import Harness, eventually, mgmt, url

CHAT = "/v1/chat/completions"


async def scrape(harness: Harness, balancer) -> dict[tuple[str, tuple], float]:
    async with harness.http.get(mgmt(balancer, "/metrics")) as r:
        assert r.status == 200
        text = await r.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_request_token_and_fleet_metrics(harness: Harness):
    balancer = await harness.balancer()
    _, port = await harness.sim(name="s", slots=4, model="gemma")
    await harness.agent(port, balancer, name="s")
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    generated = 0
    async with harness.http.post(url(balancer, CHAT), json=body) as r:
        generated += (await r.json())["usage"]["completion_tokens"]
        # who answered, and how long the request waited in the buffer (none here)
        assert r.headers["X-Corral-Server"] == "s"
        assert float(r.headers["X-Corral-Buffer-Wait"]) == 0.0
    stream = body | {"stream": True, "stream_options": {"include_usage": True}}
    async with harness.http.post(url(balancer, CHAT), json=stream) as r:
        await r.read()
    generated += 5
    samples = await scrape(harness, balancer)
    key = (("endpoint", CHAT), ("model", "gemma"), ("status", "200"))  # what served it
    assert samples[("corral_requests_total", key)] == 2
    assert samples[("corral_generated_tokens_total", (("model", "gemma"),))] == generated
    assert samples[("corral_prompt_tokens_total", (("model", "gemma"),))] > 0
    assert samples[("corral_slots", (("kind", "total"),))] == 4
    assert samples[("corral_slots", (("kind", "idle"),))] == 4
    assert samples[("corral_agents", (("state", "ready"),))] == 1
    assert samples[("corral_buffered_requests", ())] == 0
    assert samples[("corral_request_duration_seconds_count", (("endpoint", CHAT),))] == 2
    assert samples[("corral_time_to_first_byte_seconds_count", (("endpoint", CHAT),))] == 2
    assert samples[("corral_pick_seconds_count", ())] == 2  # one routing decision each
    assert 0 < samples[("corral_pick_seconds_sum", ())] < 0.1


async def test_labels_never_come_from_client_input(harness: Harness):
    # a one-model fleet accepts any model name; made-up names must not become labels
    balancer = await harness.balancer()
    _, port = await harness.sim(name="s", slots=4, model="gemma")
    await harness.agent(port, balancer, name="s")
    for i in range(5):
        body = {"model": f"made-up-{i}", "prompt": "hi", "n_predict": 2}
        async with harness.http.post(url(balancer, "/completion"), json=body) as r:
            assert r.status == 200
    samples = await scrape(harness, balancer)
    models = {dict(labels).get("model") for (name, labels) in samples if "model" in dict(labels)}
    assert not any(m and m.startswith("made-up") for m in models), models
    key = (("endpoint", "/completion"), ("model", "gemma"), ("status", "200"))
    assert samples[("corral_requests_total", key)] == 5


async def test_buffer_rejections_and_buffered_gauge(harness: Harness):
    balancer = await harness.balancer(max_buffered_requests=1, buffered_request_timeout=0.3)
    body = {"prompt": "x"}
    waiting = asyncio.create_task(harness.http.post(url(balancer, "/completion"), json=body))
    await eventually(lambda: len(balancer.buffer) == 1)
    assert (await scrape(harness, balancer))[("corral_buffered_requests", ())] == 1
    async with harness.http.post(url(balancer, "/completion"), json=body) as r:
        assert r.status == 429
    (await waiting).release()
    samples = await scrape(harness, balancer)
    assert samples[("corral_buffer_rejections_total", (("reason", "full"),))] == 1
    assert samples[("corral_buffer_rejections_total", (("reason", "timeout"),))] == 1


async def test_a_request_that_timed_out_in_the_buffer_counts_its_wait(harness: Harness, caplog):
    """It was logged and counted as ``wait=0.000s``: its wait went unseen exactly when
    the buffer failed it."""
    balancer = await harness.balancer(buffered_request_timeout=0.3)
    with caplog.at_level(logging.INFO, logger="corral.access"):
        async with harness.http.post(url(balancer, "/completion"), json={"prompt": "x"}) as r:
            assert r.status == 503
            # no server at all: none was ready, rather than "no slot became free"
            assert "no server was ready within 0.3s" in (await r.json())["error"]["message"]
    samples = await scrape(harness, balancer)
    assert samples[("corral_buffer_wait_seconds_count", ())] == 1
    assert samples[("corral_buffer_wait_seconds_sum", ())] >= 0.3
    tenant = (("priority", "interactive"), ("tenant", "default"))
    assert samples[("corral_tenant_buffer_wait_seconds_sum", tenant)] >= 0.3
    line = next(r.getMessage() for r in caplog.records if " 503 " in r.getMessage())
    waited = float(line.split(" wait=")[1].split("s")[0])
    assert waited >= 0.3, line


async def test_request_id_is_honoured_passed_on_and_logged(harness: Harness, caplog):
    balancer = await harness.balancer()
    _, port = await harness.sim(name="s")
    await harness.agent(port, balancer, name="s")
    caplog.set_level(logging.INFO, logger="corral.access")
    headers = {"X-Request-Id": "req-42"}
    async with harness.http.post(
        url(balancer, "/completion"), json={"prompt": "x"}, headers=headers
    ) as r:
        assert r.headers["X-Request-Id"] == "req-42"
    async with harness.http.post(url(balancer, "/completion"), json={"prompt": "x"}) as r:
        made = r.headers["X-Request-Id"]
        assert len(made) == 32
    lines = [rec for rec in caplog.records if rec.name == "corral.access"]
    assert lines[0].fields["request_id"] == "req-42"
    assert lines[0].fields["agent"] == "s" and lines[0].fields["status"] == 200
    assert "req-42 POST /completion 200 model=- agent=s" in lines[0].getMessage()
    assert lines[1].fields["request_id"] == made


async def test_tokens_per_second_follows_long_streams_while_they_generate(harness: Harness):
    # four long streams on a slow server: the counters move before any request ends
    balancer = await harness.balancer()
    _, port = await harness.sim(name="s", slots=4, model="gemma", tokens_per_second=40)
    await harness.agent(port, balancer, name="s")
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 400,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    bodies = [harness.http.post(url(balancer, CHAT), json=body) for _ in range(4)]
    streams = await asyncio.gather(*(b.__aenter__() for b in bodies))
    try:
        generated = ("corral_generated_tokens_total", (("model", "gemma"),))
        per_agent = ("corral_agent_generated_tokens_total", (("agent", "s"), ("model", "gemma")))
        first = await scrape(harness, balancer)
        await asyncio.sleep(1.0)
        second = await scrape(harness, balancer)
        assert second[generated] - first.get(generated, 0) > 20, "tokens/s reads 0 mid-stream"
        assert second[per_agent] == second[generated]
        answered = (("endpoint", CHAT), ("model", "gemma"), ("status", "200"))
        assert ("corral_requests_total", answered) not in second  # none has ended
    finally:
        for response in streams:
            response.close()


async def test_time_to_first_token_counts_while_the_stream_runs(harness: Harness):
    # the TTFT chart follows live traffic: a stream's first token is observed when it
    # is relayed, not when the stream ends
    balancer = await harness.balancer()
    _, port = await harness.sim(name="s", slots=1, model="gemma", tokens_per_second=20)
    await harness.agent(port, balancer, name="s")
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40, "stream": True}
    ttft = ("corral_time_to_first_byte_seconds_count", (("endpoint", CHAT),))
    answered = ("corral_request_duration_seconds_count", (("endpoint", CHAT),))
    async with harness.http.post(url(balancer, CHAT), json=body) as r:
        await r.content.readline()  # the first event has arrived; ~2 s of stream to go
        samples = await scrape(harness, balancer)
        assert samples[ttft] == 1
        assert samples.get(answered, 0) == 0  # the stream has not ended
        await r.read()
    samples = await scrape(harness, balancer)
    assert samples[ttft] == 1  # counted once
    assert samples[answered] == 1
