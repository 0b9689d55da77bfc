"""The scheduler: submit, drain on change, expire; plus a property test over random
interleavings proving a server never gets more requests than it has slots."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from corral.core import (
    Assigned,
    Buffer,
    BufferFull,
    Condition,
    Dispatch,
    Fleet,
    Policy,
    Refused,
    Report,
    RequestInfo,
    Scheduler,
    Wait,
    Waiter,
)


def scheduler(capacity: int = 100, timeout: float = 10) -> Scheduler:
    return Scheduler(Fleet(), Policy(), Buffer(capacity, timeout))


def join(s: Scheduler, name: str, slots: int, model: str = "m", now: float = 0) -> None:
    s.fleet.register(name, name=name, address=name, api_key=None, now=now)
    s.fleet.report(name, Report(Condition.READY, model=model, slots_total=slots), now)


def test_scale_from_zero_buffered_requests_go_to_the_first_server():
    s = scheduler()
    waiters = [s.submit(RequestInfo("/completion"), now=0) for _ in range(3)]
    assert all(isinstance(w, Waiter) for w in waiters)
    join(s, "a", slots=2)
    outcomes = s.assign()
    assert [(o.waiter, o.backend_id) for o in outcomes if isinstance(o, Assigned)] == [
        (waiters[0], "a"),
        (waiters[1], "a"),
    ]
    assert len(s.buffer) == 1
    s.fleet.release("a")
    [third] = s.assign()
    assert isinstance(third, Assigned) and third.waiter is waiters[2]


def test_buffer_full_raises():
    s = scheduler(capacity=1)
    s.submit(RequestInfo("/completion"), now=0)
    with pytest.raises(BufferFull):
        s.submit(RequestInfo("/completion"), now=0)


def test_no_head_of_line_blocking_across_models():
    s = scheduler()
    join(s, "a", 1, model="gemma")
    join(s, "b", 1, model="qwen")
    assert s.submit(RequestInfo("/c", "gemma"), 0) == Dispatch("a")
    assert s.submit(RequestInfo("/c", "qwen"), 0) == Dispatch("b")
    gemma_waiter = s.submit(RequestInfo("/c", "gemma"), 1)
    qwen_waiter = s.submit(RequestInfo("/c", "qwen"), 2)
    s.fleet.release("b")
    [outcome] = s.assign()
    assert isinstance(outcome, Assigned) and outcome.waiter is qwen_waiter
    assert list(s.buffer) == [gemma_waiter]


def test_waiting_request_for_a_model_that_never_came_is_refused():
    s = scheduler()
    waiter = s.submit(RequestInfo("/c", "llama"), 0)
    join(s, "a", 1, model="gemma")
    join(s, "b", 1, model="qwen")
    outcomes = s.assign()
    assert any(isinstance(o, Refused) and o.waiter is waiter for o in outcomes)


def test_expire_times_out_waiters():
    s = scheduler(timeout=5)
    waiter = s.submit(RequestInfo("/c"), now=0)
    assert s.expire(now=6) == [waiter]
    assert len(s.buffer) == 0


# --------------------------------------------------------------------------
# Property test: random interleavings of dispatch, arrival at the server,
# completion, stale reports, joins and leaves.


class FleetMachine(RuleBasedStateMachine):
    """A model of real servers beside the scheduler.

    Each server has fixed slots. A request the balancer dispatched is first "sent",
    then "arrives" at the server (counted in its /slots), then completes. Agents take
    snapshots of their server at any moment and deliver them later (stale reports),
    saying when they read the server, or not. Traffic from elsewhere ("external")
    occupies slots too. Time advances with every step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.s = scheduler(capacity=20, timeout=1e9)
        self.slots: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.arrived: dict[str, int] = {}
        self.external: dict[str, int] = {}
        self.snapshots: dict[str, list[tuple[float, int]]] = {}
        self.timed: dict[str, bool] = {}  # the last report said when it was read
        self.next_id = 0
        self.now = 0.0

    # -- servers come and go
    @rule(slots=st.integers(1, 4), model=st.sampled_from(["m", "n"]))
    def join(self, slots: int, model: str) -> None:
        name = f"s{self.next_id}"
        self.next_id += 1
        self.slots[name] = slots
        self.sent[name] = self.arrived[name] = self.external[name] = 0
        self.snapshots[name] = []
        self.timed[name] = True
        join(self.s, name, slots, model, self.now)
        self._drain()

    @precondition(lambda self: self.slots)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.slots)))
        self.s.fleet.remove(name)
        tables = (self.slots, self.sent, self.arrived, self.external, self.snapshots, self.timed)
        for table in tables:
            del table[name]
        self._drain()  # the balancer drains on every change (models may have changed)

    # -- requests
    @rule(model=st.sampled_from([None, "m", "n"]))
    def submit(self, model: str | None) -> None:
        self.now += 0.01
        try:
            result = self.s.submit(RequestInfo("/completion", model), self.now)
        except BufferFull:
            return
        if isinstance(result, Dispatch):
            self._dispatched(result.backend_id)

    @precondition(lambda self: any(self.sent.values()))
    @rule(data=st.data())
    def arrive(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(n for n, c in self.sent.items() if c)))
        self.sent[name] -= 1
        self.arrived[name] += 1

    @precondition(lambda self: any(self.arrived.values()))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(n for n, c in self.arrived.items() if c)))
        self.now += 0.01
        self.arrived[name] -= 1
        self.s.fleet.release(name, self.now)
        self._drain()

    # -- reports
    @precondition(lambda self: self.slots)
    @rule(data=st.data())
    def snapshot(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.slots)))
        self.now += 0.01
        busy = self.arrived[name] + self.external[name]
        self.snapshots[name].append((self.now, min(busy, self.slots[name])))

    @precondition(lambda self: any(self.snapshots.values()))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(n for n, q in self.snapshots.items() if q)))
        read_at, busy = self.snapshots[name].pop(0)
        timed = data.draw(st.booleans())
        self.now += 0.01
        backend = self.s.fleet.get(name)
        report = Report(
            Condition.READY,
            model=backend.model,
            slots_total=self.slots[name],
            slots_processing=busy,
            read_at=read_at if timed else None,
        )
        self.timed[name] = timed
        self.s.fleet.report(name, report, self.now)
        self._drain()

    def _dispatched(self, name: str) -> None:
        self.sent[name] += 1

    def _drain(self) -> None:
        for outcome in self.s.assign(self.now):
            if isinstance(outcome, Assigned):
                self._dispatched(outcome.backend_id)

    # -- what must always hold
    @invariant()
    def never_more_requests_than_slots(self) -> None:
        for name, slots in self.slots.items():
            ours = self.sent[name] + self.arrived[name]
            assert ours <= slots, f"{self.s.fleet.get(name)!r} has {ours} requests"
            assert self.s.fleet.get(name).reserved == ours

    @invariant()
    def no_phantom_load_from_timed_reports(self) -> None:
        # every request on a server came through us: a report that says when it was
        # read never makes a finished request look like load from elsewhere
        if type(self) is not FleetMachine:
            return
        for name in self.slots:
            if self.timed[name]:
                backend = self.s.fleet.get(name)
                assert backend.external == 0, backend

    @invariant()
    def index_matches_agents(self) -> None:
        self.s.fleet.check_index()

    @invariant()
    def nobody_waits_while_a_slot_is_free_for_it(self) -> None:
        for waiter in self.s.buffer.heads():
            assert isinstance(self.s.policy.pick(self.s.fleet, waiter.request), Wait), waiter


