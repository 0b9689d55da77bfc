"""Fleet state transitions: whole states compared, illegal ones raise and change nothing."""

import dataclasses

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from corral.core import Condition, Fleet, FleetError, Report
from corral.core.fleet import BackendState


def ready(slots: int = 4, busy: int = 0, model: str = "m") -> Report:
    return Report(Condition.READY, model=model, slots_total=slots, slots_processing=busy)


def fleet_with(*specs: tuple[str, int]) -> Fleet:
    fleet = Fleet()
    for name, slots in specs:
        fleet.register(name, name=name, address=f"http://{name}", api_key=None, now=0)
        fleet.report(name, ready(slots), now=0)
    return fleet


def test_registered_agent_is_loading_until_it_reports():
    fleet = Fleet()
    backend = fleet.register("a", name="a", address="http://a", api_key=None, now=0)
    assert backend.state is BackendState.LOADING
    assert not backend.routable
    assert list(fleet.candidates([None])) == []
    fleet.report("a", ready(2), now=1)
    assert backend.state is BackendState.READY
    assert [a.id for a in fleet.candidates(["m"])] == ["a"]
    fleet.check_index()


def test_reserve_and_release_move_free_slots():
    fleet = fleet_with(("a", 2))
    fleet.reserve("a")
    assert fleet.get("a").free == 1
    fleet.reserve("a")
    assert fleet.get("a").free == 0
    assert list(fleet.candidates(["m"])) == []
    with pytest.raises(FleetError, match="no free slot"):
        fleet.reserve("a")
    assert fleet.get("a").reserved == 2  # the failed reserve changed nothing
    fleet.release("a")
    assert fleet.get("a").free == 1
    fleet.check_index()


def test_release_without_reservation_is_illegal():
    fleet = fleet_with(("a", 2))
    version = fleet.version
    with pytest.raises(FleetError, match="without a reservation"):
        fleet.release("a")
    assert fleet.version == version


def test_release_after_agent_left_is_a_no_op():
    fleet = fleet_with(("a", 2))
    fleet.reserve("a")
    fleet.remove("a")
    assert fleet.release("a") is None
    assert len(fleet) == 0


def test_double_register_and_unknown_backend_raise():
    fleet = fleet_with(("a", 2))
    with pytest.raises(FleetError, match="already registered"):
        fleet.register("a", name="a", address="x", api_key=None, now=0)
    with pytest.raises(FleetError, match="unknown backend"):
        fleet.report("zzz", ready(), now=0)


def test_external_requests_count_against_free_slots():
    fleet = fleet_with(("a", 4))
    # 3 slots busy on the server, none of them ours: someone else uses it.
    fleet.report("a", ready(4, busy=3), now=1)
    assert fleet.get("a").external == 3
    assert fleet.get("a").free == 1


def test_our_own_requests_are_not_counted_twice():
    fleet = fleet_with(("a", 4))
    fleet.reserve("a")
    fleet.reserve("a")
    # The server now reports our two requests as processing.
    fleet.report("a", ready(4, busy=2), now=1)
    backend = fleet.get("a")
    assert (backend.external, backend.free) == (0, 2)
    # One finishes: its slot is free at once, before any report.
    fleet.release("a")
    assert backend.free == 3


def test_stale_report_never_overloads():
    fleet = fleet_with(("a", 2))
    fleet.reserve("a")
    fleet.reserve("a")
    fleet.release("a")
    fleet.release("a")
    # A report taken while both ran arrives after both finished.
    fleet.report("a", ready(2, busy=2), now=1)
    assert fleet.get("a").free == 0  # conservative until the next report
    fleet.report("a", ready(2, busy=0), now=2)
    assert fleet.get("a").free == 2


def read_at(report: Report, when: float, until: float | None = None) -> Report:
    """The report of a read that began at ``when`` and ended at ``until`` (None: unsaid)."""
    return dataclasses.replace(report, read_at=when, read_end=until)


def test_requests_that_finish_while_the_agent_reads_are_no_phantom_load():
    fleet = fleet_with(("a", 2))
    fleet.reserve("a", now=1.0)
    fleet.reserve("a", now=1.0)
    # the agent starts reading at 2.0 (both busy); one finishes at 2.1, one at 2.2;
    # the report arrives at 2.3
    fleet.release("a", now=2.1)
    fleet.release("a", now=2.2)
    fleet.report("a", read_at(ready(2, busy=2), 2.0), now=2.3)
    backend = fleet.get("a")
    assert (backend.reserved_at_report, backend.external, backend.free) == (2, 0, 2)


