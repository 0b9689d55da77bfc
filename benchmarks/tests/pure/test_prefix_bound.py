"""Section 5's bound: what any router can gain on the simulated fleet at saturation."""

import pytest

from comparison.prefix import SIM_FULL, ideal_speedup
from corral.sim.model import SpeedModel


def test_the_bound_is_the_ratio_of_a_miss_to_a_hit():
    miss, hit, bound = ideal_speedup(SIM_FULL, 57.9)
    decode = 57.9 / SpeedModel(50.0, 0.1, 2000.0).slot_speed(4)  # 38.5 tokens/s a slot
    assert miss == pytest.approx(2044 / 2000 + decode)
    assert hit == pytest.approx(44 / 2000 + decode)
    assert bound == pytest.approx(1.655, abs=0.01)  # below issue #10's 1.9x
