"""Prefix routing's bounded wait, through the dispatcher: a request that waits for the
busy server holding its prompt waits ``max_wait`` at most, even when the policy decides
to wait only once the request is already in the buffer and nothing else happens."""

from __future__ import annotations

import asyncio

import pytest
from support.fleets import ready_fleet

from corral.balancer.dispatcher import Dispatcher
from corral.balancer.errors import HTTPError
from corral.core import Buffer, MonotonicClock, Scheduler
from corral.core.events import Timings
from corral.core.routing import PrefixPolicy, Prompt, RequestInfo

CHAT = "/v1/chat/completions"
HISTORY = b"the conversation so far. " * 800  # 20,000 bytes: a long prefill
MAX_WAIT = 0.2
SHORT_HISTORY = b"another conversation. " * 60  # 330 tokens: a short bound of its own


async def a_holding_busy(max_wait: float, buffer_timeout: float) -> tuple[Dispatcher, PrefixPolicy]:
    """Servers "a" and "b" of one slot, "a" with a host cache holding two conversations
    (``HISTORY`` and ``SHORT_HISTORY``, learned at 1,000 prompt tokens/s with short
    runs) and busy with a pinned request; "b" free."""
    clock = MonotonicClock()
    fleet = ready_fleet(("a", 1), ("b", 1), cache_ram_mib=64)
    policy = PrefixPolicy(clock=clock.now, max_wait=max_wait)
    dispatcher = Dispatcher(Scheduler(fleet, policy, Buffer(10, buffer_timeout)), clock)
    for history in (HISTORY, SHORT_HISTORY):
        turn = RequestInfo(CHAT, "m", "a", prompt=Prompt(history))  # pinned there
        assert (await dispatcher.acquire(turn)).backend_id == "a"
        tokens = len(history) // 4
        dispatcher.release("a", request=turn, timings=Timings(tokens, 0, float(tokens)))
    on_a = await dispatcher.acquire(RequestInfo(CHAT, "m", "a"))  # pinned: "a" is busy
    assert on_a.backend_id == "a"
    return dispatcher, policy


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


async def test_a_request_behind_a_cancelled_one_ends_its_own_wait_at_its_own_bound():
    """Two requests wait for the busy server holding their prompts, beside a free one.
    The first, with the longer bound, gives up (its client leaves): the one behind it
    now heads the queue and goes to the free server at its own, shorter bound, not at
    the first one's."""
    long_wait = 3.0
    dispatcher, policy = await a_holding_busy(long_wait, 30.0)
    clock = policy.clock
    assert clock is not None
    # HISTORY is 5,000 tokens: its wait is bounded by max_wait
    first = RequestInfo(CHAT, "m", prompt=Prompt(HISTORY + b"a question?"))
    first_task = asyncio.create_task(dispatcher.acquire(first))
    await asyncio.sleep(0.01)
    second = RequestInfo(CHAT, "m", prompt=Prompt(SHORT_HISTORY + b"a question?"))
    second_task = asyncio.create_task(dispatcher.acquire(second))
    await asyncio.sleep(0.01)
    assert (first.note.reason, second.note.reason) == ("wait-prefix", "wait-prefix")
    assert first.note.wait_until is not None and second.note.wait_until is not None
    bound = second.note.wait_until - clock()
    assert 0.0 < bound < first.note.wait_until - clock() - 1.0

    first_task.cancel()  # its client leaves
    reservation = await asyncio.wait_for(second_task, timeout=long_wait + 1.0)
    assert reservation.backend_id == "b"
    assert reservation.waited <= bound + 0.5, (reservation.waited, bound)
    dispatcher.release("a")
    dispatcher.release("b")


async def test_a_request_behind_a_timed_out_one_ends_its_own_wait_at_its_own_bound():
    """As above, but the first request leaves the buffer by timing out
    (``--buffered-request-timeout``), not by its client leaving."""
    timeout = 1.2
    dispatcher, policy = await a_holding_busy(5.0, timeout)
    clock = policy.clock
    assert clock is not None
    first = RequestInfo(CHAT, "m", prompt=Prompt(HISTORY + b"a question?"))
    first_task = asyncio.create_task(dispatcher.acquire(first))
    await asyncio.sleep(timeout - 0.3)
    second = RequestInfo(CHAT, "m", prompt=Prompt(SHORT_HISTORY + b"a question?"))
    second_task = asyncio.create_task(dispatcher.acquire(second))
    await asyncio.sleep(0.01)
    assert second.note.reason == "wait-prefix" and second.note.wait_until is not None
    bound = second.note.wait_until - clock()
    assert 0.3 < bound < 1.0  # it ends after the first one times out

    with pytest.raises(HTTPError, match="no slot became free"):
        await first_task
    reservation = await asyncio.wait_for(second_task, timeout=3.0)
    assert reservation.backend_id == "b"
    assert reservation.waited <= bound + 0.3, (reservation.waited, bound)
    dispatcher.release("a")
    dispatcher.release("b")
