"""Scorers: prefill rates learned from answers compare servers at the same prefill size."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.core.events import Timings
from corral.core.routing.scorers import PrefillRates, size_class


def answer(tokens: int, rate: float) -> Timings:
    """An answer that read ``tokens`` at ``rate`` tokens/s."""
    return Timings(tokens, 0, tokens / rate * 1000.0)


def like_llama_server(tokens: int) -> float:
    """Tokens/s by prefill size, slower per token when short (a fixed cost of 0.2 s and
    400 tokens/s after it; the pinned build on this project's CPU measured 175 tokens/s
    for 16-63 tokens and 316 for 448-511)."""
    return tokens / (0.2 + tokens / 400)


def test_size_classes_are_powers_of_two_from_the_shortest_learned_from():
    assert [size_class(n) for n in (0, 15, 16, 31, 32, 480, 511, 512)] == [5, 5, 5, 5, 6, 9, 9, 10]


def test_nothing_learned_means_no_rate():
    rates = PrefillRates()
    assert not rates.known
    assert rates.rate("a", 500) is None
    rates.learn("a", answer(10, 100.0))  # too short to say anything of the rate
    assert not rates.known


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(16, 8000)), min_size=1, max_size=60))
def test_like_servers_have_like_speeds_whatever_sizes_each_read(answers):
    # the kind of fault: one average per server ranked it by the mix of sizes it read
    rates = PrefillRates()
    for backend, tokens in answers:
        rates.learn(backend, answer(tokens, like_llama_server(tokens)))
    # within a few percent: between the centres of its size classes the rate is
    # interpolated, and like_llama_server's curve is no straight line in logarithms
    for backend in "abc":
        assert rates.speed(backend) == pytest.approx(1.0, rel=0.05)


def test_a_server_that_read_only_long_prompts_is_not_taken_for_a_faster_one():
    rates = PrefillRates()
    rates.learn("a", answer(480, like_llama_server(480)))
    rates.learn("b", answer(480, like_llama_server(480)))
    for _ in range(10):
        rates.learn("b", answer(40, like_llama_server(40)))  # later turns: short prefills
        rates.learn("a", answer(480, like_llama_server(480)))  # new conversations
    assert rates.rate("b", 480) == pytest.approx(rates.rate("a", 480))
    assert rates.rate("a", 40) == pytest.approx(like_llama_server(40))  # its class's own
    assert rates.rate("b", 480) == pytest.approx(like_llama_server(480))


def test_a_faster_server_is_found_faster_at_every_size():
    rates = PrefillRates()
    for _ in range(30):
        for tokens in (40, 480):
            rates.learn("slow", answer(tokens, like_llama_server(tokens)))
            rates.learn("fast", answer(tokens, 2 * like_llama_server(tokens)))
    assert rates.speed("fast") / rates.speed("slow") == pytest.approx(2.0, rel=0.02)
    for tokens in (40, 480, 3000):  # 3000: no answer of its class, the nearest's rate
        assert rates.rate("fast", tokens) / rates.rate("slow", tokens) == pytest.approx(
            2.0, rel=0.02
        )


def test_one_answer_moves_a_new_server_only_part_of_the_way():
    rates = PrefillRates(alpha=0.2)
    rates.learn("a", answer(480, 300.0))
    rates.learn("b", answer(480, 390.0))  # 1.3x the fleet's rate for the size: one answer
    assert rates.speed("b") == pytest.approx(1.0 + 0.2 * 0.3)


def test_a_server_without_answers_has_the_fleet_mean_speed_until_forgotten_or_measured():
    rates = PrefillRates()
    for _ in range(30):
        rates.learn("a", answer(480, 300.0))
        rates.learn("b", answer(480, 600.0))
    mean = (rates.speed("a") + rates.speed("b")) / 2
    assert rates.speed("new") == pytest.approx(mean)
    rates.forget("b")
    assert rates.speed("new") == pytest.approx(rates.speed("a"))
    assert rates.speed("b") == pytest.approx(rates.speed("a"))  # forgotten: the mean again


def test_sizes_between_measured_classes_are_interpolated_and_flat_beyond():
    rates = PrefillRates()
    rates.learn("a", answer(45, 100.0))  # class 6, centre 45.25 tokens
    rates.learn("a", answer(724, 400.0))  # class 10, centre 724 tokens
    assert rates.at(181) == pytest.approx(200.0, rel=0.001)  # centre of class 8: half way, in logs
    assert rates.at(45) == pytest.approx(100.0, rel=0.01)
    assert rates.at(0) == rates.at(16) == pytest.approx(100.0)  # below the first centre
    assert rates.at(100_000) == pytest.approx(400.0)
