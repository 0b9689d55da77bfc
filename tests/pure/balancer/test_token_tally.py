"""Tokens counted live as streams are relayed, settled exactly when they end."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from corral.balancer.metrics import Metrics, Tally, read_counts, token_events
from corral.core.buffer import Buffer
from corral.core.fleet import Fleet


def test_token_events_count_pieces_of_content():
    role = b'data: {"choices":[{"delta":{"role":"assistant","content":null}}]}\n\n'
    piece = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
    last = b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'
    completion_end = b'data: {"content":"","stop":true,"timings":{"predicted_n":2}}\n\n'
    assert token_events(role) == 0
    assert token_events(piece * 3) == 3
    assert token_events(last + b"data: [DONE]\n\n") == 0
    assert token_events(b'data: {"content":"a","stop":false}\n\n' + completion_end) == 1


def test_settle_adds_what_the_live_count_missed():
    tally = Tally()
    tally.stream(3)
    tally.settle(exact=5, streamed=3)
    assert (tally.generated, tally.debt) == (5, 0)


def test_an_overcount_is_paid_by_the_next_live_events_never_by_going_down():
    tally = Tally()
    tally.stream(6)
    tally.settle(exact=4, streamed=6)
    assert (tally.generated, tally.debt) == (6, 2)
    tally.stream(3)  # 2 of them pay the debt
    assert (tally.generated, tally.debt) == (7, 0)
    tally.settle(exact=3, streamed=3)
    assert (tally.generated, tally.debt) == (7, 0)  # 4 + 3: exact again


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), max_size=30))
def test_the_counter_never_goes_down_and_is_exact_less_its_debt(streams):
    tally = Tally()
    exact_total = 0
    for live, exact in streams:
        before = tally.generated
        tally.stream(live)
        assert tally.generated >= before
        tally.settle(exact, live)
        assert tally.generated >= before
        exact_total += exact
        assert tally.generated - tally.debt == exact_total


def test_prometheus_sums_tallies_per_model_and_shows_each_agent():
    metrics = Metrics(Fleet(), Buffer(capacity=10, timeout=1.0))
    metrics.tally("a", "m").stream(7)
    metrics.tally("b", "m").stream(3)
    answer = b'{"usage":{"prompt_tokens":11,"completion_tokens":5}}'
    metrics.count_tokens("b", "m", read_counts(answer), 3)
    text = metrics.render().decode()
    assert 'corral_generated_tokens_total{model="m"} 12.0' in text
    assert 'corral_prompt_tokens_total{model="m"} 11.0' in text
    assert 'corral_agent_generated_tokens_total{agent="a",model="m"} 7.0' in text
    assert 'corral_agent_generated_tokens_total{agent="b",model="m"} 5.0' in text
