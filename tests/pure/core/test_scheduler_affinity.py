"""Cache affinity in ``Scheduler.assign``: under load a freed slot goes to the waiting
request whose prompt that server holds, within bounds (``max_pass``), never past a
server's slots."""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from support.fleets import ready_fleet

from corral.core import Buffer, Condition, Dispatch, Fleet, ManualClock, Report, Scheduler
from corral.core import scheduler as scheduler_module
from corral.core.events import Timings
from corral.core.queueing import Waiter
from corral.core.routing import PrefixPolicy, Prompt, RequestInfo, SlotPolicy
from corral.core.scheduler import KEYED_SLACK, WINDOW, Assigned

CHAT = "/v1/chat/completions"
P = b"the first group's long document. " * 250  # 8,250 bytes: 8 blocks
Q = b"another group, another document! " * 250
R = b"a third text that nobody shares.. " * 250


def request(text: bytes) -> RequestInfo:
    return RequestInfo(CHAT, "m", prompt=Prompt(text), size=len(text))


def timings(info: RequestInfo, cached: int = 0) -> Timings:
    n = len(info.prompt) // 4 if info.prompt is not None else 1  # 4 bytes a token
    return Timings(n, cached, n / 2)  # 2,000 tokens/s


def saturated(
    max_pass: float = 2.0,
) -> tuple[Fleet, Scheduler, dict[bytes, str], dict[str, RequestInfo]]:
    """Two one-slot servers, each busy with a request of its own prefix (P, Q): the
    holder of each prefix, and what runs on each server."""
    fleet = ready_fleet(("a", 1), ("b", 1))
    scheduler = Scheduler(fleet, PrefixPolicy(), Buffer(100, 30.0), max_pass=max_pass)
    holders, running = {}, {}
    for text in (P, Q):
        info = request(text + b"first")
        decision = scheduler.submit(info, 0.0)
        assert isinstance(decision, Dispatch)
        holders[text] = decision.backend_id
        running[decision.backend_id] = info
    assert holders[P] != holders[Q]
    return fleet, scheduler, holders, running


def end(fleet: Fleet, scheduler: Scheduler, backend: str, info: RequestInfo, now: float) -> None:
    fleet.release(backend, now, info, timings(info))
    scheduler.finished(info, now)


def test_a_freed_slot_goes_to_the_waiter_whose_prefix_that_server_holds():
    fleet, scheduler, holders, running = saturated()
    head = scheduler.submit(request(Q + b"second"), 0.5)  # Q's server is busy
    behind = scheduler.submit(request(P + b"second"), 0.6)
    assert isinstance(head, Waiter) and isinstance(behind, Waiter)
    end(fleet, scheduler, holders[P], running[holders[P]], 1.0)
    assert scheduler.assign(1.0) == [Assigned(behind, holders[P])]  # in order: the head
    assert list(scheduler.buffer) == [head]
    assert len(scheduler.buffer) == 1 and scheduler.buffer.bytes == head.request.size


def test_a_prompt_held_nowhere_passes_a_head_whose_prompt_a_busy_server_holds():
    # "a" frees: the head would read its whole prompt there (b holds it), the new
    # prompt behind it reads all of its own anywhere; the slot goes to the new one, and
    # the head goes to b when b frees (under load, the miss that waiting avoids comes
    # last, not first)
    fleet, scheduler, holders, running = saturated()
    a, b = holders[P], holders[Q]
    head = scheduler.submit(request(Q + b"second"), 0.5)
    new = scheduler.submit(request(R), 0.6)
    end(fleet, scheduler, a, running[a], 1.0)
    assert scheduler.assign(1.0) == [Assigned(new, a)]
    assert list(scheduler.buffer) == [head] and head.request.note.best_cached > 1000
    end(fleet, scheduler, b, running[b], 1.5)
    assert scheduler.assign(1.5) == [Assigned(head, b)]
    assert head.request.note.reason == "prefix"


def test_a_head_held_nowhere_is_not_passed_by_another_prompt_held_nowhere():
    fleet, scheduler, holders, running = saturated()
    a = holders[P]
    head = scheduler.submit(request(R), 0.5)
    other = scheduler.submit(request(R.upper()), 0.6)
    end(fleet, scheduler, a, running[a], 1.0)
    assert scheduler.assign(1.0) == [Assigned(head, a)]
    assert list(scheduler.buffer) == [other]


