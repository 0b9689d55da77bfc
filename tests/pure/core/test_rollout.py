"""Rolling a desired state through supervised agents: who changes when."""

from corral.core import Condition, Fleet, Report
from corral.core.rollout import done, plan, ready_to_apply

SUPERVISED = {"state": "ready", "restarts": 0}


def fleet_of(n: int, applied: int = 0) -> Fleet:
    fleet = Fleet()
    for i in range(n):
        name = f"s{i}"
        fleet.register(name, name=name, address=name, api_key=None, now=0)
        fleet.report(name, report(applied), now=0)
    return fleet


def report(applied: int = 0, failed: int | None = None, applying: bool = False) -> Report:
    return Report(
        Condition.READY,
        model="m",
        slots_total=2,
        supervisor=SUPERVISED,
        applied_generation=applied,
        failed_generation=failed,
        applying=applying,
    )


def test_nothing_to_do_without_a_desired_state():
    assert plan(fleet_of(3), generation=0) == []


def test_one_at_a_time_by_default_and_never_all():
    fleet = fleet_of(3)
    assert plan(fleet, 1) == ["s0"]
    fleet.cordon("s0", now=0)
    assert plan(fleet, 1) == []  # one is changing already
    assert plan(fleet_of(3), 1, share=1.0) == ["s0", "s1"]  # all but one
    assert plan(fleet_of(1), 1, share=1.0) == ["s0"]  # a lone agent has to go


def test_agents_on_the_generation_are_left_alone():
    fleet = fleet_of(2, applied=1)
    assert plan(fleet, 1) == []
    assert plan(fleet, 2) == ["s0"]


def test_a_failure_halts_the_rollout():
    fleet = fleet_of(3)
    fleet.report("s0", report(applied=0, failed=1), now=1)
    assert plan(fleet, 1) == []
    assert plan(fleet, 2) == ["s0"]  # a new desired state starts again


def test_unsupervised_agents_are_not_touched():
    fleet = Fleet()
    fleet.register("a", name="a", address="a", api_key=None, now=0)
    fleet.report("a", Report(Condition.READY, model="m", slots_total=2), now=0)
    assert plan(fleet, 1) == []


def test_drained_agent_is_told_once_its_requests_finish():
    fleet = fleet_of(2)
    fleet.reserve("s0")
    backend = fleet.cordon("s0", now=10)
    assert not backend.routable and backend.state.value == "draining"
    assert not ready_to_apply(backend, now=11, drain_timeout=60)
    fleet.release("s0")
    assert ready_to_apply(backend, now=11, drain_timeout=60)
    fleet.reserve("s1")
    assert ready_to_apply(fleet.cordon("s1", now=0), now=61, drain_timeout=60)  # timed out


def test_done_after_applying_or_failing():
    fleet = fleet_of(1)
    backend = fleet.get("s0")
    assert not done(backend, 1)
    fleet.report("s0", report(applied=0, applying=True), now=1)
    assert not done(backend, 1)
    fleet.report("s0", report(applied=1), now=2)
    assert done(backend, 1)
    fleet.report("s0", report(applied=1, failed=2), now=3)
    assert done(backend, 2)
