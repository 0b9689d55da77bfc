"""Reliability in process (issue #11): model identity, no query of death, hung
servers, slow clients, shutdown and restart."""

from __future__ import annotations

import asyncio

from support.harness import Harness, eventually, url

CHAT = "/v1/chat/completions"


def chat(max_tokens: int = 8, stream: bool = False, model: str | None = None, text: str = "hi"):
    body: dict = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    if model is not None:
        body["model"] = model
    return body


async def test_a_model_whose_server_died_is_never_answered_by_another(harness: Harness):
    balancer = await harness.balancer(buffered_request_timeout=0.5)
    _, small = await harness.sim(name="small", model="small")
    other_runner, other = await harness.sim(name="other", model="other")
    await harness.agent(small, balancer, name="small")
    other_agent = await harness.agent(other, balancer, name="other")
    async with harness.http.post(url(balancer, CHAT), json=chat(model="other")) as r:
        assert r.status == 200 and r.headers["X-Sim-Server"] == "other"

    await other_agent.stop()  # the server and its agent are gone
    await other_runner.cleanup()
    await eventually(lambda: len(balancer.fleet) == 1, what="the agent of other left")

    async with harness.http.post(url(balancer, CHAT), json=chat(model="other")) as r:
        body = await r.json()
        assert r.status == 503, body  # waited in the buffer for `other`, then gave up
        assert body["error"]["type"] == "unavailable_error"
        assert "Retry-After" in r.headers
    async with harness.http.post(url(balancer, CHAT), json=chat(model="small")) as r:
        assert r.status == 200 and r.headers["X-Sim-Server"] == "small"


async def test_a_request_for_a_returning_model_waits_and_is_served_by_it(harness: Harness):
    balancer = await harness.balancer(buffered_request_timeout=10)
    _, small = await harness.sim(name="small", model="small")
    _, other = await harness.sim(name="other", model="other")
    await harness.agent(small, balancer, name="small")
    other_agent = await harness.agent(other, balancer, name="other")
    await other_agent.stop()
    await eventually(lambda: len(balancer.fleet) == 1, what="the agent of other left")

    request = asyncio.ensure_future(
        harness.http.post(url(balancer, CHAT), json=chat(model="other"))
    )
    await eventually(lambda: len(balancer.buffer) == 1, what="the request buffered")
    await harness.agent(other, balancer, name="other")  # the agent comes back
    response = await request
    assert response.status == 200
    assert response.headers["X-Sim-Server"] == "other"
    response.release()