def test_the_head_is_passed_over_for_max_pass_seconds_at_most():
    fleet, scheduler, holders, running = saturated(max_pass=2.0)
    a = holders[P]
    head = scheduler.submit(request(Q + b"waits"), 0.5)
    assert isinstance(head, Waiter)
    served = []
    for now in (1.0, 2.0, 2.9, 3.0):
        scheduler.submit(request(P + f"at {now}".encode()), now - 0.1)
        end(fleet, scheduler, a, running[a], now)
        [assigned] = scheduler.assign(now)
        running[a] = assigned.waiter.request
        served.append(assigned.waiter is head)
    assert served == [False, False, False, True]  # passed over at 1.0, 2.0, 2.9; not at 3.0


def test_the_slot_just_freed_prefers_the_prompt_that_ended_there():
    fleet = ready_fleet(("b", 2))
    scheduler = Scheduler(fleet, PrefixPolicy(), Buffer(100, 30.0))
    p, q = request(P + b"first"), request(Q + b"first")
    assert scheduler.submit(p, 0.0) == Dispatch("b")
    assert scheduler.submit(q, 0.0) == Dispatch("b")  # "b" holds both now
    head = scheduler.submit(request(Q + b"second"), 0.5)
    behind = scheduler.submit(request(P + b"second"), 0.6)
    end(fleet, scheduler, "b", p, 1.0)  # the free slot holds P; Q's is busy
    assert scheduler.assign(1.0) == [Assigned(behind, "b")]
    assert list(scheduler.buffer) == [head]


def test_slot_routing_keeps_the_order():
    fleet = ready_fleet(("a", 1))
    scheduler = Scheduler(fleet, SlotPolicy(), Buffer(100, 30.0))
    first = request(P)
    assert scheduler.submit(first, 0.0) == Dispatch("a")
    head = scheduler.submit(request(Q), 0.1)
    scheduler.submit(request(P + b"again"), 0.2)
    fleet.release("a", 1.0, first, timings(first))
    [assigned] = scheduler.assign(1.0)
    assert assigned.waiter is head


def test_a_request_waiting_for_its_busy_holder_does_not_hold_up_the_queue():
    clock = ManualClock(0.0)
    fleet = ready_fleet(("a", 1), ("b", 1))
    # a host cache (--cache-ram): "a" keeps P while a request it cannot read runs there
    fleet.report("a", Report(Condition.READY, model="m", slots_total=1, cache_ram_mib=64), 0)
    fleet.report("b", Report(Condition.READY, model="m", slots_total=1), 0)  # "a" first again
    scheduler = Scheduler(fleet, PrefixPolicy(clock=clock.now), Buffer(100, 30.0))
    first = request(P)
    assert scheduler.submit(first, 0.0) == Dispatch("a")
    fleet.release("a", 0.5, first, Timings(2000, 0, 1000.0))  # 0.5 s runs: "a" frees soon
    on_b = RequestInfo(CHAT, "m", "b", prompt=Prompt(R))  # pinned: "b" learns R
    assert scheduler.submit(on_b, 0.5) == Dispatch("b")
    busy = RequestInfo(CHAT, "m", "a")  # pinned: "a" is busy now
    assert scheduler.submit(busy, 0.5) == Dispatch("a")
    later = request(P + b"next")  # waits: no free slot
    other = request(R + b"next")
    head, behind = scheduler.submit(later, 0.6), scheduler.submit(other, 0.6)
    assert isinstance(head, Waiter) and isinstance(behind, Waiter)
    clock.advance(1.0)
    fleet.release("b", clock.now(), on_b, timings(on_b))
    # the head waits for "a" (which holds P) and leaves "b" free; R is on "b"
    assert scheduler.assign(clock.now()) == [Assigned(behind, "b")]
    assert later.note.reason == "wait-prefix"
    assert list(scheduler.buffer) == [head]


def test_requests_behind_the_head_are_passed_over_for_max_pass_at_most_too():
    # a queue of new conversations ahead of a steady stream of turns the server holds:
    # each new conversation's bound starts when it is first overtaken, not when it
    # becomes the head (then the last of 6 waited about 6 x max_pass)
    fleet = ready_fleet(("a", 1))
    fleet.report("a", Report(Condition.READY, model="m", slots_total=1, cache_ram_mib=64), 0)
    scheduler = Scheduler(fleet, PrefixPolicy(), Buffer(100, 1000.0), max_pass=2.0)
    running = request(P + b"first")
    assert scheduler.submit(running, 0.0) == Dispatch("a")
    fresh = [scheduler.submit(request(bytes([65 + i]) * 8000), 0.1) for i in range(6)]
    served: dict[int, float] = {}
    now = 0.0
    while len(served) < len(fresh):
        now += 1.0
        scheduler.submit(request(P + f"turn {now}".encode()), now - 0.5)
        end(fleet, scheduler, "a", running, now)
        [assigned] = scheduler.assign(now)
        running = assigned.waiter.request
        if assigned.waiter in fresh:
            served[fresh.index(assigned.waiter)] = now
    assert max(served.values()) <= 1.0 + 2.0 + len(fresh), served


