"""LoRA adapters through the balancer, with simulated servers and real agents: each
adapter is a model in /v1/models, a request naming one reaches a server that has it
with the ``lora`` field set to that server's id for it, and base requests stay as
they were."""

from __future__ import annotations

import asyncio
from collections import Counter

from support.harness import Harness, eventually, mgmt, url

CHAT = "/v1/chat/completions"


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def test_adapters_are_models_and_requests_for_them_reach_a_server_that_has_them(
    harness: Harness,
):
    balancer = await harness.balancer()
    # the same adapter under different ids on the two servers
    _, a = await harness.sim(name="a", slots=2, model="gemma", lora=("/m/sql.gguf",))
    _, b = await harness.sim(name="b", slots=2, model="gemma", lora=("/m/poem.gguf", "/m/sql.gguf"))
    _, c = await harness.sim(name="c", slots=4, model="gemma")
    for name, port in (("a", a), ("b", b), ("c", c)):
        await harness.agent(port, balancer, name=name)
    await eventually(lambda: balancer.fleet.adapters().keys() == {"poem", "sql"})

    async with harness.http.get(url(balancer, "/v1/models")) as r:
        listed = {m["id"]: m for m in (await r.json())["data"]}
    assert listed["sql"]["parent"] == "gemma" and listed["poem"]["parent"] == "gemma"
    assert listed["sql"]["corral"]["agents"] == 2
    async with harness.http.get(mgmt(balancer, "/api/v1/agents")) as r:
        agents = {x["name"]: x for x in (await r.json())["agents"]}
    assert [x["name"] for x in agents["b"]["adapters"]] == ["poem", "sql"]

    async def one(model: str) -> tuple[str, str]:
        async with harness.http.post(url(balancer, CHAT), json=chat(model)) as r:
            assert r.status == 200, await r.text()
            await r.json()
            return r.headers["X-Sim-Server"], r.headers.get("X-Sim-Lora", "")

    sql = Counter(await asyncio.gather(*(one("sql") for _ in range(8))))
    assert set(sql) <= {("a", "/m/sql.gguf"), ("b", "/m/sql.gguf")}, sql
    assert await one("poem") == ("b", "/m/poem.gguf")
    base = Counter(await asyncio.gather(*(one("gemma") for _ in range(4))))
    assert all(lora == "" for _, lora in base), base  # base requests are not rewritten


async def test_a_request_for_an_adapter_waits_for_a_server_that_has_it(harness: Harness):
    balancer = await harness.balancer(buffered_request_timeout=0.5)
    _, a = await harness.sim(name="a", slots=1, model="gemma", lora=("/m/sql.gguf",))
    _, c = await harness.sim(name="c", slots=4, model="gemma")
    agent = await harness.agent(a, balancer, name="a")
    await harness.agent(c, balancer, name="c")
    await eventually(lambda: "sql" in balancer.fleet.adapters())
    await agent.stop()
    await eventually(lambda: "sql" not in balancer.fleet.adapters())
    async with harness.http.post(url(balancer, CHAT), json=chat("sql")) as r:
        assert r.status == 503, await r.text()  # waited, never sent to the base model
