"""Queue disciplines: order, classes, aging, the interactive reserve, tenants' limits
and fair shares, admission by bytes; property tests for the starvation bound and
the slots."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core import Assigned, Condition, Fleet, Policy, Report, RequestInfo, Scheduler, Waiter
from corral.core.queueing import (
    BufferFull,
    Priority,
    QueueOptions,
    Tenant,
    make_queue,
)

B, I, H = Priority.BATCH, Priority.INTERACTIVE, Priority.HIGH  # noqa: E741


def req(priority: Priority = I, tenant: str = "default", size: int = 0) -> RequestInfo:
    return RequestInfo("/completion", "m", priority=priority, tenant=tenant, size=size)


def sched(
    queue: str = "priority",
    slots: int = 0,
    reserve: float = 0.0,
    aging: float = 10.0,
    tenants: tuple[Tenant, ...] = (),
    capacity: int = 1000,
    max_bytes: int | None = None,
) -> Scheduler:
    options = QueueOptions(
        capacity, 60.0, max_bytes, aging=aging, tenants={t.name: t for t in tenants}
    )
    s = Scheduler(Fleet(), Policy(), make_queue(queue, options), reserve=reserve)
    if slots:
        s.fleet.register("a", name="a", address="a", api_key=None, now=0)
        s.fleet.report("a", Report(Condition.READY, model="m", slots_total=slots), 0)
    return s


def free_one(s: Scheduler, request: RequestInfo, now: float) -> list[RequestInfo]:
    """A request ends: release its slot and return the requests that got one."""
    s.finished(request, now)
    s.fleet.release("a", now)
    return [o.waiter.request for o in s.assign(now) if isinstance(o, Assigned)]


def test_fifo_ignores_classes():
    s = sched("fifo", slots=1)
    first = req(I)
    assert not isinstance(s.submit(first, 0), Waiter)
    s.submit(batch := req(B), 1)
    s.submit(req(H), 2)
    assert free_one(s, first, 3) == [batch]


def test_priority_serves_higher_classes_first_and_arrival_order_within():
    s = sched(slots=1)
    first = req(I)
    s.submit(first, 0)
    batch, i1, h, i2 = req(B), req(I), req(H), req(I)
    for n, r in enumerate((batch, i1, h, i2)):
        assert isinstance(s.submit(r, n), Waiter)
    served = []
    running = first
    for now in (5, 6, 7):
        [running] = free_one(s, running, now)
        served.append(running)
    assert served == [h, i1, i2]
    assert free_one(s, running, 8) == []  # the one slot is the interactive users' headroom
    assert [o.waiter.request for o in s.assign(8 + 3600)] == [batch]  # idle: batch runs


def test_batch_leaves_the_reserve_free():
    s = sched(slots=4, reserve=0.5)
    batch = [req(B) for _ in range(4)]
    outcomes = [s.submit(r, 0) for r in batch]
    assert [isinstance(o, Waiter) for o in outcomes] == [False, False, True, True]
    assert s.fleet.get("a").free == 2  # half the slots stay for interactive traffic
    i = req(I)
    assert not isinstance(s.submit(i, 0), Waiter)  # an interactive request goes at once
    assert free_one(s, i, 1) == []  # the freed slot is in the reserve: batch waits


def test_batch_never_takes_a_freed_slot_an_interactive_request_waits_for():
    s = sched(slots=1)
    running = req(I)
    s.submit(running, 0)
    s.submit(batch := req(B), 0)
    s.submit(inter := req(I), 1)
    assert free_one(s, running, 2) == [inter]
    assert free_one(s, inter, 3) == []  # interactive traffic was seen lately
    assert [o.waiter.request for o in s.assign(3600)] == [batch]


def test_a_class_without_a_slot_for_the_aging_time_is_served_first():
    s = sched(slots=1, aging=10)
    running = req(H)
    s.submit(running, 0)
    s.submit(inter := req(I), 0)
    for now in range(1, 10):  # high-class traffic keeps the one slot busy
        s.submit(req(H), now)
        [running] = free_one(s, running, now)
        assert running.priority is H
    s.submit(req(H), 10)
    assert free_one(s, running, 10) == [inter]  # waited 10 s: due, served next


def test_a_due_batch_request_goes_first_but_keeps_the_reserve():
    s = sched(slots=2, reserve=0.5, aging=5)  # floor(0.5 * 2) = 1 slot stays free
    r = req(B)
    assert not isinstance(s.submit(r, 0), Waiter)
    waiting = req(B)
    assert isinstance(s.submit(waiting, 0), Waiter)
    assert s.assign(4) == []
    assert s.assign(5) == []  # due, but the reserve holds even so
    assert free_one(s, r, 6) == [waiting]  # it runs on the capacity that frees


def test_batch_leaves_headroom_for_interactive_traffic_seen_lately():
    """A batch request holds its slot for long: the slots it takes must not be ones
    the interactive users (four slots lately) will need meanwhile."""
    s = sched(slots=8)
    users = [req(I) for _ in range(4)]
    for r in users:
        assert not isinstance(s.submit(r, 0), Waiter)
    batch = [req(B) for _ in range(8)]
    outcomes = [s.submit(r, 30) for r in batch]
    assert all(isinstance(o, Waiter) for o in outcomes)  # headroom 4 + 2 * sqrt(4) = 8: all of it
    for r in users:  # the users leave; their demand fades, so batch waits a while
        free_one(s, r, 31)
    assert s.fleet.get("a").free == 8
    assert s.assign(33) == []  # seen 2 s ago: still all headroom
    assert 0 < len(s.assign(60)) < 8  # fading: some of the fleet
    s.assign(2000)
    assert s.fleet.get("a").free == 0  # long idle: the batch work runs on the whole fleet
    assert not s.buffer


def test_fair_share_counts_slot_seconds_not_requests():
    """Both tenants flood one slot; ``long``'s requests hold it three times as long,
    so ``short`` gets about three starts for each of ``long``'s."""
    s = sched("fair", slots=1, tenants=(Tenant("long"), Tenant("short")))
    first = req(tenant="long")
    s.submit(first, 0)
    for n in range(40):
        s.submit(req(tenant="long"), 0.01 * n)
        s.submit(req(tenant="short"), 0.01 * n)
    now, running, served = 1.0, first, []
    for _ in range(40):
        now += 3.0 if running.tenant == "long" else 1.0
        [running] = free_one(s, running, now)
        served.append(running.tenant)
    assert 26 <= served.count("short") <= 32, served


