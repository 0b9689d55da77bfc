"""Tenants and classes through the HTTP proxy: a key's class and the cap on what
``X-Corral-Priority`` may ask for, and a tenant over ``max_concurrent`` waiting
(docs/tenants.md)."""

from __future__ import annotations

import asyncio

from support.harness import Harness, mgmt, url

from corral.balancer import Balancer
from corral.config.keys import parse_keys

CHAT = "/v1/chat/completions"
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
KEYS = """
[[tenant]]
name = "nightly"
key = "sk-nightly"
class = "batch"
max_class = "interactive"

[[tenant]]
name = "chat"
key = "sk-chat"
max_concurrent = 1
"""


async def fleet(harness: Harness, **sim: object) -> Balancer:
    balancer = await harness.balancer(queue="priority", tenant_keys=tuple(parse_keys(KEYS)))
    _, port = await harness.sim(name="s", slots=4, **sim)
    await harness.agent(port, balancer, name="s")
    return balancer


async def metric(harness: Harness, balancer: Balancer, name: str, **labels: str) -> float:
    async with harness.http.get(mgmt(balancer, "/metrics")) as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def ask(harness: Harness, balancer: Balancer, key: str, priority: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    if priority is not None:
        headers["X-Corral-Priority"] = priority
    async with harness.http.post(url(balancer, CHAT), json=BODY, headers=headers) as r:
        await r.read()
        return r.status


async def test_the_header_asks_for_a_class_up_to_the_keys_cap(harness: Harness):
    balancer = await fleet(harness)
    assert await ask(harness, balancer, "sk-nightly") == 200  # its key's class: batch
    assert await ask(harness, balancer, "sk-nightly", "high") == 200  # capped: interactive
    assert await ask(harness, balancer, "sk-chat", "batch") == 200  # lower: always allowed
    assert await ask(harness, balancer, "sk-chat", "urgent!") == 200  # unknown: ignored
    total = "corral_tenant_requests_total"
    assert await metric(harness, balancer, total, tenant="nightly", priority="batch") == 1
    assert await metric(harness, balancer, total, tenant="nightly", priority="interactive") == 1
    assert await metric(harness, balancer, total, tenant="nightly", priority="high") == 0
    assert await metric(harness, balancer, total, tenant="chat", priority="batch") == 1
    assert await metric(harness, balancer, total, tenant="chat", priority="interactive") == 1


async def test_a_tenant_at_max_concurrent_waits_while_slots_are_free(harness: Harness):
    balancer = await fleet(harness, tokens_per_second=20.0)  # 8 tokens: about 0.4 s
    statuses = await asyncio.gather(*(ask(harness, balancer, "sk-chat") for _ in range(3)))
    assert statuses == [200, 200, 200]
    wait = "corral_tenant_buffer_wait_seconds"
    waited = await metric(harness, balancer, wait + "_sum", tenant="chat", priority="interactive")
    assert waited > 0.5  # one after another: the second waited one answer, the third two
    assert await ask(harness, balancer, "sk-nightly", "interactive") == 200
    other = await metric(harness, balancer, wait + "_sum", tenant="nightly")
    assert other < 0.1  # other tenants are not held up by chat's limit


async def test_a_tenant_past_its_share_of_the_buffer_is_told_so(harness: Harness):
    """The 429 said "all slots are busy and the request buffer is full" while slots
    were free: the tenant's own limits had held it."""
    keys = '[[tenant]]\nname = "chat"\nkey = "sk-chat"\nmax_concurrent = 1\nmax_buffered = 1\n'
    balancer = await harness.balancer(queue="priority", tenant_keys=tuple(parse_keys(keys)))
    _, port = await harness.sim(name="s", slots=4, tokens_per_second=20)
    await harness.agent(port, balancer, name="s")
    headers = {"Authorization": "Bearer sk-chat"}
    body = {**BODY, "max_tokens": 40}
    running = asyncio.create_task(
        harness.http.post(url(balancer, CHAT), json=body, headers=headers)
    )
    await asyncio.sleep(0.3)
    waiting = asyncio.create_task(
        harness.http.post(url(balancer, CHAT), json=body, headers=headers)
    )
    await eventually_buffered(balancer, 1)
    async with harness.http.post(url(balancer, CHAT), json=body, headers=headers) as r:
        assert r.status == 429
        message = (await r.json())["error"]["message"]
    assert "tenant 'chat' has 1 requests waiting, its share of the buffer (max_buffered" in message
    assert "all slots are busy" not in message
    for task in (running, waiting):
        (await task).release()


async def eventually_buffered(balancer: Balancer, n: int) -> None:
    from support.harness import eventually

    await eventually(lambda: len(balancer.buffer) == n, what=f"{n} buffered")