def test_a_request_sent_while_the_agent_reads_is_no_phantom_load():
    # The agent asks /slots at 2.0; llama-server answers between two batches, at 2.08,
    # and counts the request we sent at 2.05 meanwhile. Counted as of 2.0, it would
    # look like load from elsewhere and keep a slot idle until the next report.
    for until in (2.1, None):  # the read's end said, or not (agents before it)
        fleet = fleet_with(("a", 2))
        fleet.reserve("a", now=1.0)
        fleet.reserve("a", now=2.05)
        fleet.report("a", read_at(ready(2, busy=2), 2.0, until), now=2.15)
        backend = fleet.get("a")
        assert (backend.reserved_at_report, backend.external) == (2, 0), until
        fleet.release("a", now=2.2)
        fleet.release("a", now=2.3)
        assert backend.free == 2, backend  # both slots usable, no report needed


def test_a_request_sent_and_finished_while_the_agent_reads_is_no_phantom_load():
    fleet = fleet_with(("a", 2))
    fleet.reserve("a", now=2.01)  # reaches the server, which counts it at 2.05
    fleet.release("a", now=2.09)
    fleet.report("a", read_at(ready(2, busy=1), 2.0, 2.1), now=2.12)
    backend = fleet.get("a")
    assert (backend.reserved_at_report, backend.external, backend.free) == (1, 0, 2)


def test_requests_sent_after_the_read_ended_are_not_in_the_report():
    fleet = fleet_with(("a", 4))
    # someone else keeps 2 slots busy; the read took 5.0 to 5.02; we send a request
    # at 5.05, before the report arrives
    fleet.reserve("a", now=5.05)
    fleet.report("a", read_at(ready(4, busy=2), 5.0, 5.02), now=5.1)
    backend = fleet.get("a")
    # counting on arrival would say 1 external; the read saw only the 2 others
    assert (backend.reserved_at_report, backend.external, backend.free) == (0, 2, 1)


def test_a_read_that_does_not_say_when_it_ended_may_undercount_outside_load():
    # The same without the read's end: it may have counted our request, so the fleet
    # takes the 2 busy slots for ours and one other (never more than elsewhere sends).
    fleet = fleet_with(("a", 4))
    fleet.reserve("a", now=5.05)
    fleet.report("a", read_at(ready(4, busy=2), 5.0), now=5.1)
    backend = fleet.get("a")
    assert (backend.reserved_at_report, backend.external, backend.free) == (1, 1, 2)


def test_a_read_must_not_end_before_it_began():
    with pytest.raises(ValueError, match="end before it began"):
        read_at(ready(), 2.0, 1.9)
    with pytest.raises(ValueError, match="end before it began"):
        dataclasses.replace(ready(), read_end=1.0)


def test_a_finished_requests_slot_is_free_at_once_though_the_last_report_shows_it_busy():
    # The agent reads /slots at most every 1.25 s, and every 30 s while the server
    # looks idle: a finished request must not wait for the next report to free its slot.
    fleet = fleet_with(("a", 2))
    fleet.reserve("a", now=1.0)
    fleet.reserve("a", now=1.0)
    fleet.report("a", read_at(ready(2, busy=2), 1.5, 1.6), now=1.6)
    backend = fleet.get("a")
    fleet.release("a", now=1.7)
    assert (backend.external, backend.free) == (0, 1)
    fleet.reserve("a", now=1.8)  # the freed slot is used at once...
    fleet.release("a", now=1.9)
    fleet.release("a", now=2.0)
    assert (backend.external, backend.free) == (0, 2)  # ...and both, with no report since
    # a report of the read that began while they ran changes nothing
    fleet.report("a", read_at(ready(2, busy=1), 1.85, 1.95), now=2.1)
    assert (backend.external, backend.free) == (0, 2)
    fleet.check_index()


def test_a_report_older_than_the_log_counts_on_arrival():
    from corral.core.fleet import LOG_SECONDS

    fleet = fleet_with(("a", 2))
    fleet.reserve("a", now=0.0)
    fleet.reserve("a", now=0.0)
    fleet.release("a", now=LOG_SECONDS + 5)  # pushes the reserves out of the log
    # read before the forgotten reserves: what happened since is unknown
    fleet.report("a", read_at(ready(2, busy=2), -1.0), now=LOG_SECONDS + 6)
    assert fleet.get("a").reserved_at_report == 1  # in flight on arrival: conservative
    # read after them: everything since is in the log
    fleet.report("a", read_at(ready(2, busy=2), 1.0), now=LOG_SECONDS + 6)
    assert fleet.get("a").reserved_at_report == 2


def test_an_event_without_a_time_falls_back_to_arrival_until_the_next_timed_one():
    fleet = fleet_with(("a", 2))
    fleet.reserve("a", now=1.0)
    fleet.release("a")  # no clock: when it happened is unknown
    fleet.report("a", read_at(ready(2, busy=1), 0.5), now=2.0)
    assert fleet.get("a").reserved_at_report == 0
    fleet.reserve("a", now=3.0)
    fleet.release("a", now=3.5)
    fleet.report("a", read_at(ready(2, busy=1), 3.2), now=4.0)
    assert fleet.get("a").reserved_at_report == 1


