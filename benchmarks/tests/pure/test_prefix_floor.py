"""Section 5's real-part bound: what a request takes when its server holds its history
and is free, and slot routing's p50 over it."""

from __future__ import annotations

import pytest

from comparison.prefix import floor_lines, hit_floor
from comparison.routing import Result
from corral.bench.stats import Outcome, summarise


def _outcome(ttft: float, cached: int, wait: float | None, prompt: int = 1000) -> Outcome:
    return Outcome(
        index=0, start=10.0, end=20.0, first_token=10.0 + ttft, output_tokens=8,
        buffer_wait=wait, prompt_tokens=prompt, cached_tokens=cached,
    )  # fmt: skip


def _result(contender: str, outcomes: list[Outcome], load: float = 0.5, run: int = 0) -> Result:
    return Result(contender, load, 1.0, summarise(outcomes), outcomes, run=run)


def test_the_floor_counts_only_corrals_hits_that_did_not_wait() -> None:
    prefix = [
        _outcome(0.4, 900, 0.0),  # a hit, no wait: counted
        _outcome(0.6, 500, 0.05),  # half reused, under 0.1 s in the buffer: counted
        _outcome(3.0, 900, 2.5),  # a hit after a wait in the buffer: not
        _outcome(2.0, 100, 0.0),  # a miss: not
        _outcome(1.0, 900, None),  # the target did not say how long it waited: not
    ]
    failed = Outcome(  # a stream that broke after its first token: not a success
        index=1, start=10.0, end=11.0, first_token=10.05, error="stream_error",
        buffer_wait=0.0, prompt_tokens=1000, cached_tokens=900,
    )  # fmt: skip
    slots = [_outcome(0.5, 800, 0.0), _outcome(2.5, 0, 0.0), failed]
    sticky = [_outcome(0.1, 900, 0.0)]  # not Corral: its buffer waits are unknown
    results = [
        _result("corral-prefix", prefix),
        _result("corral-slots", slots),
        _result("nginx-sticky", [_outcome(0.1, 900, 0.0), *sticky]),
        _result("corral-prefix", [_outcome(0.1, 900, 0.0)], load=0.9),
    ]
    assert hit_floor(results, 0.5) == (pytest.approx(0.5), 3)  # 0.4, 0.5 and 0.6 s
    assert hit_floor(results, 0.9) == (pytest.approx(0.1), 1)
    assert hit_floor(results, 1.5) is None


def test_slot_routings_p50_over_the_floor_estimates_what_a_router_can_gain() -> None:
    hits = [_outcome(0.5, 900, 0.0) for _ in range(3)]
    results = [
        _result("corral-prefix", hits),
        _result("corral-slots", [_outcome(t, 0, 0.0) for t in (1.0, 2.0, 3.0)], run=0),
        _result("corral-slots", [_outcome(t, 0, 0.0) for t in (4, 5, 6, 7, 8)], run=1),
    ]
    text = "\n".join(floor_lines(results))
    # slot routing's p50 is the median of its runs' p50s (2.0 and 6.0 s: 4.0 s, 8.0x
    # 0.5 s), as in the tables, not of its requests pooled (4.5 s)
    assert "- 50%: 0.50 s (3 requests); `corral-slots`'s TTFT p50 4.00 s is 8.0x that" in text
    assert "What any router can reach here" in text


def test_without_slot_routing_or_a_hit_there_is_no_bound() -> None:
    assert floor_lines([_result("corral-prefix", [_outcome(0.5, 900, 0.0)])]) == []
    assert floor_lines([_result("corral-slots", [_outcome(2.0, 0, 0.0)])]) == []
