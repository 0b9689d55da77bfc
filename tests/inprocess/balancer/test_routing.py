"""The balancer in process, with simulated llama-servers and real agents."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter

from support.harness import Harness, eventually, mgmt, url

CHAT = "/v1/chat/completions"


def chat(max_tokens: int = 8, stream: bool = False, model: str | None = None) -> dict:
    body: dict = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    if model is not None:
        body["model"] = model
    return body


async def test_requests_spread_by_free_slots(harness: Harness):
    balancer = await harness.balancer()
    _, big = await harness.sim(name="big", slots=4, tokens_per_second=40)
    _, small = await harness.sim(name="small", slots=2, tokens_per_second=40)
    await harness.agent(big, balancer, name="big")
    await harness.agent(small, balancer, name="small")

    async def one() -> str:
        async with harness.http.post(url(balancer, CHAT), json=chat(max_tokens=10)) as r:
            assert r.status == 200, await r.text()
            await r.json()
            return r.headers["X-Sim-Server"]

    served = Counter(await asyncio.gather(*(one() for _ in range(6))))
    assert served == {"big": 4, "small": 2}


async def test_more_requests_than_slots_all_succeed_and_no_server_is_overloaded(
    harness: Harness,
):
    balancer = await harness.balancer()
    ports = []
    for name in ("a", "b"):
        _, port = await harness.sim(name=name, slots=2, tokens_per_second=200)
        ports.append(port)
        await harness.agent(port, balancer, name=name)

    peak = {"a": 0, "b": 0}

    async def watch() -> None:
        while True:
            for agent in balancer.fleet:
                assert agent.reserved <= agent.slots_total, repr(agent)
                peak[agent.name] = max(peak[agent.name], agent.reserved)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())

    async def one(i: int) -> int:
        async with harness.http.post(url(balancer, CHAT), json=chat(max_tokens=5)) as r:
            await r.read()
            return r.status

    statuses = await asyncio.gather(*(one(i) for i in range(20)))
    watcher.cancel()
    assert statuses == [200] * 20
    assert peak == {"a": 2, "b": 2}
    # the servers themselves agree: never more in flight than slots
    for port in ports:
        async with harness.http.get(f"http://127.0.0.1:{port}/slots") as r:
            assert len(await r.json()) == 2


async def test_scale_from_zero_buffered_request_goes_to_the_first_server(harness: Harness):
    balancer = await harness.balancer()
    request = asyncio.create_task(harness.http.post(url(balancer, CHAT), json=chat()))
    await eventually(lambda: len(balancer.buffer) == 1, what="request buffered")
    async with harness.http.get(mgmt(balancer, "/api/v1/buffered-requests")) as r:
        listing = await r.json()
    assert listing["buffered_requests"] == 1
    # batch-class requests wait their own, longer, timeout: both are shown
    assert (listing["timeout_s"], listing["batch_timeout_s"]) == (
        balancer.buffer.timeout,
        balancer.buffer.batch_timeout,
    )
    _, port = await harness.sim(name="late")
    await harness.agent(port, balancer, name="late")
    response = await asyncio.wait_for(request, 5)
    assert response.status == 200
    assert response.headers["X-Sim-Server"] == "late"
    response.release()


async def test_buffer_full_is_429_and_timeout_is_503_with_retry_after(harness: Harness):
    balancer = await harness.balancer(max_buffered_requests=1, buffered_request_timeout=0.3)
    waiting = asyncio.create_task(harness.http.post(url(balancer, CHAT), json=chat()))
    await eventually(lambda: len(balancer.buffer) == 1)
    async with harness.http.post(url(balancer, CHAT), json=chat()) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "1"
        body = await r.json()
        assert body["error"]["type"] == "rate_limit_error"
        assert (
            "cannot wait: 1 requests are already waiting, the buffer's limit"
            in (body["error"]["message"])
        )
    response = await waiting
    assert response.status == 503
    assert "Retry-After" in response.headers
    # no server at all: none was ready (with one, "no slot became free": test_prefix_wait)
    assert "no server was ready within" in (await response.json())["error"]["message"]


async def test_a_batch_request_that_waits_too_long_is_told_its_own_limit(harness: Harness):
    """A batch-class request waits --batch-request-timeout, not --buffered-request-
    timeout: its 503 named the other flag and asked it to retry after the other's time."""
    balancer = await harness.balancer(buffered_request_timeout=30, batch_request_timeout=0.3)
    headers = {"X-Corral-Priority": "batch"}
    async with harness.http.post(url(balancer, CHAT), json=chat(), headers=headers) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "1"  # 0.3 s, rounded up to whole seconds
        message = (await r.json())["error"]["message"]
    assert "within 0.3s (--batch-request-timeout)" in message


async def test_unknown_model_is_404_listing_models(harness: Harness):
    balancer = await harness.balancer()
    for name, model in (("a", "gemma"), ("b", "qwen")):
        _, port = await harness.sim(name=name, model=model)
        await harness.agent(port, balancer, name=name)
    async with harness.http.post(url(balancer, CHAT), json=chat(model="llama")) as r:
        assert r.status == 404
        error = (await r.json())["error"]
        assert error["available_models"] == ["gemma", "qwen"]
        assert "llama" in error["message"]
    async with harness.http.post(url(balancer, CHAT), json=chat(model="qwen")) as r:
        assert r.status == 200 and r.headers["X-Sim-Server"] == "b"
    async with harness.http.get(url(balancer, "/v1/models")) as r:
        assert [m["id"] for m in (await r.json())["data"]] == ["gemma", "qwen"]


