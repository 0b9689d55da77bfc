from support.fleets import ready_fleet

from corral.core.buffer import Buffer
from corral.core.demand import ColdStarts, model_demand
from corral.core.policy import RequestInfo


def test_demand_is_buffered_plus_in_flight_of_ready_servers():
    fleet = ready_fleet(("a", "small", 4), ("b", "large", 2))
    fleet.reserve("a", 0.0)
    buffer = Buffer(10, 30.0)
    buffer.push(RequestInfo("/completion", "small"), 0.0)
    buffer.push(RequestInfo("/completion", "large"), 0.0)
    buffer.push(RequestInfo("/completion", "none-such"), 0.0)
    small = model_demand(fleet, buffer, "small")
    assert (small.buffered, small.in_flight, small.ready_slots, small.total) == (1, 1, 4, 2)
    assert model_demand(fleet, buffer, "none-such").total == 1


def test_a_cold_start_runs_from_the_first_buffered_request_to_a_ready_server():
    cold = ColdStarts()
    empty = ready_fleet()
    cold.buffered(empty, "small", 10.0)
    cold.buffered(empty, "small", 11.0)  # the first request starts it, not later ones
    assert cold.changed(empty, 12.0) == []
    ready = ready_fleet(("a", "small", 4))
    assert cold.changed(ready, 25.0) == [("small", 15.0)]
    cold.buffered(ready, "small", 30.0)  # a ready server: not a cold start
    assert cold.changed(ready, 31.0) == []
