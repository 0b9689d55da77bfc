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


def sample(balancer, name: str, **labels: str) -> float:
    value = balancer.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def engine_of(runner):
    from corral.sim.server import SIM_ENGINE

    return runner.app[SIM_ENGINE]


# ------------------------------------------------------------ no query of death
async def test_a_request_that_kills_its_server_takes_down_two_at_most(harness: Harness):
    balancer = await harness.balancer()
    engines = []
    for name in ("a", "b", "c"):
        runner, port = await harness.sim(name=name, crash_marker="KILL-ME")
        engines.append(engine_of(runner))
        await harness.agent(port, balancer, name=name)

    body = chat(text="please KILL-ME now")
    async with harness.http.post(url(balancer, CHAT), json=body) as r:
        answer = await r.json()
        assert r.status == 502, answer
    assert answer["error"]["type"] == "server_error"
    assert "two servers failed" in answer["error"]["message"]
    assert sum(e.crashed for e in engines) == 2  # one retry, never a third server
    assert sample(balancer, "corral_not_retried_total") == 1
    assert sample(balancer, "corral_retries_total") == 1
    # the third server still serves
    async with harness.http.post(url(balancer, CHAT), json=chat()) as r:
        assert r.status == 200


async def test_a_server_that_refuses_is_retried_on_others_safely(harness: Harness):
    balancer = await harness.balancer()
    runner, port = await harness.sim(name="a", slots=4)
    await harness.agent(port, balancer, name="a")
    _, other = await harness.sim(name="b", slots=1)
    await harness.agent(other, balancer, name="b")
    await runner.cleanup()  # a is gone before its agent notices: connection refused
    async with harness.http.post(url(balancer, CHAT), json=chat()) as r:
        assert r.status == 200
        assert r.headers["X-Sim-Server"] == "b"
    assert sample(balancer, "corral_upstream_failures_total", kind="connect") == 1


# ----------------------------------------------------------- hung and slow servers
async def test_requests_held_by_a_hung_server_complete_on_the_other(harness: Harness):
    balancer = await harness.balancer()
    runner_a, a = await harness.sim(name="a", slots=4, tokens_per_second=20)
    _, b = await harness.sim(name="b", slots=4, tokens_per_second=200)
    await harness.agent(a, balancer, name="a", read_timeout=0.3)
    await harness.agent(b, balancer, name="b", read_timeout=0.3)

    async def one() -> tuple[int, str]:
        async with harness.http.post(url(balancer, CHAT), json=chat(max_tokens=20)) as r:
            await r.read()
            return r.status, r.headers.get("X-Sim-Server", "-")

    loop = asyncio.get_running_loop()
    started = loop.time()
    requests = [asyncio.ensure_future(one()) for _ in range(8)]
    await eventually(
        lambda: any(x.name == "a" and x.reserved for x in balancer.fleet), what="a busy"
    )
    engine_of(runner_a).hang()  # kill -STOP
    try:
        results = await asyncio.wait_for(asyncio.gather(*requests), 10)
    finally:
        engine_of(runner_a).resume()
    assert [status for status, _ in results] == [200] * 8
    assert {server for _, server in results} == {"b"}  # a's were sent again, to b
    assert loop.time() - started < 5
    assert sample(balancer, "corral_upstream_failures_total", kind="lost") >= 1


async def _stream_cut(harness: Harness, balancer, agent_read_timeout: float) -> tuple[bytes, str]:
    runner, port = await harness.sim(name="a", slots=2, tokens_per_second=20)
    await harness.agent(port, balancer, name="a", read_timeout=agent_read_timeout)
    body = chat(max_tokens=200, stream=True)
    async with harness.http.post(url(balancer, CHAT), json=body) as r:
        assert r.status == 200
        first = await r.content.readany()
        assert first.startswith(b"data: ")
        engine_of(runner).hang()
        try:
            rest = await asyncio.wait_for(r.content.read(), 5)
        finally:
            engine_of(runner).resume()
    return rest, rest.decode(errors="replace")


async def test_a_stream_on_a_server_its_agent_finds_hung_ends_with_an_error_event(
    harness: Harness,
):
    balancer = await harness.balancer()
    _, text = await _stream_cut(harness, balancer, agent_read_timeout=0.3)
    assert '"error"' in text and "failed mid-response" in text
    assert sample(balancer, "corral_streams_cut_total", kind="lost") == 1


async def test_a_stream_that_goes_quiet_is_cut_by_the_idle_timeout(harness: Harness):
    balancer = await harness.balancer(upstream_idle_timeout=0.5)
    _, text = await _stream_cut(harness, balancer, agent_read_timeout=30)
    assert '"error"' in text and "upstream-idle-timeout" in text
    assert sample(balancer, "corral_streams_cut_total", kind="timeout") == 1