def test_fair_keeps_headroom_for_a_light_tenant_while_another_floods():
    s = sched("fair", slots=8, tenants=(Tenant("a"), Tenant("b")))
    light = [req(tenant="a") for _ in range(2)]
    for n, r in enumerate(light):
        s.submit(r, n)
    flood_requests = [req(tenant="b") for _ in range(50)]  # kept: ids stay unique
    flood = [s.submit(r, 60) for r in flood_requests]
    b_running = s.running("b")
    assert 1 <= b_running <= 8 - 2 - 3  # 2 + 2 * sqrt(2), rounded: 5 slots stay a's
    assert not isinstance(s.submit(late := req(tenant="a"), 61), Waiter)  # a goes at once
    assert late.tenant == "a"
    assert sum(isinstance(o, Waiter) for o in flood) == 50 - b_running


def test_a_tenant_yielding_to_another_still_gets_one_slot():
    s = sched("fair", slots=2, tenants=(Tenant("a"), Tenant("b")))
    a, b1, b2, b3 = req(tenant="a"), req(tenant="b"), req(tenant="b"), req(tenant="b")
    s.submit(a, 0)  # a's headroom: 1 + 2 * sqrt(1) = 3, more than the two slots
    assert isinstance(s.submit(b1, 50), Waiter) is False  # nothing waits: b takes it
    s.finished(b1, 51)
    s.fleet.release("a", 51)
    s.submit(b2, 52)
    assert isinstance(s.submit(b3, 52), Waiter)
    assert s.running("b") == 1


def test_tenant_over_its_concurrency_limit_waits_even_with_free_slots():
    s = sched(slots=4, tenants=(Tenant("t", max_concurrent=1),))
    first, second = req(tenant="t"), req(tenant="t")
    assert not isinstance(s.submit(first, 0), Waiter)
    assert isinstance(s.submit(second, 0), Waiter)
    assert s.assign(1) == []
    assert s.running("t") == 1
    assert free_one(s, first, 2) == [second]
    assert s.running("t") == 1


def test_tenant_past_its_buffer_share_is_refused():
    tenants = (Tenant("a"), Tenant("b"))  # three tenants with default: a third each
    s = sched(slots=0, tenants=tenants, capacity=9)
    for _ in range(3):
        s.submit(req(tenant="a"), 0)
    with pytest.raises(BufferFull, match="'a'"):
        s.submit(req(tenant="a"), 0)
    s.submit(req(tenant="b"), 0)  # b still has its share


def test_admission_counts_bytes():
    s = sched(slots=0, max_bytes=100)
    big = req(size=150)
    s.submit(big, 0)  # an empty buffer takes even a body over the limit
    with pytest.raises(BufferFull, match="bytes"):
        s.submit(req(size=1), 0)
    assert s.buffer.bytes == 150
    s.buffer.cancel(next(iter(s.buffer)))
    assert s.buffer.bytes == 0
    s.submit(req(size=60), 0)
    s.submit(req(size=40), 0)
    with pytest.raises(BufferFull):
        s.submit(req(size=1), 0)


