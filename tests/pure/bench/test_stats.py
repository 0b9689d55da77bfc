"""Summaries of a known trace: counts add up and percentiles are the right numbers."""

from __future__ import annotations

import pytest

from corral.bench.stats import Outcome, format_table, percentile, summarise


def test_percentile_interpolates_linearly_between_ranks() -> None:
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([4, 1, 3, 2], 0.0) == 1
    assert percentile([4, 1, 3, 2], 1.0) == 4
    assert percentile(list(range(101)), 0.99) == pytest.approx(99.0)
    assert percentile(list(range(1, 11)), 0.9) == pytest.approx(9.1)
    assert percentile([7.0], 0.99) == 7.0


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        percentile([1.0], 1.5)


def _trace() -> list[Outcome]:
    out = []
    for i in range(10):  # ten streamed successes: latency 1..10 s, ttft 0.1..1.0 s
        out.append(
            Outcome(
                index=i,
                start=float(i),
                end=float(i) + (i + 1),
                first_token=float(i) + 0.1 * (i + 1),
                token_gaps=(0.01, 0.03),
                output_tokens=3,
                buffer_wait=0.5 if i < 5 else 0.0,
                server="a" if i % 2 else "b",
            )
        )
    out.append(Outcome(index=10, start=1.0, end=2.0, stream=False, output_tokens=7))
    out.append(Outcome(index=11, start=2.0, end=2.5, error="http_429"))
    out.append(Outcome(index=12, start=3.0, end=3.5, error="http_429"))
    out.append(Outcome(index=13, start=4.0, end=25.0, error="timeout"))
    return out


def test_counts_add_up_on_a_known_trace() -> None:
    s = summarise(_trace())
    assert s.requests == 14
    assert s.succeeded == 11 and s.failed == 3
    assert s.succeeded + s.failed == s.requests
    assert s.errors == {"http_429": 2, "timeout": 1}
    assert s.duration == 25.0  # first start 0, last end 25 (the timeout)
    assert s.output_tokens == 10 * 3 + 7
    assert s.requests_per_second == pytest.approx(11 / 25)
    assert s.output_tokens_per_second == pytest.approx(37 / 25)
    assert s.servers == {"a": 5, "b": 5}


def test_latency_percentiles_on_a_known_trace() -> None:
    s = summarise(_trace())
    assert s.latency is not None and s.ttft is not None and s.itl is not None
    latencies = [float(n) for n in range(1, 11)] + [1.0]
    assert s.latency.count == 11
    assert s.latency.p50 == pytest.approx(percentile(latencies, 0.5))
    assert s.latency.max == 10.0
    # the non-streamed success has no first token; failures count nowhere
    assert s.ttft.count == 10
    assert s.ttft.p50 == pytest.approx(0.55)
    assert s.ttft.p90 == pytest.approx(0.91)
    assert s.itl.count == 20
    assert s.itl.p50 == pytest.approx(0.02)
    assert s.itl.max == pytest.approx(0.03)
    assert s.buffer_wait is not None and s.buffer_wait.mean == pytest.approx(0.25)


def test_an_empty_run_summarises_to_zeros() -> None:
    s = summarise([])
    assert (s.requests, s.succeeded, s.duration, s.requests_per_second) == (0, 0, 0.0, 0.0)
    assert s.latency is None and s.ttft is None
    assert "0 ok" in format_table(s)


def test_the_table_shows_the_figures_in_milliseconds() -> None:
    text = format_table(summarise(_trace()))
    assert "14 (11 ok, 3 failed)" in text
    assert "http_429: 2, timeout: 1" in text
    ttft_row = next(line for line in text.splitlines() if line.startswith("time to first token"))
    assert "550.0" in ttft_row  # p50 0.55 s
    assert "answered by   a: 5, b: 5" in text


def test_the_cache_hit_rate_is_what_the_servers_report() -> None:
    outcomes = [
        Outcome(0, 0.0, 1.0, prompt_tokens=1000, cached_tokens=900),
        Outcome(1, 0.0, 1.0, prompt_tokens=1000, cached_tokens=0),
        Outcome(2, 0.0, 1.0),  # the server said nothing: not counted
        Outcome(3, 0.0, 1.0, prompt_tokens=500, cached_tokens=500, error="timeout"),
    ]
    s = summarise(outcomes)
    assert (s.prompt_tokens, s.cached_tokens) == (2000, 900)
    assert s.cache_hit_rate == pytest.approx(0.45)
    assert s.to_dict()["cache_hit_rate"] == pytest.approx(0.45)
    assert "prompt cache  45.0% of 2,000 prompt tokens" in format_table(s)
    assert summarise([Outcome(0, 0.0, 1.0)]).cache_hit_rate is None