async def test_dead_server_is_retried_elsewhere_and_set_aside(harness: Harness):
    balancer = await harness.balancer()
    _, good = await harness.sim(name="good", slots=1)
    _, also_good = await harness.sim(name="trap", slots=8)
    await harness.agent(good, balancer, name="good")
    # This agent reads a healthy server but tells the balancer an address where
    # nothing listens: every request sent there is refused.
    from corral.addr import Addr
    from corral.llamacpp.process import free_port

    await harness.agent(
        also_good,
        balancer,
        name="trap",
        external_llamacpp_addr=Addr("127.0.0.1", free_port()),
    )
    async with harness.http.post(url(balancer, CHAT), json=chat()) as r:
        assert r.status == 200  # the client never saw the failure
        assert r.headers["X-Sim-Server"] == "good"
    trap = next(a for a in balancer.fleet if a.name == "trap")
    assert trap.failures >= 1


async def test_streams_are_relayed_chunk_by_chunk(harness: Harness):
    balancer = await harness.balancer()
    _, port = await harness.sim(name="s", tokens_per_second=20)
    await harness.agent(port, balancer, name="s")
    loop = asyncio.get_running_loop()
    arrivals = []
    async with harness.http.post(url(balancer, CHAT), json=chat(max_tokens=6, stream=True)) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        async for line in r.content:
            if line.startswith(b"data: "):
                arrivals.append(loop.time())
                last = line
    assert last.strip() == b"data: [DONE]"
    # chunks arrived spread over the generation (20 tokens/s), not all at the end
    assert arrivals[-1] - arrivals[0] > 0.15


async def test_request_body_passes_through_byte_for_byte(harness: Harness):
    balancer = await harness.balancer()
    _, port = await harness.sim(name="s")
    await harness.agent(port, balancer, name="s")
    body = b'{"content": "h\\u00e9llo  \\n", "add_special": false}'
    async with harness.http.post(url(balancer, "/tokenize"), data=body) as via_balancer:
        direct = await harness.http.post(f"http://127.0.0.1:{port}/tokenize", data=body)
        assert await via_balancer.read() == await direct.read()
        direct.release()


async def test_client_disconnect_frees_the_slot_at_once(harness: Harness):
    balancer = await harness.balancer()
    _, port = await harness.sim(name="s", slots=1, tokens_per_second=5)
    await harness.agent(port, balancer, name="s")
    response = await harness.http.post(url(balancer, CHAT), json=chat(max_tokens=50, stream=True))
    await response.content.readline()
    agent = next(iter(balancer.fleet))
    assert agent.reserved == 1
    response.close()  # the client hangs up mid-stream
    await eventually(lambda: agent.reserved == 0, within=2, what="slot freed")

    # and the server's slot is free too
    async def server_idle() -> bool:
        async with harness.http.get(f"http://127.0.0.1:{port}/slots") as r:
            return not any(s["is_processing"] for s in await r.json())

    await eventually(server_idle, within=2, what="server slot freed")


async def test_client_giving_up_on_a_whole_answer_closes_the_upstream_connection(
    harness: Harness,
):
    # Not streamed: nothing reaches the client until the end, so only the closed
    # upstream connection tells the server to stop (llama-server checks its socket).
    balancer = await harness.balancer()
    _, port = await harness.sim(name="s", slots=1, tokens_per_second=5)
    await harness.agent(port, balancer, name="s")
    agent = next(iter(balancer.fleet))

    async def server_busy() -> int:
        async with harness.http.get(f"http://127.0.0.1:{port}/slots") as r:
            return sum(s["is_processing"] for s in await r.json())

    request = asyncio.ensure_future(
        harness.http.post(url(balancer, CHAT), json=chat(max_tokens=50, stream=False))
    )
    await eventually(server_busy, within=2, what="the server generating")
    assert agent.reserved == 1
    request.cancel()  # the client hangs up before any byte of the answer
    with contextlib.suppress(asyncio.CancelledError):
        await request
    await eventually(lambda: agent.reserved == 0, within=1, what="slot freed")

    async def server_idle() -> bool:
        return await server_busy() == 0

    await eventually(server_idle, within=1, what="server slot freed")


async def test_server_dying_mid_stream_ends_with_an_error_event(harness: Harness):
    balancer = await harness.balancer()
    runner, port = await harness.sim(name="s", tokens_per_second=10)
    await harness.agent(port, balancer, name="s")
    async with harness.http.post(url(balancer, CHAT), json=chat(max_tokens=50, stream=True)) as r:
        await r.content.readline()
        await runner.cleanup()  # the server goes away mid-response
        rest = await r.content.read()
    events = [line for line in rest.split(b"\n") if line.startswith(b"data: ")]
    error = json.loads(events[-1][6:])
    assert error["error"]["code"] == 502
    assert "failed mid-response" in error["error"]["message"]