def test_fair_share_follows_weights_while_the_fleet_is_full():
    s = sched("fair", slots=1, tenants=(Tenant("big", weight=2), Tenant("small")))
    running = req(tenant="big")
    s.submit(running, 0)
    for n in range(30):  # "big" floods first, "small" arrives after
        s.submit(req(tenant="big"), n / 100)
    for n in range(30):
        s.submit(req(tenant="small"), 1 + n / 100)
    served = []
    for now in range(2, 32):
        [running] = free_one(s, running, now)
        served.append(running.tenant)
    assert served.count("big") == 20 and served.count("small") == 10
    assert "small" in served[:3]  # not behind the whole burst


def test_fair_share_with_fifo_would_starve_the_late_tenant():
    s = sched("fifo", slots=1, tenants=(Tenant("big"), Tenant("small")))
    running = req(tenant="big")
    s.submit(running, 0)
    for n in range(10):
        s.submit(req(tenant="big"), n / 100)
    s.submit(req(tenant="small"), 1)
    served = []
    for now in range(2, 12):
        [running] = free_one(s, running, now)
        served.append(running.tenant)
    assert served == ["big"] * 10  # the discipline makes the difference above


def test_unknown_discipline_is_a_clear_error():
    with pytest.raises(ValueError, match="fifo, priority, fair"):
        make_queue("lifo", QueueOptions())


def test_header_class_is_capped_by_the_key():
    t = Tenant("t", priority=B, max_priority=I)
    assert t.priority_for(None) is B
    assert t.priority_for("high") is I
    assert t.priority_for("batch") is B
    assert t.priority_for("urgent!") is B  # a typo never raises a class
    with pytest.raises(ValueError):
        Tenant("t", priority=I, max_priority=B)


# ------------------------------------------------------------------ properties
@settings(max_examples=60, deadline=None)
@given(
    queue=st.sampled_from(["priority", "fair"]),
    slots=st.integers(1, 4),
    reserve=st.sampled_from([0.0, 0.25, 0.5, 0.75]),
    aging=st.sampled_from([1.0, 3.0]),
    steps=st.lists(
        st.tuples(
            st.floats(0.05, 0.5),  # time to the next event
            st.lists(st.sampled_from([B, I, H]), max_size=4),  # arrivals
            st.sampled_from(["x", "y"]),  # their tenant
        ),
        min_size=10,
        max_size=80,
    ),
)
def test_no_class_waits_past_the_aging_bound_and_slots_are_never_exceeded(
    queue, slots, reserve, aging, steps
):
    """Overloaded fleet: each step one request ends (so a slot frees at least every
    0.5 s) and up to four arrive. While ``high`` or ``interactive`` requests wait,
    their class gets a slot at least once per ``aging`` seconds plus the gap to the
    next freed slot; ``batch`` runs on idle capacity only, and once the arrivals
    stop every request, batch included, completes (nothing is starved forever)."""
    tenants = (Tenant("x", weight=3), Tenant("y"))
    s = sched(queue, slots=slots, reserve=reserve, aging=aging, tenants=tenants)
    running: list[RequestInfo] = []
    waiting_since: dict[Priority, float] = {}  # class -> since when it had no slot
    now = 0.0
    for dt, arrivals, tenant in steps:
        now += dt
        started = []
        if running:
            s.finished(gone := running.pop(0), now)
            s.fleet.release("a", now)
            del gone
            started += [o.waiter.request for o in s.assign(now) if isinstance(o, Assigned)]
        for cls in arrivals:
            r = req(cls, tenant)
            if not isinstance(s.submit(r, now), Waiter):
                started.append(r)
        running += started
        backend = s.fleet.get("a")
        assert backend.reserved == len(running) <= slots  # never more than the slots
        for cls in {r.priority for r in started}:
            waiting_since.pop(cls, None)
        waiting = {w.request.priority for w in s.buffer if w.request.priority is not B}
        for cls in list(waiting_since):
            if cls not in waiting:
                del waiting_since[cls]
        for cls in waiting:
            since = waiting_since.setdefault(cls, now)
            assert now - since <= aging + 0.5 + 1e-9, (cls, since, now)
    for _ in range(len(s.buffer) + 1):  # no more arrivals: everything completes
        now += 3600.0
        while running:
            s.finished(running.pop(), now)
            s.fleet.release("a", now)
        now += 3600.0  # what they held fades (the dispatcher looks again: held_back)
        running += [o.waiter.request for o in s.assign(now) if isinstance(o, Assigned)]
        assert s.fleet.get("a").reserved == len(running) <= slots
        if not s.buffer:
            break
    assert not s.buffer, s.buffer