async def test_a_streamed_request_without_a_head_in_time_goes_to_another(harness: Harness):
    balancer = await harness.balancer(upstream_head_timeout=0.5)
    runner_a, a = await harness.sim(name="a", slots=4)
    _, b = await harness.sim(name="b", slots=1)
    await harness.agent(a, balancer, name="a", read_timeout=30)  # the agent sees nothing
    await harness.agent(b, balancer, name="b", read_timeout=30)
    engine_of(runner_a).hang()
    try:
        body = chat(stream=True)
        async with harness.http.post(url(balancer, CHAT), json=body) as r:
            assert r.status == 200
            assert r.headers["X-Sim-Server"] == "b"
            assert b"[DONE]" in await r.read()
    finally:
        engine_of(runner_a).resume()
    assert sample(balancer, "corral_upstream_failures_total", kind="timeout") == 1


async def test_a_long_non_streamed_generation_is_not_cut_by_any_head_timeout(
    harness: Harness,
):
    balancer = await harness.balancer(upstream_head_timeout=0.3, upstream_idle_timeout=0.3)
    _, port = await harness.sim(name="a", tokens_per_second=20)
    await harness.agent(port, balancer, name="a", read_timeout=0.3)
    async with harness.http.post(url(balancer, CHAT), json=chat(max_tokens=20)) as r:
        assert r.status == 200  # a second of silence: the server is busy, not hung
        assert (await r.json())["usage"]["completion_tokens"] == 20


# ------------------------------------------------------------------- slow-loris
async def test_a_client_sending_its_head_one_byte_at_a_time_gets_408(harness: Harness):
    balancer = await harness.balancer(request_head_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", balancer.inference_port)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def drip() -> None:
        for byte in head:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)

    dripping = asyncio.ensure_future(drip())
    try:
        answer = await asyncio.wait_for(reader.read(), 3)  # until the balancer closes
    finally:
        dripping.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert loop.time() - started < 2.5


# ------------------------------------------------------------ shutdown and restart
async def test_shutdown_drains_and_a_restarted_balancer_gets_its_fleet_back(harness: Harness):
    from corral.addr import Addr
    from corral.balancer import Balancer, BalancerConfig

    balancer = Balancer(
        BalancerConfig(
            inference_addr=Addr("127.0.0.1", 0),
            management_addr=Addr("127.0.0.1", 0),
            shutdown_timeout=5,
        )
    )
    await balancer.start()
    _, port = await harness.sim(name="a", slots=1, tokens_per_second=20)
    agent = await harness.agent(port, balancer, name="a", reconnect_max=0.5)
    running = asyncio.ensure_future(
        harness.http.post(url(balancer, CHAT), json=chat(max_tokens=20))
    )
    await eventually(lambda: balancer.fleet.totals()[1] == 1, what="the request running")
    buffered = asyncio.ensure_future(harness.http.post(url(balancer, CHAT), json=chat()))
    await eventually(lambda: len(balancer.buffer) == 1, what="a request buffered")
    inference, management = balancer.inference_port, balancer.management_port

    await balancer.stop()  # what SIGTERM and Ctrl-C run

    response = await buffered  # buffered: 503 with Retry-After at once
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert (await response.json())["error"]["type"] == "unavailable_error"
    response = await running  # in flight: finished
    assert response.status == 200
    assert (await response.json())["usage"]["completion_tokens"] == 20
    try:  # the listener is closed
        await asyncio.open_connection("127.0.0.1", inference)
        raise AssertionError("the inference listener still accepts connections")
    except OSError:
        pass
    link = f"http://127.0.0.1:{management}/api/v1/agent-socket"
    await eventually(lambda: agent.links.get(link) != "connected", what="the agent told")

    # the same addresses again: the agent comes back by itself
    restarted = Balancer(
        BalancerConfig(
            inference_addr=Addr("127.0.0.1", inference),
            management_addr=Addr("127.0.0.1", management),
        )
    )
    await restarted.start()
    try:
        await eventually(
            lambda: any(b.routable for b in restarted.fleet), within=5, what="fleet back"
        )
        async with harness.http.post(url(restarted, CHAT), json=chat()) as r:
            assert r.status == 200
    finally:
        await restarted.stop()


async def test_a_body_whose_strings_are_not_utf8_is_refused_with_400_not_500(harness: Harness):
    # found by the long fuzz run: msgspec raises UnicodeDecodeError, not DecodeError,
    # for a JSON string that is not UTF-8; the balancer answered 500 with a traceback
    balancer = await harness.balancer()
    _, port = await harness.sim(name="a")
    await harness.agent(port, balancer, name="a")
    headers = {"Content-Type": "application/json"}
    for body in (
        b'{"model": "\xff", "messages": [{"role": "user", "content": "hi"}]}',
        b'{"id_slot": "\xff\xfe", "messages": [{"role": "user", "content": "hi"}]}',
    ):
        async with harness.http.post(url(balancer, CHAT), data=body, headers=headers) as r:
            assert r.status == 400, await r.text()
            assert "UTF-8" in (await r.json())["error"]["message"]
    # the prompt's strings are read for routing only: a bad one leaves it to the server
    body = b'{"messages": [{"role": "\xff", "content": "hi"}]}'
    async with harness.http.post(url(balancer, CHAT), data=body, headers=headers) as r:
        assert r.status == 400, await r.text()  # the simulated server's own refusal
    async with harness.http.post(url(balancer, "/tokenize"), data=b'{"content": "\xff"}') as r:
        assert r.status == 400, await r.text()  # the fuzz run's input, relayed
