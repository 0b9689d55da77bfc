"""The uncached capacity: speeds measured per token, the workload's mean request read
whole, whatever the calibration's own reuse and sample of answer lengths."""

from __future__ import annotations

import pytest

from comparison.capacity import CapacityError, uncached_capacity
from corral.bench.stats import Outcome
from corral.bench.workload import Call, Message, Workload, WorkloadSpec


def call(index: int, words: int, max_tokens: int) -> Call:
    return Call(index, (Message("user", " ".join(["w"] * words)),), max_tokens, stream=True)


def answer(index: int, prompt: int, cached: int, ttft: float, tokens: int, rest: float) -> Outcome:
    return Outcome(
        index, start=0.0, end=ttft + rest, first_token=ttft, output_tokens=tokens,
        prompt_tokens=prompt, cached_tokens=cached,
    )  # fmt: skip


def test_speeds_per_token_and_the_workloads_mean_request_read_whole():
    # a slot reads 500 uncached tokens/s and makes 50 tokens/s after the first;
    # the servers count 2 tokens a word and generate half of what was planned
    calls = [call(0, 100, 40), call(1, 300, 80)]
    outcomes = [
        answer(0, 200, 0, 0.4, 20, 19 / 50),
        answer(1, 600, 100, 1.0, 40, 39 / 50),  # reused 100: only 500 read
    ]
    cap = uncached_capacity(outcomes, calls, slots=4, closed_loop=9.9)
    assert cap.prefill == pytest.approx(500)
    assert cap.decode == pytest.approx(50)
    assert cap.prompt_tokens == pytest.approx(400)  # 200 words x 2 tokens a word
    assert cap.output_tokens == pytest.approx(30)  # 60 planned x 60/120 generated
    assert cap.requests_per_second == pytest.approx(4 / (400 / 500 + 30 / 50))
    assert cap.closed_loop == 9.9


def test_the_calibrations_luck_with_the_cache_does_not_raise_the_capacity():
    # the same speeds, but the calibration's answers all hit the cache: a count of
    # answers would say the fleet is faster; the capacity read whole does not change
    calls = [call(0, 100, 40), call(1, 300, 80)]
    cold = [answer(0, 200, 0, 0.4, 20, 19 / 50), answer(1, 600, 0, 1.2, 40, 39 / 50)]
    warm = [answer(0, 200, 150, 0.1, 20, 19 / 50), answer(1, 600, 500, 0.2, 40, 39 / 50)]
    assert uncached_capacity(warm, calls, 4, 0).requests_per_second == pytest.approx(
        uncached_capacity(cold, calls, 4, 0).requests_per_second
    )


def test_a_real_workloads_calls_give_a_finite_capacity():
    spec = WorkloadSpec(shape="multi-turn", prompt_tokens=50, sessions=2, turns=3, seed=1)
    calls = Workload(spec).take(24)
    outcomes = [
        answer(c.index, 3 * sum(len(m.content.split()) for m in c.messages), 0, 1.0, 10, 0.2)
        for c in calls[:6]
    ]
    cap = uncached_capacity(outcomes, calls, 2, 0)
    assert 0 < cap.requests_per_second < float("inf")


@pytest.mark.parametrize(
    "outcomes",
    [
        [],
        [Outcome(0, 0.0, 1.0, error="timeout")],
        [Outcome(0, 0.0, 1.0, stream=False, output_tokens=5)],  # no first token, no timings
        [answer(7, 100, 0, 0.2, 10, 0.2)],  # not one of the workload's calls
    ],
)
def test_answers_that_give_no_speed_are_a_clear_error(outcomes):
    with pytest.raises(CapacityError, match="no speed"):
        uncached_capacity(outcomes, [call(0, 10, 10)], 2, 0)


def test_no_slots_or_no_calls_is_a_clear_error():
    with pytest.raises(CapacityError):
        uncached_capacity([answer(0, 10, 0, 0.1, 5, 0.1)], [], 2, 0)
    with pytest.raises(CapacityError):
        uncached_capacity([answer(0, 10, 0, 0.1, 5, 0.1)], [call(0, 5, 5)], 0, 0)