class ExternalLoadMachine(FleetMachine):
    """The same, with requests from elsewhere occupying slots."""

    @precondition(lambda self: self.slots)
    @rule(data=st.data(), delta=st.sampled_from([-1, 1]))
    def external_load(self, data: st.DataObject, delta: int) -> None:
        name = data.draw(st.sampled_from(sorted(self.slots)))
        self.external[name] = max(0, self.external[name] + delta)

    @invariant()
    def never_more_requests_than_slots(self) -> None:
        # With external traffic the balancer counts what the last report said:
        # its reservations plus the external estimate never exceed the slots.
        for name, slots in self.slots.items():
            backend = self.s.fleet.get(name)
            assert backend.reserved == self.sent[name] + self.arrived[name]
            assert backend.free >= 0
            assert backend.reserved <= slots


TestFleetMachine = FleetMachine.TestCase
TestFleetMachine.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestExternalLoad = ExternalLoadMachine.TestCase
TestExternalLoad.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_one_class_one_tenant_never_scans_the_fleet(monkeypatch: pytest.MonkeyPatch):
    """The pick's cost must not grow with the fleet (issue #2's target). The queueing
    work added a scan of every backend (``_slots``) to every dispatch, for headroom
    that is 0 when no other class or tenant has demand: benchmarks/prefix_cost.py
    showed pick+update going from 75 us at 100 backends to 480 us at 1,000."""
    s = scheduler()
    for i in range(4):
        join(s, f"s{i}", 2)

    def scan(model: str | None) -> tuple[int, int]:
        raise AssertionError("the common path scanned the fleet")

    monkeypatch.setattr(s, "_slots", scan)
    for now in range(8):
        assert isinstance(s.submit(RequestInfo("/completion", "m"), now=float(now)), Dispatch)
    s.fleet.release("s0", 9.0)
    s.assign(9.0)
