"""A slot given to a request whose client has gone, or whose server refused the
connection, is given back unsent: the fleet's subscribers (the prefix index) are told
the server never saw it."""

from __future__ import annotations

import asyncio

import pytest
from support.fleets import ready_fleet
from support.harness import Harness, url

from corral.balancer.dispatcher import Dispatcher
from corral.core import Buffer, MonotonicClock, Scheduler
from corral.core.events import Finished, FleetEvent, Timings
from corral.core.routing import PrefixPolicy, Prompt, RequestInfo

CHAT = "/v1/chat/completions"


# before: the slot is handed over after the client left (Dispatcher.changed);
# after: the client leaves once handed the slot, before its task resumes (Dispatcher._wait)
@pytest.mark.parametrize("leaves", ["before the assignment", "after the assignment"])
async def test_a_waiter_whose_client_left_gives_its_slot_back_unsent(leaves: str):
    clock = MonotonicClock()
    fleet = ready_fleet(("a", 1))
    policy = PrefixPolicy(clock=clock.now)
    dispatcher = Dispatcher(Scheduler(fleet, policy, Buffer(10, 30.0)), clock)
    events: list[FleetEvent] = []
    fleet.subscribe(events.append)

    first = RequestInfo(CHAT, "m", prompt=Prompt(b"the first conversation. " * 200))
    assert (await dispatcher.acquire(first)).backend_id == "a"
    waiter = RequestInfo(CHAT, "m", prompt=Prompt(b"a conversation never sent. " * 200))
    task = asyncio.create_task(dispatcher.acquire(waiter))
    await asyncio.sleep(0.01)
    assert not task.done()  # waiting in the buffer
    if leaves == "before the assignment":  # the slot frees before its task runs again
        task.cancel()
        dispatcher.release("a", request=first, timings=Timings(1250, 0, 1000.0))
    else:  # it was given the slot, then left before it could use it
        dispatcher.release("a", request=first, timings=Timings(1250, 0, 1000.0))
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    ends = [e for e in events if isinstance(e, Finished) and e.request is waiter]
    assert [e.sent for e in ends] == [False]
    assert fleet.get("a").reserved == 0
    assert policy.index.match("a", waiter.prompt.hashes(policy.index.block)) == 0
    assert policy.affinity("a", RequestInfo(CHAT, "m", prompt=first.prompt)) > 0
    policy.check()


async def test_a_server_that_refused_the_connection_is_told_to_hold_nothing(harness: Harness):
    balancer = await harness.balancer(routing="prefix")
    runner, port = await harness.sim(name="a", slots=4)
    await harness.agent(port, balancer, name="a")
    _, other = await harness.sim(name="b", slots=1)
    await harness.agent(other, balancer, name="b")
    events: list[FleetEvent] = []
    balancer.fleet.subscribe(events.append)
    await runner.cleanup()  # a is gone before its agent notices: connection refused
    body = {"messages": [{"role": "user", "content": "a long question. " * 300}], "max_tokens": 2}
    async with harness.http.post(url(balancer, CHAT), json=body) as r:
        assert r.status == 200 and r.headers["X-Sim-Server"] == "b"
    ends = {e.backend.name: e.sent for e in events if isinstance(e, Finished)}
    assert ends == {"a": False, "b": True}
    policy = balancer.scheduler.policy
    assert isinstance(policy, PrefixPolicy)
    ids = {backend.name: backend.id for backend in balancer.fleet}
    info = next(e.request for e in events if isinstance(e, Finished))
    assert isinstance(info, RequestInfo) and info.prompt is not None
    hashes = info.prompt.hashes(policy.index.block)
    assert policy.index.match(ids["a"], hashes) == 0
    assert policy.index.match(ids["b"], hashes) > 0


async def test_a_request_the_server_refused_unread_leaves_nothing_in_the_index(
    harness: Harness,
):
    """A 4xx answer (here llama-server's 400 for a prompt past the slot's context) means
    the server never read the prompt: the slot is given back unsent, and the prefix
    index does not predict the prompt there."""
    balancer = await harness.balancer(routing="prefix")
    _, port = await harness.sim(name="a", slots=1, n_ctx=256)
    await harness.agent(port, balancer, name="a")
    events: list[FleetEvent] = []
    balancer.fleet.subscribe(events.append)
    body = {"messages": [{"role": "user", "content": "a long question. " * 300}], "max_tokens": 2}
    async with harness.http.post(url(balancer, CHAT), json=body) as r:
        assert r.status == 400, await r.text()
        assert "exceeds the available context size" in await r.text()
    ends = [e for e in events if isinstance(e, Finished)]
    assert [e.sent for e in ends] == [False]
    policy = balancer.scheduler.policy
    assert isinstance(policy, PrefixPolicy)
    info = ends[0].request
    assert isinstance(info, RequestInfo) and info.prompt is not None
    assert policy.index.match(ends[0].backend.id, info.prompt.hashes(policy.index.block)) == 0
    policy.check()