TEXTS = {"P1": P + b"x", "P2": P + b"y", "Q": Q + b"x", "R": R + b"x", "short": b"short"}


class Overtaking(RuleBasedStateMachine):
    """Whatever arrives and ends when: no server gets more than its slots, and every
    request (the head or one behind it) is overtaken by later ones for ``max_pass``
    seconds at most from the first time."""

    MAX_PASS = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.fleet = ready_fleet(("a", 1), ("b", 1))
        self.scheduler = Scheduler(
            self.fleet, PrefixPolicy(), Buffer(1000, 1000.0), max_pass=self.MAX_PASS
        )
        self.now = 0.0
        self.running: list[tuple[str, RequestInfo]] = []
        self.waiting: list[Waiter] = []  # arrival order (one queue: same key)
        self.overtaken: dict[int, float] = {}  # waiter.seq -> first time

    @rule(text=st.sampled_from(sorted(TEXTS)))
    def arrive(self, text: str) -> None:
        info = request(TEXTS[text])
        decision = self.scheduler.submit(info, self.now)
        if isinstance(decision, Dispatch):
            self.running.append((decision.backend_id, info))
        elif isinstance(decision, Waiter):
            self.waiting.append(decision)

    @rule(data=st.data(), dt=st.floats(0.0, 1.0), hit=st.booleans())
    def end(self, data: st.DataObject, dt: float, hit: bool) -> None:
        self.now += dt
        if self.running:
            i = data.draw(st.integers(0, len(self.running) - 1))
            backend, info = self.running.pop(i)
            n = len(info.prompt) // 4 if info.prompt is not None else 1
            self.fleet.release(backend, self.now, info, timings(info, n // 2 if hit else 0))
            self.scheduler.finished(info, self.now)
        for outcome in self.scheduler.assign(self.now):
            assert isinstance(outcome, Assigned)
            waiter = outcome.waiter
            older = self.waiting[: self.waiting.index(waiter)]
            for place, passed in enumerate(older):  # overtaken by one behind it
                if place > scheduler_module.WINDOW and passed.seq not in self.overtaken:
                    continue  # not yet near its turn: the bound starts in the window
                first = self.overtaken.setdefault(passed.seq, self.now)
                assert self.now - first < self.MAX_PASS, (passed, self.now, first)
            self.waiting.remove(waiter)
            self.running.append((outcome.backend_id, waiter.request))

    @invariant()
    def never_oversubscribed(self) -> None:
        for backend in self.fleet:
            assert backend.reserved <= backend.slots_total, backend
        assert len(self.scheduler.buffer) == len(self.waiting)
        assert self.scheduler.buffer.bytes == sum(w.request.size for w in self.waiting)


TestOvertaking = Overtaking.TestCase
TestOvertaking.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)


class OvertakingBeyondTheWindow(Overtaking):
    """The same bounds when the window is two requests: most of those served ahead of
    their turn are found beyond it, by their prompts' keys; a request's bound starts
    once it is overtaken as the head or within the window behind it."""

    def __init__(self) -> None:
        super().__init__()
        self._window, self._extra = scheduler_module.WINDOW, scheduler_module.EXTRA
        scheduler_module.WINDOW, scheduler_module.EXTRA = 2, 2

    def teardown(self) -> None:
        scheduler_module.WINDOW, scheduler_module.EXTRA = self._window, self._extra


TestOvertakingBeyondTheWindow = OvertakingBeyondTheWindow.TestCase
TestOvertakingBeyondTheWindow.settings = settings(
    max_examples=120, stateful_step_count=60, deadline=None
)


def test_a_waiter_beyond_the_window_whose_prompt_the_freed_server_holds_is_found():
    # under load the window fills with requests whose own servers are busy; the one a
    # freed server suits is further back, and is found by its prompt's keys
    fleet, scheduler, holders, running = saturated()
    scheduler.buffer = Buffer(1000, 30.0)  # room for more than the window
    head = scheduler.submit(request(Q + b"head"), 0.5)
    for i in range(3 * WINDOW):
        scheduler.submit(request(R + str(i).encode()), 0.5)
    far = scheduler.submit(request(P + b"far behind"), 0.6)
    assert isinstance(head, Waiter) and isinstance(far, Waiter)
    end(fleet, scheduler, holders[P], running[holders[P]], 1.0)
    assert scheduler.assign(1.0) == [Assigned(far, holders[P])]
    # every request it overtook starts its max_pass bound now: the head at once, and
    # those beyond the window when they come into it (Overtaking checks the bound)
    assert head.passed_at == 1.0


def test_the_keyed_lookup_forgets_requests_no_longer_waiting():
    # requests pass through the buffer by the thousand: what the lookup keeps stays
    # bounded by those waiting, not by all that ever waited
    fleet, scheduler, holders, running = saturated()
    scheduler.buffer = Buffer(10_000, 30.0)
    now = 1.0
    for i in range(100):
        scheduler.submit(request((P, Q, R)[i % 3] + str(i).encode()), now)
    for i in range(100, 5000):  # one arrives, one ends and its slot goes to one waiting
        scheduler.submit(request((P, Q, R)[i % 3] + str(i).encode()), now)
        backend = holders[P] if i % 2 else holders[Q]
        end(fleet, scheduler, backend, running[backend], now)
        (assigned,) = scheduler.assign(now)
        running[assigned.backend_id] = assigned.waiter.request
        now += 0.001
    for i in range(2000):  # and clients that leave while waiting (cancelled)
        waiter = scheduler.submit(request(P + b"gone " + str(i).encode()), now)
        assert isinstance(waiter, Waiter) and scheduler.buffer.cancel(waiter)
    waiting = len(scheduler.buffer)
    assert waiting == 100
    assert scheduler._keyed_entries <= KEYED_SLACK * (waiting + WINDOW)
    live = {id(w) for b in scheduler._keyed.values() for w in b.values() if not w.done}
    assert len(live) == waiting  # each waiting request is still found


def test_a_waiter_sixty_places_behind_the_head_is_found():
    # 16 prefixes waiting in even shares: one of a given prefix is within 64 places 98% of
    # the time, within 32 only 87%
    fleet, scheduler, holders, running = saturated()
    head = scheduler.submit(request(Q + b"head"), 0.5)
    for i in range(60):
        scheduler.submit(request(R + str(i).encode()), 0.5)
    behind = scheduler.submit(request(P + b"far behind"), 0.6)
    assert isinstance(head, Waiter) and isinstance(behind, Waiter)
    end(fleet, scheduler, holders[P], running[holders[P]], 1.0)
    assert scheduler.assign(1.0) == [Assigned(behind, holders[P])]


HISTORY = b"the conversation so far. " * 200  # 5,000 bytes
S = b"a fourth text, for server c only. " * 250


def reg(fleet, name, model, slots, cache=None):
    fleet.register(name, name=name, address=f"http://{name}", api_key=None, now=0)
    report = Report(Condition.READY, model=model, slots_total=slots, cache_ram_mib=cache)
    fleet.report(name, report, now=0)


def req(text: bytes, model="m") -> RequestInfo:
    return RequestInfo(CHAT, model, prompt=Prompt(text), size=len(text))


def test_wait_for_holder_is_capped_even_when_another_models_slot_frees_meanwhile():
    """max_wait is 'never more than': the head waits for busy "a" (holds its prompt)
    and leaves "b" to a new request behind it (no m slot is left: its bound starts
    again at its next refusal); an m2 slot frees and assign looks at the head; "b"
    frees again: the head must not wait a fresh full bound each time."""
    clock = ManualClock(0.0)
    fleet = Fleet()
    reg(fleet, "a", "m", 1, cache=64)
    reg(fleet, "b", "m", 1)
    reg(fleet, "c", "m2", 1)
    policy = PrefixPolicy(clock=clock.now, max_wait=1.0)
    sched = Scheduler(fleet, policy, Buffer(100, 300.0), max_pass=2.0)
    first = req(HISTORY * 4)
    assert sched.submit(first, 0.0) == Dispatch("a")
    fleet.release("a", 0.5, first, Timings(5000, 0, 5000.0))
    sched.finished(first, 0.5)
    busy = RequestInfo(CHAT, "m", "a")  # pinned, holds "a" for a long time
    assert sched.submit(busy, 0.0) == Dispatch("a")
    on_b = RequestInfo(CHAT, "m", "b")
    assert sched.submit(on_b, 0.0) == Dispatch("b")
    on_c = RequestInfo(CHAT, "m2", "c")
    assert sched.submit(on_c, 0.0) == Dispatch("c")
    head = sched.submit(req(HISTORY * 4 + b"next"), 0.0)
    assert isinstance(head, Waiter)
    t = 0.0
    for k in range(10):
        sched.submit(req(bytes([65 + k]) * 3000), t)  # new prompts behind the head
        t += 0.6
        clock.advance(0.6)
        fleet.release("b", t, on_b, None)  # b frees
        out = sched.assign(t)
        if any(o.waiter is head for o in out):
            break
        on_b = next(o.waiter.request for o in out if o.backend_id == "b")
        t += 0.3
        clock.advance(0.3)
        fleet.release("c", t, on_c, None)  # an m2 slot frees: assign looks at the head
        sched.assign(t)
        on_c = RequestInfo(CHAT, "m2", "c")
        assert sched.submit(on_c, t) == Dispatch("c")
    # bound: its first wait (until 1.6), the next time "b" frees (0.9), max_pass
    # (2.0) of being passed over, the next time "b" frees (0.9): 5.4
    assert t <= 0.6 + 1.0 + 0.9 + 2.0 + 0.9 + 1e-9, (
        f"head still waiting at t={t}, b freed {k + 1} times"
    )


def test_a_stale_best_cached_does_not_let_an_equal_loser_pass_the_head():
    """The pass rule is checked on best_cached from the candidate's last pick (its
    arrival, when nobody held R); the pick in _affine refreshes it (c now holds R,
    busy) but the rule is not checked again: R2 loses as much on "a" as the head
    does, yet passes it."""
    fleet = Fleet()
    for name in "abc":
        reg(fleet, name, "m", 1)
    sched = Scheduler(fleet, PrefixPolicy(), Buffer(100, 30.0), max_pass=2.0)
    running = {}
    for text in (P, Q, S):
        info = req(text + b"first")
        d = sched.submit(info, 0.0)
        running[d.backend_id] = info

    def server_of(text):
        return next(
            k
            for k, info in running.items()
            if info is not None
            and info.prompt is not None
            and sched.policy.index.match(k, Prompt(text + b"first").hashes(1024)) > 0
        )

    a, _, c = server_of(P), server_of(Q), server_of(S)
    head = sched.submit(req(Q + b"second"), 0.5)  # b (busy) holds Q
    r1 = sched.submit(req(R + b"one"), 0.6)  # nobody holds R
    r2 = sched.submit(req(R + b"two"), 0.7)  # nobody holds R (yet)
    assert r2.request.note.best_cached == 0
    end_c = running[c]
    fleet.release(c, 1.0, end_c, Timings(2062, 0, 1031.0))
    sched.finished(end_c, 1.0)
    assert sched.assign(1.0) == [Assigned(r1, c)]  # intended: R held nowhere passes
    # now c (busy) holds R: r2 loses on "a" what the head loses there
    end_a = running[a]
    fleet.release(a, 1.5, end_a, Timings(2062, 0, 1031.0))
    sched.finished(end_a, 1.5)
    out = sched.assign(1.5)
    assert r2.request.note.best_cached > 1000  # refreshed by the pick in _affine
    assert out == [Assigned(head, a)], out


def holder_busy(max_wait: float, max_pass: float) -> tuple[ManualClock, Fleet, Scheduler]:
    """Servers "a" (a host cache; it holds HISTORY * 4, read at 1,000 tokens/s, and is
    busy with a pinned request) and "b" (free), both of one slot, at time 0."""
    clock = ManualClock(0.0)
    fleet = Fleet()
    reg(fleet, "a", "m", 1, cache=64)
    reg(fleet, "b", "m", 1)
    policy = PrefixPolicy(clock=clock.now, max_wait=max_wait)
    sched = Scheduler(fleet, policy, Buffer(100, 300.0), max_pass=max_pass)
    first = req(HISTORY * 4)
    assert sched.submit(first, 0.0) == Dispatch("a")
    fleet.release("a", 0.5, first, Timings(5000, 0, 5000.0))  # 1,000 tokens/s
    sched.finished(first, 0.5)
    assert sched.submit(RequestInfo(CHAT, "m", "a"), 0.0) == Dispatch("a")  # "a" busy
    return clock, fleet, sched


def test_a_refused_slot_taken_by_another_restarts_the_wait_within_its_cap():
    # the head waits for busy "a" (it holds its prompt) and leaves "b" to a new prompt
    # behind it: its wait cost the fleet nothing, so when "b" frees again after its
    # first bound it still waits for "a"; once max_wait from its first refusal has
    # passed, it waits no more
    clock, fleet, sched = holder_busy(max_wait=8.0, max_pass=0.0)
    on_b = RequestInfo(CHAT, "m", "b")
    assert sched.submit(on_b, 0.0) == Dispatch("b")
    head = sched.submit(req(HISTORY * 4 + b"next"), 0.0)
    assert isinstance(head, Waiter)
    note = head.request.note
    for k in range(3):
        sched.submit(req(bytes([65 + k]) * 3000), clock.now())  # a new prompt behind
        fleet.release("b", clock.now(), on_b, None)
        [out] = sched.assign(clock.now())
        assert out.waiter is not head and out.backend_id == "b"
        assert note.reason == "wait-prefix" and note.wait_until is None  # restarts
        on_b = out.waiter.request
        clock.advance(2.5)  # past the first bound (a 5 s prefill saved: about 4.5 s)
    assert note.wait_cap == 8.0  # from its first refusal, at 0
    clock.advance(1.0)  # 8.5 s: past the cap
    fleet.release("b", clock.now(), on_b, None)
    assert sched.assign(clock.now()) == [Assigned(head, "b")]


def test_no_request_beyond_the_window_passes_one_in_it_whose_bound_ran_out(monkeypatch):
    """One served from beyond the window overtakes the whole window: those in it start
    their bound then, and once it has run out nothing beyond may pass them. The head
    waits for the busy server holding its prompt, so only the window's bounds hold."""
    monkeypatch.setattr(scheduler_module, "WINDOW", 2)
    monkeypatch.setattr(scheduler_module, "EXTRA", 2)
    clock, fleet, sched = holder_busy(max_wait=100.0, max_pass=2.0)
    on_b = RequestInfo(CHAT, "m", "b", prompt=Prompt(S))  # pinned: b's slot learns S
    assert sched.submit(on_b, 0.0) == Dispatch("b")
    head = sched.submit(req(HISTORY * 4 + b"next"), 0.0)
    x1 = sched.submit(req(b"C" * 3000), 0.0)
    c1 = sched.submit(req(b"D" * 3000), 0.0)
    y = sched.submit(req(S + b"y"), 0.0)
    x2 = sched.submit(req(S + b"x2"), 0.0)
    assert all(isinstance(w, Waiter) for w in (head, x1, c1, y, x2))
    clock.advance(1.0)
    fleet.release("b", 1.0, on_b, None)
    sched.finished(on_b, 1.0)
    assert sched.assign(1.0) == [Assigned(y, "b")]  # from beyond the window
    assert head.request.note.reason == "wait-prefix" and head.passed_at is None
    assert x1.passed_at == c1.passed_at == 1.0  # the window's bound starts
    clock.advance(3.0)
    fleet.release("b", 4.0, y.request, None)
    sched.finished(y.request, 4.0)
    # x1 was passed over 3 s ago (max_pass 2 s): x2, from beyond, may not pass it
    assert sched.assign(4.0) == [Assigned(x1, "b")]


def test_long_prompts_waiting_by_the_hundred_are_not_swept_at_every_arrival():
    """Found by review: with 9 keys a request, the live entries alone passed the sweep's
    threshold once some 500 waited, and every arrival swept them all for nothing."""
    fleet = Fleet()
    fleet.register("a", name="a", address="http://a", api_key=None, now=0)
    fleet.report("a", Report(Condition.READY, model="m", slots_total=1), now=0)
    sched = Scheduler(fleet, PrefixPolicy(), Buffer(2000, 300.0))
    assert sched.submit(RequestInfo(CHAT, "m", prompt=Prompt(b"x" * 100)), 0.0) == Dispatch("a")
    body = b"long document. " * 20000  # 300,000 bytes: 292 blocks -> 9 keys
    calls = []
    orig = sched._sweep
    sched._sweep = lambda: (calls.append(1), orig())
    for i in range(800):
        sched.submit(RequestInfo(CHAT, "m", prompt=Prompt(str(i).encode() + body)), 0.0)
    # nothing was served or cancelled: every sweep here finds nothing to drop
    assert len(calls) < 10, f"{len(calls)} full sweeps of ~{sched._keyed_entries} entries"
