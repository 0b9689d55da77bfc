"""The simulator's prompt cache: what llama-server reuses, and which slot it picks."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from corral.sim.model import HostCache, Job, SlotTable, Ticket, common_prefix, reusable


def _job(tokens: tuple[int, ...]) -> Job:
    return Job(n_prompt=len(tokens), n_predict=4, tokens=tokens)


def test_common_prefix() -> None:
    assert common_prefix((1, 2, 3), (1, 2, 4)) == 2
    assert common_prefix((1, 2), (1, 2, 3)) == 2
    assert common_prefix((), (1,)) == 0


def test_the_last_prompt_token_is_always_read_again() -> None:
    assert reusable(10, 10) == 9
    assert reusable(4, 10) == 4
    assert reusable(0, 1) == 0


def test_a_conversation_reuses_its_history_on_the_same_slot() -> None:
    table = SlotTable(1)
    first = tuple(range(100))
    assert table.submit(_job(first)) == Ticket(0, 0, cached=0)
    table.release(0)
    second = (*first, 500, 501, 502)  # the history, then the new turn
    ticket = table.submit(_job(second))
    assert ticket.cached == 100
    assert table.slot(0).n_cached == 100
    assert table.cached_prompt(0) == second


def test_a_request_goes_to_the_slot_that_holds_its_prefix() -> None:
    table = SlotTable(3)
    a, b = tuple(range(50)), tuple(range(1000, 1050))
    assert table.submit(_job(a)).slot == 0
    assert table.submit(_job(b)).slot == 1
    table.release(0)
    table.release(1)
    # slot 2 is the least recently used, but slot 1 holds b's prefix
    assert table.submit(_job((*b, 7))) == Ticket(2, 1, cached=50)


def test_below_the_similarity_the_least_recently_used_slot_wins() -> None:
    table = SlotTable(2, similarity=0.5)
    table.submit(_job(tuple(range(10))))  # slot 0, used first
    table.submit(_job(tuple(range(100, 110))))  # slot 1
    table.release(1)
    table.release(0)
    # shares 3 of 20 tokens with slot 1 (15% < 50%): LRU, slot 0
    ticket = table.submit(_job((100, 101, 102, *range(200, 217))))
    assert ticket.slot == 0 and ticket.cached == 0


def test_a_queued_request_gets_the_cache_of_the_slot_it_is_given() -> None:
    table = SlotTable(1)
    prompt = tuple(range(30))
    table.submit(_job(prompt))
    assert table.submit(_job((*prompt, 1, 2))) == Ticket(1, None)
    assert table.release(0) == Ticket(1, 0, cached=30)


def test_a_host_cache_restores_a_prompt_the_slot_moved_away_from() -> None:
    table = SlotTable(1, host_cache_tokens=1000)
    a, b = tuple(range(100)), tuple(range(500, 600))
    table.submit(_job(a))
    table.release(0)
    table.submit(_job(b))  # the slot drops a (saved to the host), reads b
    table.release(0)
    assert table.submit(_job((*a, 9))).cached == 100
    no_host = SlotTable(1)
    for job in (a, b):
        no_host.submit(_job(job))
        no_host.release(0)
    assert no_host.submit(_job((*a, 9))).cached == 0


def test_cache_prompt_false_reuses_nothing_but_the_slot_then_holds_it() -> None:
    # as the pinned llama-server does: the same prompt with "cache_prompt": false
    # reports cache_n 0; sent again without it, all but its last token are reused
    table = SlotTable(1, host_cache_tokens=1000)
    a, b = tuple(range(100)), tuple(range(500, 600))
    table.submit(_job(a))
    table.release(0)
    again = Job(n_prompt=100, n_predict=4, tokens=a, cache_prompt=False)
    assert table.submit(again).cached == 0
    table.release(0)
    assert table.submit(_job(a)).cached == 99
    table.release(0)
    table.submit(Job(n_prompt=100, n_predict=4, tokens=b, cache_prompt=False))
    table.release(0)  # the slot moved to b: a went to the host cache
    assert table.submit(_job((*a, 9))).cached == 100


def test_the_host_cache_keeps_to_its_size_least_recently_used_out() -> None:
    host = HostCache(25)
    for start in (0, 100, 200):
        host.save(tuple(range(start, start + 10)))
    assert host.tokens == 20 and len(host) == 2  # the oldest went
    assert host.best(tuple(range(5))) == ((), 0)
    assert host.best(tuple(range(100, 103)))[1] == 3
    host.save(tuple(range(1000)))  # larger than the whole cache: not kept
    assert host.tokens == 20
    with pytest.raises(ValueError, match="capacity_tokens"):
        HostCache(-1)


@given(
    st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=1, max_size=30),
    st.integers(1, 3),
    st.integers(0, 40),
)
def test_never_more_cached_than_sent_and_the_host_within_its_size(
    prompts: list[list[int]], slots: int, host: int
) -> None:
    table = SlotTable(slots, host_cache_tokens=host)
    for tokens in prompts:
        ticket = table.submit(_job(tuple(tokens)))
        assert ticket.slot is not None
        assert 0 <= ticket.cached <= len(tokens) - 1
        assert table.host.tokens <= host
        table.release(ticket.slot)
