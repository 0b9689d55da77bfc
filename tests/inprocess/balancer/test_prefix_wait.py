"""Prefix routing's bounded wait, through the dispatcher: a request that waits for the
busy server holding its prompt waits ``max_wait`` at most, even when the policy decides
to wait only once the request is already in the buffer and nothing else happens."""

from __future__ import annotations

import asyncio

from support.fleets import ready_fleet

from corral.balancer.dispatcher import Dispatcher
from corral.core import Buffer, MonotonicClock, Scheduler
from corral.core.events import Timings
from corral.core.routing import PrefixPolicy, Prompt, RequestInfo

CHAT = "/v1/chat/completions"
HISTORY = b"the conversation so far. " * 800  # 20,000 bytes: a long prefill
MAX_WAIT = 0.2


async def test_a_wait_decided_in_the_buffer_ends_at_its_bound_without_another_event():
    clock = MonotonicClock()
    # a host cache (--cache-ram): "a" keeps the prompt while another request runs
    fleet = ready_fleet(("a", 1), ("b", 1), cache_ram_mib=64)
    policy = PrefixPolicy(clock=clock.now, max_wait=MAX_WAIT)
    dispatcher = Dispatcher(Scheduler(fleet, policy, Buffer(10, 30.0)), clock)

    first = RequestInfo(CHAT, "m", prompt=Prompt(HISTORY))
    held = await dispatcher.acquire(first)  # "a" holds the conversation from now on
    assert held.backend_id == "a"
    # 1,000 prompt tokens/s and short runs: waiting for "a" beats a long prefill on "b"
    dispatcher.release("a", request=first, timings=Timings(5000, 0, 5000.0))
    on_a = await dispatcher.acquire(RequestInfo(CHAT, "m", "a"))  # pinned: "a" is busy
    on_b = await dispatcher.acquire(RequestInfo(CHAT, "m", "b"))  # and "b" too
    assert (on_a.backend_id, on_b.backend_id) == ("a", "b")

    later = RequestInfo(CHAT, "m", prompt=Prompt(HISTORY + b"and the next question?"))
    task = asyncio.create_task(dispatcher.acquire(later))
    await asyncio.sleep(0.05)
    assert not task.done() and later.note.wait_until is None  # no free slot at all
    dispatcher.release("b")  # "b" frees; "a", which holds the prompt, is still busy
    assert later.note.reason == "wait-prefix" and later.note.wait_until is not None
    assert not task.done()

    # nothing else happens: no request ends, no agent reports
    reservation = await asyncio.wait_for(task, timeout=MAX_WAIT + 1.0)
    assert reservation.backend_id == "b"
    assert MAX_WAIT * 0.9 <= reservation.waited <= MAX_WAIT + 0.3
    dispatcher.release("a")
    dispatcher.release("b")
