"""The agent's reconnect backoff to a balancer: doubling from ``--reconnect-min``, with
jitter, never over ``--reconnect-max``."""

import pytest

from corral.agent import AgentConfig
from corral.agent.agent import reconnect_wait


def test_the_wait_is_the_backoff_with_jitter_below_the_cap():
    assert reconnect_wait(1.0, 10.0, uniform=lambda low, high: high) == pytest.approx(1.2)
    assert reconnect_wait(1.0, 10.0, uniform=lambda low, high: low) == pytest.approx(0.8)


@pytest.mark.parametrize("jitter", ["low", "high"])
def test_the_wait_never_exceeds_the_cap(jitter):
    def uniform(low: float, high: float) -> float:
        return low if jitter == "low" else high

    for backoff in (9.0, 10.0, 1e6):
        assert reconnect_wait(backoff, 10.0, uniform=uniform) <= 10.0
    assert reconnect_wait(10.0, 10.0, uniform=lambda low, high: high) == 10.0


def test_at_the_cap_the_waits_still_spread():
    import random

    rng = random.Random(1)
    waits = [reconnect_wait(10.0, 10.0, uniform=rng.uniform) for _ in range(200)]
    assert max(waits) <= 10.0 and min(waits) >= 8.0
    assert len({round(w, 3) for w in waits}) > 100  # not all at one instant


@pytest.mark.parametrize(
    ("low", "high"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0), (0.2, float("inf"))]
)
def test_a_bad_backoff_is_refused(low, high):
    with pytest.raises(ValueError, match="reconnect backoff"):
        AgentConfig(reconnect_min=low, reconnect_max=high)


def test_the_defaults():
    config = AgentConfig()
    assert (config.reconnect_min, config.reconnect_max) == (0.2, 10.0)