def test_set_aside_until_ready_report():
    fleet = fleet_with(("a", 2), ("b", 2))
    fleet.set_aside("a")
    assert [x.id for x in fleet.candidates(["m"])] == ["b"]
    assert "set-aside" in repr(fleet.get("a"))
    fleet.report("a", ready(2), now=1)
    assert {x.id for x in fleet.candidates(["m"])} == {"a", "b"}
    fleet.check_index()


def test_heartbeat_expiry_marks_unhealthy_and_a_heartbeat_restores():
    fleet = fleet_with(("a", 2))
    assert fleet.expire(now=4, timeout=5) == []
    [stale] = fleet.expire(now=6, timeout=5)
    assert stale.state is BackendState.UNHEALTHY
    assert list(fleet.candidates(["m"])) == []
    fleet.heartbeat("a", now=7)
    assert fleet.get("a").state is BackendState.READY
    fleet.check_index()


def test_candidates_most_free_first_and_ties_rotate():
    fleet = fleet_with(("a", 4), ("b", 4), ("c", 2))
    order = [x.id for x in fleet.candidates(["m"])]
    assert order[:2] in (["a", "b"], ["b", "a"]) and order[2] == "c"
    first = order[0]
    fleet.reserve(first)
    fleet.release(first)
    # the touched agent goes to the back of its bucket: the other one is first now
    assert next(iter(fleet.candidates(["m"]))).id != first


def test_models_are_reference_counted():
    fleet = fleet_with(("a", 2), ("b", 2))
    fleet.report("b", ready(2, model="other"), now=1)
    assert fleet.models() == ["m", "other"]
    fleet.remove("a")
    assert fleet.models() == ["other"]


def test_repr_reads_at_a_glance():
    fleet = fleet_with(("gpu-3", 4))
    fleet.reserve("gpu-3")
    assert repr(fleet.get("gpu-3")) == ("<Backend gpu-3 READY slots 1/4 busy (reserved 1) model=m>")
    assert repr(fleet) == "<Fleet [Backends: 1, 1 ready | Slots: 1 busy, 3 idle | Models: m]>"


def test_report_rejects_negative_counts():
    with pytest.raises(ValueError):
        Report(Condition.READY, slots_total=-1)


def test_busy_slot_reports_do_not_wake_the_rollout_but_generations_do():
    fleet = fleet_with(("a", 4))
    start = fleet.membership
    for busy in (1, 2, 3, 0):  # what every agent sends every second under load
        fleet.report("a", ready(4, busy=busy), now=1)
    assert fleet.membership == start
    import dataclasses

    fleet.report("a", dataclasses.replace(ready(4), applied_generation=2), now=2)
    assert fleet.membership == start + 1
    fleet.report("a", Report(Condition.LOADING, model="m", slots_total=4), now=3)
    assert fleet.membership == start + 2


def test_a_balancer_never_holds_more_than_its_share():
    import dataclasses

    fleet = fleet_with(("a", 2))
    fleet.report("a", dataclasses.replace(ready(2), slots_share=1), now=1)
    backend = fleet.get("a")
    assert backend.free == 1
    fleet.reserve("a")
    assert backend.free == 0  # the other slot is the other balancer's
    assert [b.id for b in fleet.candidates(["m"])] == []
    # the other balancer's request shows as external load: still one of ours, no more
    fleet.report("a", dataclasses.replace(ready(2, busy=2), slots_share=1), now=2)
    assert backend.free == 0
    fleet.release("a")
    assert backend.free == 1  # ours is free at once; the other's is still busy
    fleet.report("a", dataclasses.replace(ready(2, busy=1), slots_share=1), now=3)
    assert backend.free == 1
    # the other balancer left: its agent gives us the whole server
    fleet.report("a", dataclasses.replace(ready(2), slots_share=2), now=4)
    assert backend.free == 2
    fleet.check_index()
    with pytest.raises(ValueError, match="share"):
        dataclasses.replace(ready(2), slots_share=-1)


def test_the_fleet_knows_which_apis_some_server_answers():
    from corral.core import Condition, Fleet, Report

    fleet = Fleet()
    fleet.register("a", name="a", address="http://a", api_key=None, now=0)
    assert fleet.answers("llamacpp") and fleet.answers("openai")  # before any report
    assert not fleet.answers("ollama")
    fleet.report("a", Report(Condition.READY, apis=frozenset({"openai", "ollama"})), now=0)
    assert fleet.answers("ollama") and not fleet.answers("llamacpp")
    fleet.remove("a")
    assert not fleet.answers("openai")


