"""Bad input, access control, the fleet endpoints and the management API."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from support.harness import Harness, eventually, mgmt, url

from corral.addr import Addr
from corral.protocol import PROTOCOL_VERSION, Register, ServerStatus, encode

CHAT = "/v1/chat/completions"
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def error_of(response: aiohttp.ClientResponse) -> dict:
    assert response.content_type == "application/json"
    return (await response.json())["error"]


async def test_bad_bodies_and_routes_get_clear_json_errors(harness: Harness):
    balancer = await harness.balancer(max_body_size=1000)
    http = harness.http
    async with http.post(url(balancer, CHAT), data=b"{oops") as r:
        assert r.status == 400
        assert "not valid JSON" in (await error_of(r))["message"]
    async with http.post(url(balancer, CHAT), data=b'{"model": 42}') as r:
        assert r.status == 400
        assert "$.model" in (await error_of(r))["message"]
    async with http.post(url(balancer, CHAT), data=b"[1]") as r:
        assert r.status == 400
    async with http.post(url(balancer, CHAT), data=b"") as r:
        assert r.status == 400 and "empty" in (await error_of(r))["message"]
    async with http.post(url(balancer, CHAT), data=b"x" * 5000) as r:
        assert r.status == 413
        assert (await error_of(r))["code"] == 413
    async with http.get(url(balancer, "/v2/teleport")) as r:
        assert r.status == 404
        assert "/v1/chat/completions" in (await error_of(r))["message"]
    async with http.get(url(balancer, CHAT)) as r:
        assert r.status == 405 and r.headers["Allow"] == "POST"
    async with http.post(url(balancer, "/props"), data=b"{}") as r:
        assert r.status == 404
        assert "not exposed" in (await error_of(r))["message"]
    # and nothing was disturbed
    async with http.get(mgmt(balancer, "/health")) as r:
        assert r.status == 200


async def test_health_is_503_without_servers_and_aggregates_with_them(harness: Harness):
    balancer = await harness.balancer()
    async with harness.http.get(url(balancer, "/health")) as r:
        assert r.status == 503
        assert (await error_of(r))["type"] == "unavailable_error"
    for name, slots in (("a", 4), ("b", 2)):
        _, port = await harness.sim(name=name, slots=slots)
        await harness.agent(port, balancer, name=name)
    async with harness.http.get(url(balancer, "/health")) as r:
        assert r.status == 200
        assert await r.json() == {"status": "ok", "slots_idle": 6, "slots_processing": 0}
    async with harness.http.get(url(balancer, "/props")) as r:
        assert (await r.json())["total_slots"] == 6
    async with harness.http.get(url(balancer, "/slots")) as r:
        slots = await r.json()
        assert [s["id"] for s in slots] == list(range(6))
        assert not any(s["is_processing"] for s in slots)


async def test_api_keys_on_the_inference_listener(harness: Harness):
    balancer = await harness.balancer(api_keys=("k1", "k2"))
    _, port = await harness.sim(name="s", api_key="backend-secret")
    await harness.agent(port, balancer, name="s", llamacpp_api_key="backend-secret")
    async with harness.http.post(url(balancer, CHAT), json=BODY) as r:
        assert r.status == 401
        assert (await error_of(r))["type"] == "authentication_error"
    bad = {"Authorization": "Bearer nope"}
    async with harness.http.post(url(balancer, CHAT), json=BODY, headers=bad) as r:
        assert r.status == 401
    good = {"Authorization": "Bearer k2"}
    async with harness.http.post(url(balancer, CHAT), json=BODY, headers=good) as r:
        assert r.status == 200  # and upstream got the backend's own key, not k2
    async with harness.http.post(url(balancer, CHAT), json=BODY, headers={"x-api-key": "k1"}) as r:
        assert r.status == 200
    async with harness.http.get(url(balancer, "/health")) as r:
        assert r.status == 200  # public, as in llama-server


async def test_agent_token_and_management_token(harness: Harness):
    balancer = await harness.balancer(agent_token="sesame", management_token="admin")
    _, port = await harness.sim(name="s")
    await harness.agent(port, balancer, name="wrong", agent_token="nope", wait_ready=False)
    await harness.agent(port, balancer, name="right", agent_token="sesame")
    assert [a.name for a in balancer.fleet] == ["right"]
    async with harness.http.get(mgmt(balancer, "/api/v1/agents")) as r:
        assert r.status == 401
    headers = {"Authorization": "Bearer admin"}
    async with harness.http.get(mgmt(balancer, "/api/v1/agents"), headers=headers) as r:
        agents = (await r.json())["agents"]
        assert [a["name"] for a in agents] == ["right"]
        assert "api_key" not in agents[0]


async def test_a_broken_agent_cannot_break_the_balancer(harness: Harness):
    balancer = await harness.balancer()
    _, port = await harness.sim(name="s")
    await harness.agent(port, balancer, name="good")
    socket_url = mgmt(balancer, "/api/v1/agent-socket")
    # a first frame that is not a registration closes that socket, with a reason
    async with harness.http.ws_connect(socket_url) as ws:
        await ws.send_str("{garbage")
        reply = json.loads((await ws.receive()).data)
        assert reply["type"] == "error" and reply["fatal"]
        assert "malformed JSON" in reply["message"]
    # after registering, bad frames are answered and the agent stays
    async with harness.http.ws_connect(socket_url) as ws:
        register = Register(
            version=PROTOCOL_VERSION,
            name="rogue",
            address="http://127.0.0.1:1",
            status=ServerStatus("ready", model="sim-model", slots_total=0),
        )
        await ws.send_bytes(encode(register))
        assert json.loads((await ws.receive()).data)["type"] == "registered"
        await ws.send_str('{"type": "status", "status": {"condition": "sideways"}}')
        reply = json.loads((await ws.receive()).data)
        assert reply["type"] == "error" and not reply["fatal"]
        assert "$.status.condition" in reply["message"]
        assert {a.name for a in balancer.fleet} == {"good", "rogue"}
    # the socket closed: the rogue agent is gone, the good one serves on
    await eventually(lambda: {a.name for a in balancer.fleet} == {"good"})
    async with harness.http.post(url(balancer, CHAT), json=BODY) as r:
        assert r.status == 200


async def test_missed_heartbeats_mark_an_agent_unhealthy(harness: Harness):
    balancer = await harness.balancer(heartbeat_timeout=0.3)
    async with harness.http.ws_connect(mgmt(balancer, "/api/v1/agent-socket")) as ws:
        register = Register(
            version=PROTOCOL_VERSION,
            name="silent",
            address="http://127.0.0.1:1",
            status=ServerStatus("ready", model="m", slots_total=2),
        )
        await ws.send_bytes(encode(register))
        await ws.receive()
        agent = next(iter(balancer.fleet))
        assert agent.routable
        await eventually(lambda: agent.state.value == "unhealthy", within=3)
        async with harness.http.get(mgmt(balancer, "/api/v1/agents")) as r:
            assert (await r.json())["agents"][0]["state"] == "unhealthy"
        await ws.send_str('{"type": "heartbeat"}')
        await eventually(lambda: agent.routable, within=3)


async def test_agents_stream_shows_joins_and_leaves(harness: Harness):
    balancer = await harness.balancer()
    events: list[list[str]] = []

    async def read() -> None:
        async with harness.http.get(mgmt(balancer, "/api/v1/agents/stream")) as r:
            async for line in r.content:
                if line.startswith(b"data: "):
                    events.append([a["name"] for a in json.loads(line[6:])["agents"]])

    reader = asyncio.create_task(read())
    await eventually(lambda: events == [[]])
    _, port = await harness.sim(name="s")
    agent = await harness.agent(port, balancer, name="joiner")
    await eventually(lambda: events[-1] == ["joiner"], what="join event")
    await agent.stop()
    await eventually(lambda: events[-1] == [], what="leave event")
    reader.cancel()


async def test_two_level_tree(harness: Harness):
    """A child balancer with its servers, watched by an agent, behind a parent."""
    parent = await harness.balancer()
    child = await harness.balancer()
    for name in ("c1", "c2"):
        _, port = await harness.sim(name=name, slots=2)
        await harness.agent(port, child, name=name)
    _, direct = await harness.sim(name="direct", slots=1)
    await harness.agent(direct, parent, name="direct")
    await harness.agent(child.inference_port, parent, name="child-balancer")
    subtree = next(a for a in parent.fleet if a.name == "child-balancer")
    assert subtree.slots_total == 4 and subtree.model == "sim-model"
    async with harness.http.get(url(parent, "/health")) as r:
        assert (await r.json())["slots_idle"] == 5

    async def one() -> str:
        async with harness.http.post(url(parent, CHAT), json=BODY | {"max_tokens": 20}) as r:
            assert r.status == 200
            return r.headers["X-Sim-Server"]

    served = await asyncio.gather(*(one() for _ in range(5)))
    assert sorted(served) == ["c1", "c1", "c2", "c2", "direct"]


async def test_an_agent_reports_to_two_balancers(harness: Harness):
    from corral.addr import Addr

    first = await harness.balancer()
    second = await harness.balancer()
    _, port = await harness.sim(name="s", slots=3)
    both = await harness.agent(
        port,
        first,
        name="ha2",
        management_addrs=(
            Addr("127.0.0.1", first.management_port),
            Addr("127.0.0.1", second.management_port),
        ),
        wait_ready=False,
    )
    await eventually(lambda: any(a.name == "ha2" and a.routable for a in second.fleet))
    await eventually(lambda: any(a.name == "ha2" and a.routable for a in first.fleet))
    for balancer in (first, second):
        async with harness.http.post(url(balancer, CHAT), json=BODY) as r:
            assert r.status == 200
    await both.stop()
    await eventually(lambda: not any(a.name == "ha2" for a in second.fleet))


async def test_cors_preflight_and_gzip_bodies(harness: Harness):
    import gzip

    balancer = await harness.balancer(api_keys=("k",))
    _, port = await harness.sim(name="s")
    await harness.agent(port, balancer, name="s")
    headers = {"Origin": "http://app", "Access-Control-Request-Headers": "authorization"}
    async with harness.http.options(url(balancer, CHAT), headers=headers) as r:
        assert r.status == 200  # no key needed for a preflight, as in llama-server
        # the safe default: any origin, never with credentials
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert r.headers["Access-Control-Allow-Credentials"] == "false"
        assert r.headers["Access-Control-Allow-Headers"] == "*"  # configured, not echoed
        assert r.headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE, OPTIONS"
    body = gzip.compress(b'{"content": "hello world"}')
    headers = {"Authorization": "Bearer k", "Content-Encoding": "gzip"}
    async with harness.http.post(url(balancer, "/tokenize"), data=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["tokens"]


async def test_a_client_leaving_the_buffer_hands_the_slot_to_the_next(harness: Harness):
    balancer = await harness.balancer()
    _, port = await harness.sim(name="s", slots=1, tokens_per_second=50)
    await harness.agent(port, balancer, name="s")
    first = asyncio.create_task(harness.http.post(url(balancer, CHAT), json=BODY))
    await eventually(lambda: next(iter(balancer.fleet)).reserved == 1)
    leaver = asyncio.create_task(harness.http.post(url(balancer, CHAT), json=BODY))
    stayer = asyncio.create_task(harness.http.post(url(balancer, CHAT), json=BODY))
    await eventually(lambda: len(balancer.buffer) == 2)
    leaver.cancel()
    await eventually(lambda: len(balancer.buffer) == 1)
    for task in (first, stayer):
        response = await asyncio.wait_for(task, 5)
        assert response.status == 200
        response.release()
    assert next(iter(balancer.fleet)).reserved == 0


async def test_cookies_from_a_server_never_reach_another_clients_request(harness: Harness):
    from aiohttp import web

    from corral.sim import SimConfig, make_app

    seen: list[str | None] = []
    app = make_app(SimConfig(name="c", tokens_per_second=1e6))

    async def cookie(request: web.Request, response: web.StreamResponse) -> None:
        if request.path == "/completion":
            seen.append(request.headers.get("Cookie"))
            response.headers.add("Set-Cookie", "session=alice-secret; Path=/")

    app.on_response_prepare.append(cookie)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        balancer = await harness.balancer()
        port = runner.addresses[0][1]
        # by a host name: aiohttp's default cookie jar ignores cookies from IP addresses
        await harness.agent(
            port, balancer, name="c", external_llamacpp_addr=Addr("localhost", port)
        )
        for _ in range(2):  # alice gets a cookie; the next request must not carry it
            async with (
                aiohttp.ClientSession() as client,  # a fresh client each time
                client.post(url(balancer, "/completion"), json={"prompt": "x"}) as r,
            ):
                assert r.status == 200
                assert "alice-secret" in r.headers.get("Set-Cookie", "")
        assert seen == [None, None]
    finally:
        await runner.cleanup()
