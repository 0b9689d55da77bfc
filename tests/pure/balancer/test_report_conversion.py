"""An agent's status message turned into the fleet's report: when the read happened."""

from corral.balancer.management import read_span
from corral.protocol.messages import ServerStatus, Status

READY = ServerStatus(condition="ready", slots_total=2, slots_processing=1)


def test_the_read_span_lands_on_the_balancers_clock():
    message = Status(READY, read_age=0.3, read_end_age=0.1)
    assert read_span(message, now=10.0) == (9.7, 9.9)


def test_an_agent_that_says_less_gets_a_wider_span_or_none():
    assert read_span(Status(READY, read_age=0.3), now=10.0) == (9.7, None)  # ends on arrival
    assert read_span(Status(READY), now=10.0) == (None, None)  # counted on arrival
    assert read_span(Status(READY, read_end_age=0.1), now=10.0) == (None, None)


def test_an_end_said_before_the_start_is_taken_as_the_start():
    assert read_span(Status(READY, read_age=0.1, read_end_age=0.3), now=10.0) == (9.9, 9.9)