class ReadSpanMachine(RuleBasedStateMachine):
    """One server read by its agent while the balancer sends it requests.

    Each of our requests is reserved, reaches the server, ends there and is released,
    in that order; a read is asked, the server counts its busy slots, the answer comes
    and the report arrives, each at its own step, with requests moving in between.
    After every report the fleet's ``external`` must lie in the documented bounds:
    never above the load from elsewhere the server counted (no phantom load, no slot
    left idle), and below it by at most our requests reserved or released during the
    read plus ours not on the server when it counted."""

    outside = False  # whether requests from elsewhere reach the server

    def __init__(self) -> None:
        super().__init__()
        self.fleet = Fleet()
        self.now = 0.0
        self.slots = 0
        self.sent = self.on = self.done = 0  # ours: reserved, on the server, ended there
        self.others = 0  # requests from elsewhere on the server
        self.log: list[float] = []  # when ours were reserved or released
        self.asked: float | None = None
        self.counted: tuple[int, int, int, int] | None = None  # busy, others, ours, off
        self.answered: float | None = None

    @initialize(slots=st.integers(1, 4))
    def start(self, slots: int) -> None:
        self.slots = slots
        self.fleet.register("a", name="a", address="http://a", api_key=None, now=0)
        self.fleet.report("a", ready(slots), now=0)

    def tick(self) -> None:
        self.now += 0.01

    # -- our requests
    @precondition(lambda self: self.slots)
    @rule()
    def reserve(self) -> None:
        self.tick()
        if self.fleet.get("a").free > 0:
            self.fleet.reserve("a", now=self.now)
            self.sent += 1
            self.log.append(self.now)

    @precondition(lambda self: self.sent)
    @rule()
    def reach_the_server(self) -> None:
        self.tick()
        self.sent -= 1
        self.on += 1

    @precondition(lambda self: self.on)
    @rule()
    def end_on_the_server(self) -> None:
        self.tick()
        self.on -= 1
        self.done += 1

    @precondition(lambda self: self.done)
    @rule()
    def release(self) -> None:
        self.tick()
        self.done -= 1
        self.fleet.release("a", now=self.now)
        self.log.append(self.now)

    # -- requests from elsewhere
    @precondition(lambda self: self.outside and self.slots)
    @rule(more=st.booleans())
    def outside_load(self, more: bool) -> None:
        self.tick()
        if more and self.on + self.others < self.slots:
            self.others += 1
        elif not more and self.others:
            self.others -= 1

    # -- the agent's read, step by step
    @precondition(lambda self: self.slots and self.asked is None)
    @rule()
    def ask(self) -> None:
        self.tick()
        self.asked = self.now

    @precondition(lambda self: self.asked is not None and self.counted is None)
    @rule()
    def count(self) -> None:
        self.tick()
        busy = min(self.on + self.others, self.slots)
        self.counted = (busy, self.others, self.on, self.sent + self.done)

    @precondition(lambda self: self.counted is not None and self.answered is None)
    @rule()
    def answer(self) -> None:
        self.tick()
        self.answered = self.now

    @precondition(lambda self: self.answered is not None)
    @rule(says_end=st.booleans())
    def report(self, says_end: bool) -> None:
        assert self.asked is not None and self.counted is not None
        self.tick()
        start, end = self.asked, self.answered if says_end else self.now
        busy, others, ours, off = self.counted
        report = read_at(ready(self.slots, busy), start, end if says_end else None)
        backend = self.fleet.report("a", report, now=self.now)
        churn = sum(1 for when in self.log if start < when <= end)
        assert backend.external <= others, f"phantom load: {backend!r}, {others} others"
        if ours + others <= self.slots:  # the server counted everything it ran
            shortfall = backend.reserved_at_report - ours
            assert backend.external >= others - shortfall, backend
            assert shortfall <= churn + off, (shortfall, churn, off)
        self.asked = self.counted = self.answered = None

    # -- what always holds
    @invariant()
    def never_more_of_ours_than_slots(self) -> None:
        if self.slots:
            backend = self.fleet.get("a")
            assert backend.reserved == self.sent + self.on + self.done <= self.slots
            if not self.outside:  # nothing from elsewhere: nothing counted as such
                assert backend.external == 0, backend
                assert backend.free == self.slots - backend.reserved
            self.fleet.check_index()


class OutsideLoadReadSpanMachine(ReadSpanMachine):
    """The same with requests from elsewhere on the server."""

    outside = True


TestReadSpan = ReadSpanMachine.TestCase
TestReadSpan.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestOutsideLoadReadSpan = OutsideLoadReadSpanMachine.TestCase
TestOutsideLoadReadSpan.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
