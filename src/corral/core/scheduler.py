"""The scheduler: the policy, the fleet and the buffer working together. Pure logic.

Theory of operation
-------------------
A request arrives: :meth:`Scheduler.submit` asks the policy. A dispatch reserves the
slot right away (before any I/O); a wait puts the request in the buffer (or refuses
it when the buffer is full); a reject goes back to the client.

Whenever the fleet changes in a way that may free capacity (a request finished, an
agent registered or reported, a server came back), the caller runs
:meth:`Scheduler.assign`, which hands free slots to waiting requests, oldest first,
and returns what happened so the async layer can wake exactly those requests. The
buffer is event-driven: nothing polls it. :meth:`Scheduler.expire` removes requests
that waited too long.

Who goes first is the buffer's discipline (:mod:`corral.core.queueing`): it orders
the heads, and the scheduler takes the first one the policy can place. Three rules
are about the fleet, so they are the scheduler's, for every discipline:

- a tenant with ``max_concurrent`` requests in flight gets no slot (its requests
  wait, even when slots are free); :meth:`Scheduler.finished` counts them down;
- a head the discipline says is *idle only* (a ``batch`` request) takes a slot only
  if the model's free slots stay at least ``reserve`` of its slots (rounded down)
  once it has: ``--interactive-reserve``;
- **headroom**: a request holds its slot for its whole run (a batch request for
  long), so a slot it takes must not be one that traffic with a stronger claim
  will need before it ends. The discipline says who yields to whom
  (:meth:`~corral.core.queueing.Queue.yields`: ``batch`` to the higher classes;
  with ``fair``, a tenant with more requests in flight and waiting to one within
  its share of the slots, by what it held over ``FADE`` seconds). The scheduler
  keeps each ``(model, class, tenant)``'s *demand*: the slots it held, averaged
  over time (rising within ``RISE`` seconds, fading over ``FADE`` seconds, so
  traffic seen recently still counts). A yielding request
  takes a slot only if the free slots left cover the stronger traffic's headroom
  beyond what it holds now: its demand ``m`` plus ``SPREAD * sqrt(m)`` (slots in
  use by independent requests are roughly Poisson, so this is a high quantile of
  what it may hold while the slot is taken). A tenant yielding to another keeps
  one slot, and its class, once due (``--priority-aging``), yields to no tenant:
  the starvation bound holds for ``high`` and ``interactive``; ``batch`` runs on
  idle capacity only.

**Cache affinity** (a policy with ``affinity``: prefix routing). Under load every
request waits in the buffer, and a freed slot goes to whoever is first, wherever
the slot is: the request then lands on a server that does not hold its prefix. So
when a head is about to take a slot on backend B (or waits for the busy holder of
its prefix while B is free), the scheduler looks at the ``WINDOW`` requests behind
it in its own queue (same group, class and tenant: the discipline's order between
queues is untouched) and serves instead one that B suits better: one whose prompt
B holds more of than the head's by ``PASS_MARGIN`` tokens, or one that loses less on
B than the head by that margin (a request's *loss* on B is what the server predicted
to hold the most of its prompt holds beyond B: ``note.best_cached`` less B's share;
a prompt held nowhere loses nothing anywhere, while a head whose prompt a busy server
holds would read it all again on B). The least loss goes first, then the most cached,
then the oldest: under load the misses that waiting would avoid come last, since the
slot would otherwise go to someone who pays no more on B than anywhere. A head that
waits for its busy holder leaves B to anyone behind it, in that order. Every request
is passed over for at most ``max_pass`` seconds from the first time a later one
overtook it (``--prefix-max-pass``), whether it was the head then or one of the
``WINDOW`` behind it; after that
nothing behind it may pass it. Under load the window fills with requests whose own
servers are busy, and those a freed server suits are further back: the scheduler also
weighs the ``EXTRA`` oldest requests of the queue, beyond the window, whose prompts share
the most with what the freed server holds, found by the prompts' keys (the policy's
``waiter_keys``: chained block hashes at depths 1, 2, 4...; ``held_keys``: those of what
the server's idle slots hold). One served from there overtakes the whole window, whose
requests start their ``max_pass`` bound then; those between the window and it do not
(the bound is for requests near their turn: the head and the ``WINDOW`` behind it). Under
a backlog a request deep in the queue is overtaken as soon as it arrives, and a bound
counted from then runs out long before its turn: the passed-over then block all
passing and freed slots go in arrival order (``benchmarks/prefix_buffer.py``: at 300%
load on section 5's simulated fleet, counting it from there took the cache hit rate
from 91% to 74%). What is found beyond the window is ``EXTRA`` requests per freed slot
at most, each sharing part of its prompt with what that server holds. Every
rule above still applies to the request served (the policy picks its backend, a free
slot; ``_may_take``), and the cost is ``WINDOW + EXTRA`` affinity lookups, a lookup per
key of the freed server's idle prompts, and at most ``TRIES`` picks per head tried,
not a scan of the fleet or of the buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from corral.core.fleet import Fleet
from corral.core.queueing import Priority, Queue, Waiter
from corral.core.routing import Dispatch, Reject, RequestInfo, RoutingPolicy, Wait
from corral.core.routing.filters import resolve_pools

RISE = 5.0
"""Seconds over which a class's or tenant's demand estimate rises to the slots it holds."""
FADE = 60.0
"""Seconds over which it fades once that traffic stops ("recently seen")."""
SPREAD = 2.0
"""Headroom above the demand ``m``, in ``sqrt(m)``: a high quantile of a Poisson count."""

RECHECK = 1.0
"""Seconds after which requests held back beside free slots are looked at again."""

WINDOW = 64
"""Requests behind a head weighed for a freed slot (cache affinity): each costs one
lookup in the prefix index and one per idle slot of the freed server (about log2 of
its prompt's blocks each). With 16 prefixes in even shares, 64 places hold one of a
given prefix 98% of the time (32: 87%); on section 5's simulated fleet at 300% load,
in a discrete-event run of the pure core, 64 reuse 88% of prompt tokens where 32
reuse 82% (128: 92%)."""
EXTRA = 8
"""Requests beyond the ``WINDOW`` weighed as well for a freed slot: the oldest of
those whose prompt shares the most with what the freed server holds (by the policy's
keys). Under load the window fills with requests whose own servers are busy, and the
requests a freed server suits are often further back."""
SCAN = 256
"""Keyed entries looked at per freed slot, at most: a bucket may hold requests of other
queues (another model, class or tenant sharing a system prompt) or ones that left."""
KEYED_SLACK = 8
"""Keyed entries allowed per live one (a request has about log2 of its prompt's blocks
of them) before those of requests no longer waiting are swept out."""
TRIES = 4
"""Of those, the first ones in that order asked to place themselves, at most (each is a pick):
one that would rather wait for its own busy holder is passed for the next."""
PASS_MARGIN = 256
"""Prompt tokens a request behind the head must find cached beyond the head's own, or
lose less than the head (see :func:`_regret`), to be served first: a real prefill
saved (a block of the prefix index, ~0.1 s at 2,000 tokens/s), not a chat template's
worth of difference."""
MAX_PASS = 10.0
"""``--prefix-max-pass``'s default (see ``config/tables.py``). Under load a request
crosses the ``WINDOW`` behind the head in about ``WINDOW`` dispatches (some 2 s on
section 5's simulated fleet at saturation), and it is stamped as passed over as soon
as one behind it is served: with a bound of 2 s (the default before) it ran out during
that trip, the passed-over piled up at the head and blocked all passing, and freed
slots went in arrival order to servers without the prompt. ``benchmarks/prefix_buffer.py``
compares the two on that fleet at 50-300% load (docs/benchmarks.md, section 5)."""

_Key = tuple[str | None, Priority, str]  # model, class, tenant


@dataclass(frozen=True, slots=True)
class Assigned:
    """A buffered request got a slot (already reserved) on this backend."""

    waiter: Waiter
    backend_id: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A buffered request can no longer be served (its model is unknown now)."""

    waiter: Waiter
    reject: Reject


def _regret(waiter: Waiter, cached: int) -> int:
    """Prompt tokens ``waiter`` would read again on a server holding ``cached`` of its
    prompt, against the server predicted to hold the most (prefix routing's
    ``note.best_cached``): 0 for a prompt held nowhere, or held there."""
    return max(0, waiter.request.note.best_cached - cached)


class Scheduler:
    def __init__(
        self,
        fleet: Fleet,
        policy: RoutingPolicy,
        buffer: Queue,
        *,
        reserve: float = 0.0,
        max_pass: float = MAX_PASS,
    ) -> None:
        """``reserve``: share of each model's slots idle-only requests leave free
        (``--interactive-reserve``, 0 <= reserve < 1). ``max_pass``: seconds a request
        may be passed over for later ones that the freed server suits better, from the
        first time (``--prefix-max-pass``; 0: a head that takes a slot is never passed
        over, though one waiting for its prompt's busy holder still leaves a free slot
        to those behind it; only with a policy that has ``affinity``).
        Raises ValueError for a share out of range or a negative ``max_pass``."""
        if not 0.0 <= reserve < 1.0:
            raise ValueError("the interactive reserve is a share: 0 or more, below 1")
        if max_pass < 0:
            raise ValueError("max_pass cannot be negative")
        self.fleet = fleet
        self.policy = policy
        self.buffer = buffer
        self.reserve = reserve
        self.max_pass = max_pass
        self._running: dict[int, tuple[_Key, float | None]] = {}  # id -> key, start
        self._tenant_running: dict[str, int] = {}
        self._held: dict[_Key, int] = {}  # slots held now
        self._demand: dict[_Key, float] = {}  # slots held, averaged (RISE, FADE)
        self._usage: dict[_Key, float] = {}  # slots held, averaged over FADE
        self._stamp: float | None = None  # when _demand was last brought up to date
        self.held_back = False
        """Whether the last :meth:`assign` left a request waiting beside a free slot
        it may not take yet (the reserve or headroom): the caller runs ``assign``
        again within ``RECHECK`` seconds, as the demand it yields to fades."""
        if policy.observe is not None:  # a policy with its own view of the backends
            fleet.subscribe(policy.observe)
        # cache affinity beyond the window: waiting requests by the keys of their
        # prompts (``policy.waiter_keys``), oldest first (ordered dicts keyed by
        # ``id``); one served or expired here leaves at once, one cancelled (its client
        # left) when a lookup meets it or at the next sweep
        self._keyed: dict[int, dict[int, Waiter]] = {}
        self._keyed_entries = 0
        self._keyed_live = 0  # entries the last sweep kept: the next comes at twice as many

    def submit(
        self, request: RequestInfo, now: float, token: object = None
    ) -> Dispatch | Reject | Waiter:
        """Route a new request. Raises :class:`~corral.core.buffer.BufferFull`.

        A dispatch has its slot reserved already. A :class:`Waiter` is in the buffer.
        """
        if self._at_limit(request):
            return self._push(request, now, token)
        decision = self.policy.pick(self.fleet, request)
        if isinstance(decision, Dispatch):
            if not self._may_take(request, decision.backend_id, now):
                self.held_back = True
                return self._push(request, now, token)
            self._start(decision.backend_id, now, request)
            return decision
        if isinstance(decision, Reject):
            return decision
        return self._push(request, now, token)

    def _push(self, request: RequestInfo, now: float, token: object) -> Waiter:
        """Into the buffer (raises BufferFull), and into the keyed lookup."""
        waiter = self.buffer.push(request, now, token)
        keys = self.policy.waiter_keys
        if keys is not None and self.policy.affinity is not None:
            for key in keys(request):
                self._keyed.setdefault(key, {})[id(waiter)] = waiter
                self._keyed_entries += 1
            limit = max(KEYED_SLACK * (len(self.buffer) + WINDOW), 2 * self._keyed_live)
            if self._keyed_entries > limit:
                self._sweep()
        return waiter

    def _sweep(self) -> None:
        """Drop every entry of a request no longer waiting: O(entries), run when they
        outnumber ``KEYED_SLACK`` per waiting request and twice what the last sweep
        kept, so O(1) per entry added."""
        entries = 0
        for key in list(self._keyed):
            live = {i: w for i, w in self._keyed[key].items() if not w.done}
            if live:
                self._keyed[key] = live
                entries += len(live)
            else:
                del self._keyed[key]
        self._keyed_entries = self._keyed_live = entries

    def _unkey(self, waiter: Waiter) -> None:
        """``waiter`` no longer waits: out of the keyed lookup."""
        keys = self.policy.waiter_keys
        if keys is None or not self._keyed:
            return
        for key in keys(waiter.request):
            bucket = self._keyed.get(key)
            if bucket is not None and bucket.pop(id(waiter), None) is not None:
                self._keyed_entries -= 1
                if not bucket:
                    del self._keyed[key]

    def _keyed_behind(self, backend_id: str, head: Waiter, seen: set[int]) -> list[Waiter]:
        """Requests in ``head``'s queue beyond its window (ids not in ``seen``) whose
        prompts share the most with what ``backend_id`` holds (``policy.held_keys``,
        deepest first), oldest first, ``EXTRA`` at most; [] without keys."""
        held = self.policy.held_keys
        if held is None or not self._keyed:
            return []
        key_of, budget = head.key, SCAN
        for key in held(backend_id):
            bucket = self._keyed.get(key)
            if not bucket:
                continue
            found, gone = [], []
            for waiter in bucket.values():  # oldest first; to EXTRA, or the budget's end
                budget -= 1
                if waiter.done:  # cancelled: its client left
                    gone.append(id(waiter))
                elif waiter is not head and id(waiter) not in seen and waiter.key == key_of:
                    found.append(waiter)
                    if len(found) >= EXTRA:
                        break
                if budget <= 0:
                    break
            for i in gone:
                del bucket[i]
            self._keyed_entries -= len(gone)
            if not bucket:
                del self._keyed[key]
            if found or budget <= 0:
                return found
        return []

    def assign(self, now: float | None = None) -> list[Assigned | Refused]:
        """Give free slots to buffered requests, in the discipline's order (within a
        queue, with cache affinity: see the module docstring)."""
        outcomes: list[Assigned | Refused] = []
        self.held_back = False
        while len(self.buffer) and self.fleet.has_free_slot():
            progressed = False
            for waiter in self.buffer.heads(now):
                if self._at_limit(waiter.request):
                    continue
                decision = self.policy.pick(self.fleet, waiter.request)
                if isinstance(decision, Dispatch) and not self._may_take(
                    waiter.request, decision.backend_id, now
                ):
                    self.held_back = True
                    continue
                better = self._affine(waiter, decision, now)
                refused: list[Waiter] = []
                if better is not None:
                    waiter, decision, refused = better
                    self.buffer.take_behind(waiter, now)
                    self._unkey(waiter)
                elif isinstance(decision, Wait):
                    continue
                else:
                    self.buffer.take(waiter, now)
                    self._unkey(waiter)
                if isinstance(decision, Dispatch):
                    self._start(decision.backend_id, now, waiter.request)
                    for refuser in refused:
                        # one that refused the slot to wait for its prompt's busy
                        # holder, with no free slot left for it, could now go nowhere
                        # else: waiting costs it nothing more, and its wait bound
                        # starts again at its next refusal (``note.wait_cap`` still
                        # holds). With one left, the bound runs on: it is what a
                        # request may lose by waiting
                        if not self._has_slot_for(refuser.request):
                            refuser.request.note.wait_until = None
                    outcomes.append(Assigned(waiter, decision.backend_id))
                else:
                    outcomes.append(Refused(waiter, decision))
                progressed = True
                break
            if not progressed:
                break
        return outcomes

    def expire(self, now: float) -> list[Waiter]:
        """Remove and return the requests that waited past their deadline."""
        expired = self.buffer.expire(now)
        for waiter in expired:
            self._unkey(waiter)
        return expired

    def finished(self, request: RequestInfo, now: float | None = None) -> None:
        """A request that got a slot (from :meth:`submit` or :meth:`assign`) ended at
        ``now`` (seconds, the clock of ``assign``): its tenant has one fewer in
        flight, and the discipline learns the slot-seconds it held (with ``now``).
        Unknown requests are ignored."""
        entry = self._running.pop(id(request), None)
        if entry is None:
            return
        key, started = entry
        self._tick(now)
        self._tenant_running[key[2]] -= 1
        self._held[key] -= 1
        if now is not None and started is not None:
            self.buffer.finished(request, max(0.0, now - started))

    def demand(self, model: str | None, priority: Priority, tenant: str) -> float:
        """Slots this model's requests of this class and tenant held lately (averaged)."""
        return self._demand.get((model, priority, tenant), 0.0)

    def running(self, tenant: str) -> int:
        """Requests of this tenant in flight now."""
        return self._tenant_running.get(tenant, 0)

    # -------------------------------------------------------------- rules
    def _has_slot_for(self, request: RequestInfo) -> bool:
        """Whether a backend of ``request``'s model pools has a free slot (its API family,
        rules and pin are not checked: this errs towards a free slot)."""
        pools = resolve_pools(self.fleet, request)
        return isinstance(pools, list) and next(self.fleet.candidates(pools), None) is not None

    def _affine(
        self, head: Waiter, decision: Dispatch | Wait | Reject, now: float | None
    ) -> tuple[Waiter, Dispatch, list[Waiter]] | None:
        """A request behind ``head`` to serve instead, and where: on the backend
        ``head`` would take (or leaves free, waiting for a busier one that holds its
        prompt), one whose prompt it holds more of than the head's, or that loses less
        there than the head (:func:`_regret`), by ``PASS_MARGIN`` tokens; the least
        loss first, then the most cached, then the oldest. None: the head's decision
        stands. A head that chose to wait (for the busy holder of its prompt) leaves
        the free slot to any request behind it, in the same order, and keeps its
        place; when one takes it, those that refused it are returned too (if no free
        slot is left for one of them, its wait bound starts again:
        :func:`~corral.core.routing.prefix.wait_bound`). Being passed over is bounded per request:
        ``max_pass`` seconds from the first time it was overtaken (the head, or one
        of the ``WINDOW`` behind it), after which nothing behind it may pass it. Beyond the window,
        the ``EXTRA`` oldest requests whose prompts share the most with what the
        backend holds are weighed too (:meth:`_keyed_behind`). Cost: ``WINDOW + EXTRA``
        affinity lookups and at most ``TRIES`` picks."""
        affinity = self.policy.affinity
        if affinity is None:
            return None
        if isinstance(decision, Dispatch):
            if now is None or self.max_pass <= 0:
                return None
            if head.passed_at is not None and now - head.passed_at >= self.max_pass:
                return None
            backend_id = decision.backend_id
        elif isinstance(decision, Wait) and decision.free is not None:
            backend_id = decision.free
        else:
            return None
        if isinstance(decision, Dispatch):  # beat the head by the margin
            cached = affinity(backend_id, head.request)
            least, most_regret = cached + PASS_MARGIN, _regret(head, cached) - PASS_MARGIN
        else:  # the head leaves the slot: anyone behind may have it
            least, most_regret = 0, 0
        behind = self.buffer.behind(head, WINDOW)
        candidates = behind
        for i, waiter in enumerate(behind):  # none may pass one whose bound ran out
            passed = waiter.passed_at
            if passed is not None and now is not None and now - passed >= self.max_pass:
                behind = candidates = behind[: i + 1]  # it may be served itself, not passed
                break
        else:  # and beyond the window, those whose prompt the backend holds the most of
            beyond = self._keyed_behind(backend_id, head, {id(w) for w in behind})
            if beyond:
                candidates = behind + beyond
        # who may pass: one the server suits better by the margin, or one that loses
        # less on it by the margin (a new prompt, where the head's is held elsewhere);
        # the least loss first (a miss that waiting would avoid comes last), then the
        # most cached, then the oldest
        ranked: list[tuple[int, int, int, Waiter]] = []
        for i, waiter in enumerate(candidates):
            cached = affinity(backend_id, waiter.request)
            regret = _regret(waiter, cached)
            if cached >= least or regret <= most_regret:
                ranked.append((-regret, cached, -i, waiter))
        ranked.sort(key=lambda entry: entry[:3], reverse=True)
        refused = [head] if isinstance(decision, Wait) else []
        for _, _, minus_i, best in ranked[:TRIES]:
            choice = self.policy.pick(self.fleet, best.request)
            if isinstance(decision, Dispatch):  # the pick refreshed its best_cached
                cached = affinity(backend_id, best.request)
                if cached < least and _regret(best, cached) > most_regret:
                    continue
            if isinstance(choice, Wait):
                refused.append(best)
            if isinstance(choice, Dispatch) and self._may_take(
                best.request, choice.backend_id, now
            ):
                # every request it overtakes starts its own bound now, not once it is
                # the head: none waits much more than max_pass for others (a head that
                # chose to wait for its holder is not overtaken: it left the slot)
                overtaken = behind[:-minus_i]
                if isinstance(decision, Dispatch):
                    overtaken.insert(0, head)
                for waiter in overtaken:
                    if waiter.passed_at is None:
                        waiter.passed_at = now
                return best, choice, refused
        return None

    def _start(self, backend_id: str, now: float | None, request: RequestInfo) -> None:
        self.fleet.reserve(backend_id, now, request, request.adapter)
        if id(request) not in self._running:
            self._tick(now)
            key = (self.fleet.get(backend_id).model, request.priority, request.tenant)
            self._running[id(request)] = key, now
            self._tenant_running[request.tenant] = self.running(request.tenant) + 1
            self._held[key] = self._held.get(key, 0) + 1
            self._demand.setdefault(key, 0.0)
            self._usage.setdefault(key, 0.0)

    def _tick(self, now: float | None) -> None:
        """Bring every demand estimate up to ``now`` (the slots held since the last tick)."""
        if now is None:
            return
        if self._stamp is not None and now > self._stamp:
            dt = now - self._stamp
            rise, fade = 1 - math.exp(-dt / RISE), 1 - math.exp(-dt / FADE)
            for key, held in self._held.items():
                m = self._demand[key]
                self._demand[key] = m + (rise if held > m else fade) * (held - m)
                self._usage[key] += fade * (held - self._usage[key])
        if self._stamp is None or now > self._stamp:
            self._stamp = now

    def _may_take(self, request: RequestInfo, backend_id: str, now: float | None) -> bool:
        """Whether ``request`` may take a free slot on this backend: the reserve for
        idle-only requests, and the headroom of the traffic it yields to."""
        probe = Waiter(-1, request, now or 0.0, now or 0.0)
        idle_only = self.buffer.idle_only(probe, now)
        if idle_only and not self._leaves_reserve(backend_id):
            return False
        if not idle_only and self.buffer.due(request.priority, now):
            return True  # the starvation bound: a due class yields to no tenant
        self._tick(now)
        model = self.fleet.get(backend_id).model
        yielded = [
            key
            for key in self._demand
            if key[0] == model and self.buffer.yields(request, key[1], key[2], self._tenant_running)
        ]
        if not yielded:  # no traffic to make room for: headroom 0 (and no scan of the fleet)
            return True
        total, free = self._slots(model)
        own = request.tenant
        weights = {own: self.buffer.tenant(own).weight}
        for m, _, tenant in self._demand:
            if m == model:
                weights[tenant] = self.buffer.tenant(tenant).weight
        usage: dict[str, float] = {}  # slots each tenant held lately
        for (m, _, tenant), u in self._usage.items():
            if m == model:
                usage[tenant] = usage.get(tenant, 0.0) + u
        weight_sum = sum(w for t, w in weights.items() if t == own or usage.get(t, 0) > 0.05)
        mean = held = 0.0
        for key in yielded:
            d = self._demand[key]
            _, priority, tenant = key
            if tenant != own and priority == request.priority:
                share = total * weights[tenant] / weight_sum  # within its share only
                if usage[tenant] > share:
                    continue
            mean += d
            held += self._held[key]
        headroom = math.floor(mean + SPREAD * math.sqrt(mean) + 0.5)  # slots, rounded
        if headroom <= held:
            return True
        if not idle_only and self.running(own) == 0:
            return True  # a tenant yielding to another still gets one slot
        return free - 1 >= headroom - held

    def _slots(self, model: str | None) -> tuple[int, int]:
        """The model's slots, and how many are free now."""
        total = free = 0
        for backend in self.fleet:
            if backend.routable and backend.model == model:
                total += backend.slots_total if backend.slots_share is None else backend.slots_share
                free += backend.free
        return total, free

    def _at_limit(self, request: RequestInfo) -> bool:
        limit = self.buffer.tenant(request.tenant).max_concurrent
        return limit is not None and self.running(request.tenant) >= limit

    def _leaves_reserve(self, backend_id: str) -> bool:
        """Whether taking a slot on this backend leaves its model's reserve free."""
        if not self.reserve:
            return True
        total, free = self._slots(self.fleet.get(backend_id).model)
        return free - 1 >= math.floor(self.reserve * total)

    def __repr__(self) -> str:
        return f"<Scheduler {self.fleet!r} {self.buffer!r}>"
