"""Prefix routing (``--routing prefix``): send a request where its prompt is cached.

Theory of operation
-------------------
For each request with a prompt (chat or completion), the policy weighs cache against
load:

1. **Filters** as for slot routing: model pool, free slot, pin, rules.
2. **Candidates**, a bounded set: the ``breadth`` backends with the most free slots
   (from the fleet's index: where a new prefix goes) and the backends the prefix index
   says hold the longest prefixes of this prompt (longest first, at most ``breadth``
   more: :meth:`.PrefixIndex.holders`). The cost is bounded by the prompt's length
   plus a constant, not the fleet's size.
3. **Scorers** estimate each one's time to first token from its predicted cached
   tokens, its measured prefill rate and its load (:mod:`.scorers`).
4. **Picker**: the lowest estimate, unless that would unbalance the fleet (:mod:`.picker`).
   A new prefix (no candidate, free or busy, holds any of it) goes, among the
   candidates no busier than the best and with estimates within :data:`SPREAD` of its,
   to the one given a new prefix least recently (:meth:`PrefixPolicy._spread`): new
   conversations take turns over equally loaded servers, as a consistent hash would
   spread them, and each server's cache holds its share. Without it the idle server
   measured a little faster got every new conversation (on two real servers at 50%
   load, 23 of 34 went to one, whose cache then overflowed: 12 of its predicted hits
   reused nothing, issue #10).
5. **A bounded wait**: when the backend holding the longest prefix has no free slot
   but is expected to serve the request sooner (its wait plus its short prefill) than
   the best free backend (a long prefill, which also takes that server from the
   requests that follow: :func:`elsewhere_cost`), the request waits in the buffer for
   it, as long as going elsewhere costs at most (less its own prefill on the holder),
   and never more than ``max_wait`` seconds (:func:`wait_bound`); then it goes to the
   best free backend. The wait shows in
   the log line (``route=wait-prefix``) and the ``X-Corral-Buffer-Wait`` header. The
   free backend it leaves goes to a request behind it that suits it
   (``Wait.free``).
6. **From the buffer** (under load every request waits there): :meth:`affinity` tells
   the scheduler how much of a request's prompt a backend holds, and it gives a freed
   slot to the waiting request it suits best, within bounds
   (:meth:`~corral.core.scheduler.Scheduler.assign`, ``--prefix-max-pass``).

**What a server can reuse.** Without a host prompt cache a llama-server slot keeps
only its own last prompt, and a request gets an idle slot: a prompt held by a busy
slot is no use to it. The policy keeps what each slot last read (llama-server's choice
of slot: the idle one sharing more than ``SIMILARITY`` of the prompt, else the least
recently used) and counts only what idle slots hold. With a host cache
(``--cache-ram``, as the agent reports it) any prompt the index says the server holds
counts. Servers whose agents cannot report it (attached ones) are judged together, as
servers of a fleet are started alike: each is taken to have llama-server's default host
cache from its first request, until :data:`HOST_DOUBTS` answers of theirs show none
(they reused no more than their idle slots held where the index predicted more), and
for good once one shows one (it reused more than its idle slots held). Waiting for an
answer to show one sent 1-5 later turns a run, in its first 50 s, on four real servers
of one slot to another server to read their whole history: a server shows its cache
only when a later turn lands where its conversation was after its slot moved on, and
until then a conversation whose server is busy is held nowhere (issue #10).

Without a prompt (embeddings, multipart, pinned requests), for a prompt sent with
``cache_prompt: false`` (the server reuses nothing for it, wherever it goes), or
before any server has reported a prefill rate (a fleet without ``timings``), it routes
as slot routing. Either way, every dispatch is recorded in the index, so it learns
from the start.

**Learning** from the fleet's events (:mod:`corral.core.events`): a dispatch adds the
prompt's blocks to the backend's entries, bounded by what the server holds: its slots
times its context plus its host prompt cache (``--cache-ram``; llama-server's default
when the agent does not report it but the answers show one, see
:data:`DEFAULT_CACHE_MIB`); a finished request teaches the prefill rate
and the bytes-per-token ratio, and when the server reused fewer tokens than predicted
because it evicted them, its stale entries are dropped
(:meth:`.PrefixIndex.forget_older`; a copy in a busy slot, or part of one prompt
reused, is no eviction: :func:`_evicted`); a server that left, restarted or changed
model loses its entries.

**A host cache's real size is learned.** The bound above is a guess wherever the agent
does not report ``--cache-ram`` (the default 8 GiB is some 60 conversations of 1,000
tokens at :data:`KV_BYTES_PER_TOKEN`; four real attached servers held 5 each, and 13 of
117 turns were predicted on conversations evicted long before: issue #10), and a
reported size is turned into tokens at a guessed ratio. So an eviction on a server with
a host cache sets its bound to what the index still holds for it (what it held more
recently than the block it evicted); the index then forgets its oldest conversations
when the server does, and their next turns go as new ones. When an answer then reuses
more than the index held (it had let go what the server kept), the bound grows by the
shortfall, an eighth at least. A learned bound is never below what the slots hold nor
above the default host cache (:data:`REPORTED_SLACK` times a reported one); nothing is
learned on a server shared with another balancer (its requests fill the server
unseen), and a reset or a reported cache of 0 forgets what was learned.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from corral.core.events import Dispatched, Finished, FleetEvent, Reset
from corral.core.fleet import Backend, Fleet
from corral.core.routing.decision import Decision, Dispatch, Wait
from corral.core.routing.filters import (
    Rule,
    answers,
    has_adapter,
    in_pools,
    loaders,
    resolve_pools,
    with_free_slot,
)
from corral.core.routing.picker import Scored, pick
from corral.core.routing.prefix_index import PrefixIndex
from corral.core.routing.request import Prompt, RequestInfo, RouteNote
from corral.core.routing.scorers import PrefillRates, TokenRatio, estimated_ttft, expected_wait
from corral.core.routing.slots import SlotPolicy

DEFAULT_CTX = 4096
"""Context per slot assumed for a server whose ``/props`` does not say (llama-server's
``n_ctx`` per slot in ``default_generation_settings``)."""
KV_BYTES_PER_TOKEN = 128 * 1024
"""Host memory one cached token takes, to turn ``--cache-ram`` MiB into tokens: an
8B model with grouped-query attention at f16 (32 layers x 8 KV heads x 128 x 2 x 2
bytes). Smaller models take less, so this errs towards predicting too little."""
DEFAULT_CACHE_MIB = 8192
"""llama-server's own ``--cache-ram`` (the pinned build's default, MiB). It stands for
``--cache-ram -1`` (no limit) and for a host cache whose size is not reported (an
attached server: its agent cannot see the flag), from its first request until answers
show it has none (:data:`HOST_DOUBTS`). Taking an unknown cache to be the
default errs towards predicting too much, which answers correct
(:meth:`PrefixIndex.forget_older` drops what a server no longer held, and the first
eviction sets the server's bound: see the module docstring). Predicting too little
costs more while it lasts (the index forgets conversations the server still holds and
sends their next turns anywhere) and is corrected only by an answer that reuses a
conversation the index had let go."""
SPREAD = 1.2
"""How close to the lowest estimate another candidate's must be (a ratio) for a new
prefix to go to it instead (:meth:`PrefixPolicy._spread`). Estimates of equally loaded
servers differ by their measured speeds (:class:`~corral.core.routing.scorers.PrefillRates`):
moving averages of answers whose rates vary 20-30% from one to the next on one server
(the pinned build on this project's CPU, whose servers share its cores), so two like
servers' speeds differ by some percent at any moment. A candidate busier than the best
one is never taken (load, not noise), whatever its estimate."""
REPORTED_SLACK = 8
"""How far a learned bound may grow past a reported ``--cache-ram`` (a factor): a model
smaller than :data:`KV_BYTES_PER_TOKEN`'s 8B takes less memory per token (Gemma 3 270M,
this project's, about 26 KB with its context checkpoints: 5x fewer)."""
RESIDUAL = 0.2
"""The least share of its server's mean run time a running request is expected to
still run (:meth:`PrefixPolicy._expected_wait`): one that has run past the mean is
not about to end (run times have long tails: an answer of 128 tokens runs four times
one of 32)."""
HOST_DOUBTS = 2
"""Answers of servers whose agents report no cache size that must show no host cache
(they reused no more than their idle slots held, where a host cache would have kept
more) before none of them is taken to have one (:meth:`PrefixPolicy._judge_host`). One
whose host cache evicted the prompt answers the same, so one such answer is not
enough; a fleet without host caches shows it within its first later turns that find
their slot taken (``--cache-ram 0``, or a build before host caches:
``benchmarks/prefix_replay.py --fleet 2,2,0``)."""
SIMILARITY = 0.1
"""llama-server's ``--slot-prompt-similarity`` default: an idle slot whose prompt shares
more than this share of a new one gets it, else the least recently used idle slot."""


@dataclass(slots=True)
class _Slot:
    """What one slot of a server last read, as the balancer sent it."""

    hashes: list[int] = field(default_factory=list)  # the prompt's block hashes
    busy: bool = False
    used: int = 0  # when it was last taken (a counter)
    since: float | None = None  # when its request was sent (the balancer's clock, seconds)
    known: bool = False  # taken since the server (re)started: ``hashes`` is what it holds
    running: _Running | None = field(default=None, repr=False, compare=False)  # until it ends


@dataclass(slots=True)
class _Running:
    """A request the policy saw dispatched, until it finishes: where, on which slot,
    what that slot held before (to take the dispatch back if the request is never
    sent), and what :meth:`PrefixPolicy._finished` compares its answer with."""

    backend_id: str
    slot: _Slot
    idle: int | None  # blocks an idle slot held (None: unknown): see _evidence_base
    hashes: list[int]  # the prompt's blocks (the slot took them all; the index, its bound)
    before: tuple[list[int], int, bool]  # the slot's hashes, used and known before
    stamp: int | None  # the index's stamp for the blocks the dispatch added
    added: int  # hashes[added:] were new to the server's entries (the rest renewed)
    # stamps of other dispatches taken back that had renewed or brought some of
    # hashes[added:]: those blocks bear them now, and go with this one's if it is never
    # sent either (a set: a chain of them taken back latest first passes each on once;
    # empty and shared until one is passed on: no set made per dispatch)
    also: AbstractSet[int] = frozenset()


def wait_bound(elsewhere: float, there: float, cap: float) -> float:
    """Seconds a request may wait for the busy server holding its prompt: what the
    wait would save, ``elsewhere - there`` (the cost of the best free server, a long
    prefill and the share of that server it takes: :func:`elsewhere_cost`, minus its
    short prefill on the holder), and never more than ``cap`` (``--prefix-max-wait``).

    This is the ski-rental rule: wait until the time spent waiting equals what going
    elsewhere costs, then go. While the free server stays free, whatever the holder's
    real wait turns out to be, the request's time to first token is then at most about
    ``elsewhere`` plus its prefill there (on a one-slot server, three times that
    prefill; on one of four slots, 2.25 times), and a holder that frees in time saves
    the whole prefill. When a request behind it in its queue takes the free server
    meanwhile and no free slot of its model is left (at saturation), the request could
    go nowhere else: the scheduler starts the bound again at its next refusal;
    ``cap``, counted from the first refusal (``note.wait_cap``), still holds. While
    another free slot is left the bound runs on (restarting it whenever the refused
    slot was taken let requests on a 16-server fleet at 50% load wait 4 s, then read
    their whole prompt elsewhere: issue #10). The bound scales with the prompt and the
    hardware (a second on a GPU, many on a CPU), where a fixed number of seconds suits
    one of them only. Returns 0 or more."""
    return max(0.0, min(cap, elsewhere - there))


def elsewhere_cost(ttft: float, slots: int) -> float:
    """What sending a request to a server that must read its whole prompt costs, in
    seconds, when another server holds it: its estimated time to first token there,
    ``ttft``, and the share of that server the long prefill takes from the requests
    that follow, ``ttft / slots``: a server of one slot serves no one else meanwhile,
    one of four slots gives it a quarter of its batch. The holder's wait costs no
    server anything.

    Replayed through the pure core (``benchmarks/prefix_replay.py --fleet 4,1,4
    --turn-words 32``, six seeds per load): counting the winner's prefill alone, 15.2%
    of conversations' later turns at 50% load and 36.1% at 90% went to another server
    than their last turn's and read the whole history again (67.6% and 54.5% of prompt
    tokens reused, against the sticky oracle's 74.0% and 73.7%); counted so, 2.5% and
    3.7% (74.6% and 73.9% reused). ``slots`` below 1 counts as 1."""
    return ttft * (1.0 + 1.0 / max(1, slots))


def _depths(blocks: int) -> list[int]:
    """1, 2, 4... up to ``blocks`` (none for 0): where prompts are keyed for the buffer."""
    out, depth = [], 1
    while depth <= blocks:
        out.append(depth)
        depth *= 2
    return out


def _count_first(
    starts: dict[int, dict[str, int]], backend_id: str, hashes: list[int], change: int
) -> None:
    """Count a slot's prompt in (``+1``) or out (``-1``) of the first-block counts
    (``PrefixPolicy._starts``); an empty prompt is not counted."""
    if not hashes:
        return
    first = hashes[0]
    counts = starts.get(first)
    count = (counts.get(backend_id, 0) if counts else 0) + change
    if count > 0:
        if counts is None:
            starts[first] = {backend_id: count}
        else:
            counts[backend_id] = count
    elif counts is not None:
        counts.pop(backend_id, None)
        if not counts:
            del starts[first]


def _by_ttft(scored: Scored) -> float:
    return scored.ttft


def _by_use(slot: _Slot) -> int:
    return slot.used


_SLACK = 1
"""Blocks an estimate of the blocks reused may be off by, either way (the chat
template's tokens, a prompt's uneven bytes per token)."""


def _evicted(note: RouteNote, real: int) -> int | None:
    """Whether a server that reused only ``real`` leading blocks of a prompt, fewer
    than predicted, shows that it evicted block ``real`` (and so, least recently used
    first, everything it held less recently: :meth:`.PrefixIndex.forget_older`): the
    recency stamp of the evicted block, to forget what is no more recent, or ``None``
    for no eviction.

    Two shortfalls are no eviction, and forgetting on them made the index forget most
    conversations a server held, so their next turns went anywhere (issue #10):

    - the copy was in flight: a request still running on that server was sent those
      blocks (``note.in_flight``); a busy slot's prompt is no use to another request
      until it ends (a conversation's next turn sent before its answer came);
    - part of one prompt was reused: block ``real`` was last sent in the same request
      as block ``real - 1``, which the server did reuse (their stamps in
      ``note.prior`` are equal). llama-server caches and evicts whole prompts, a
      slot's or a host cache entry, so it held that prompt; it reused less of it by
      its own rules: with sliding-window attention (Gemma 3) it rolls back to a
      context checkpoint taken near the end of the prompt, a few hundred tokens
      short.

    ``real`` is an estimate (``cache_n`` in blocks, by the prompt's bytes per token), so
    partial reuse is judged only when every block within :data:`_SLACK` blocks of
    ``real`` either way was last sent in one request: a stamp that changes there (a
    shared system prompt renewed since, whose reuse alone is what an evicted
    conversation leaves) is an eviction whichever side of it ``real`` fell, and the
    evicted block is the least recent there.

    ``real`` is below ``len(note.prior)``."""
    if real < note.in_flight:
        return None
    if real == 0:
        return note.prior[0]
    window = note.prior[max(0, real - 1 - _SLACK) : real + 1 + _SLACK]
    oldest = min(window)
    return oldest if oldest != max(window) else None


def shared_blocks(a: Sequence[int], b: Sequence[int]) -> int:
    """Leading blocks two prompts share: chained hashes are equal at ``i`` only if they
    are equal up to ``i``, so a binary search (about log2 of the shorter's length)."""
    low, high = 0, min(len(a), len(b))
    if not high or a[0] != b[0]:  # most prompts share nothing: one comparison
        return 0
    while low < high:
        mid = (low + high) // 2
        if a[mid] == b[mid]:
            low = mid + 1
        else:
            high = mid
    return low


class PrefixPolicy:
    """Prefix-cache-aware routing. See the module docstring.

    Args:
        block: prefix index block size, bytes of canonical text.
        imbalance: the picker's balance guard, in busy slots.
        max_wait: the most seconds a request may wait for the busy holder of its prefix
            (0: never); within it, as long as the wait saves (:func:`wait_bound`).
        breadth: least-loaded candidates scored, and as many prefix holders at most.
        clock: the balancer's clock (seconds), for ``max_wait``.
        rules: extra filters, as for slot routing.
    """

    name = "prefix"
    needs_prompt = True

    def __init__(
        self,
        *,
        block: int = 1024,
        imbalance: int = 2,
        max_wait: float = 10.0,
        breadth: int = 8,
        clock: Callable[[], float] | None = None,
        rules: Sequence[Rule] = (),
    ) -> None:
        self.index = PrefixIndex(block)
        self.rates = PrefillRates()
        self.ratio = TokenRatio()
        self.imbalance = imbalance
        self.max_wait = max_wait if clock is not None else 0.0
        self.breadth = breadth
        self.clock = clock
        self.rules = tuple(rules)
        self._slots = SlotPolicy(rules)
        self._freed: dict[str, list[int]] = {}  # backend -> block hashes of the last end
        self._slots_of: dict[str, list[_Slot]] = {}  # backend -> what its slots last read
        # first block hash of a slot's prompt -> backend -> how many of its slots: a
        # prompt no slot starts with shares nothing with any (chained hashes), found in
        # one lookup for all candidates instead of a scan of each one's slots (most
        # candidates, for most prompts)
        self._starts: dict[int, dict[str, int]] = {}
        self._in: dict[int, _Running] = {}  # id(request) -> where it runs
        self._host: set[str] = set()  # backends with a host cache (reported, or assumed)
        self._unreported: set[str] = set()  # backends whose agents report no cache size
        self._host_seen = False  # an unreported one has shown a host cache
        self._doubts = 0  # answers of unreported ones that showed none (see HOST_DOUBTS)
        self._bound: dict[str, int] = {}  # backend -> blocks its caches hold, as learned
        self._uses = 0
        self._placed: dict[str, int] = {}  # backend -> when it last got a new prefix (a counter)

    # ------------------------------------------------------------------ picking
    def pick(self, fleet: Fleet, request: RequestInfo) -> Decision:
        prompt = request.prompt
        if (
            prompt is None
            or not prompt.cache_prompt  # it reuses nothing anywhere: load alone decides
            or request.backend_id is not None
            or request.adapter is not None  # a cache made with another adapter is no use
            or not self.rates.known
        ):
            decision = self._slots.pick(fleet, request)
            if prompt is not None and request.adapter is None and isinstance(decision, Dispatch):
                self._predict(decision.backend_id, prompt, request)
            return decision
        pools = resolve_pools(fleet, request)
        if not isinstance(pools, list):
            return pools
        hashes = prompt.hashes(self.index.block)
        tokens = self.ratio.tokens(len(prompt))
        scored: list[Scored] = []
        busy: list[Scored] = []  # busy slots there hold more than a free one would reuse
        seen: set[str] = set()
        # the filters veto nothing when the request names no API family and there are
        # no rules (a request with an adapter was routed as slot routing above)
        vets = request.api is not None or bool(self.rules)
        weigh, accepts, speed_of, host = self._weigh, self._accepts, self.rates.speed, self._host
        whole = self.rates.at(tokens) or 1.0  # the fleet's rate for reading all of it
        # the backends some slot of which starts as the prompt does (no other slot holds
        # any of it: chained hashes), and those the index says hold its first block
        # (with a host cache, what a request there reuses), read once for all candidates
        starts = self._starts.get(hashes[0]) if hashes else None
        firsts = self.index.first_holders(hashes) if host else None
        for backend in itertools.islice(with_free_slot(fleet, pools), self.breadth):
            if vets and not accepts(backend, request):
                continue
            backend_id = backend.id
            seen.add(backend_id)
            if (starts is not None and backend_id in starts) or (
                firsts is not None and backend_id in firsts and backend_id in host
            ):
                weigh(backend, hashes, tokens, None, scored, busy)
                continue
            # most candidates: nothing there holds any of the prompt (no slot, nor, with
            # a host cache, the index), so a free slot reads all of it (what _weigh and
            # _score find, inlined: per candidate)
            free = backend.free
            if free > 0:
                ttft = estimated_ttft(backend, tokens, speed_of(backend_id) * whole, 0.0, free)
                scored.append(Scored(backend, ttft, 0, 0, backend.slots_total - free))
        added = 0
        for backend_id, blocks in self.index.holders(hashes):
            if added >= self.breadth:
                break
            if backend_id in seen or backend_id not in fleet:
                continue
            backend = fleet.get(backend_id)
            if not backend.routable or not in_pools(backend, pools):
                continue
            if vets and not accepts(backend, request):
                continue
            seen.add(backend_id)
            added += 1
            weigh(backend, hashes, tokens, blocks, scored, busy)
        busy_holder = min(busy, key=_by_ttft) if busy else None
        note = request.note
        best_cached = 0
        for s in itertools.chain(scored, busy):  # a plain loop: this is per request
            if s.cached_tokens > best_cached:
                best_cached = s.cached_tokens
        note.best_cached = best_cached
        if not scored:
            for backend in loaders(fleet, pools):  # no server has the model loaded
                if self._accepts(backend, request):
                    note.reason = "load"
                    return Dispatch(backend.id)
            return Wait("no free slot")
        winner, reason = pick(scored, self.imbalance)
        if busy_holder is not None and self._wait_for(busy_holder, winner, request):
            note.reason = "wait-prefix"
            return Wait(
                f"waiting for {busy_holder.backend.name}, which holds the prompt",
                free=winner.backend.id,
            )
        if reason == "least-load" and best_cached == 0:  # a prefix new to every candidate
            winner = self._spread(scored, winner)
        note.reason = reason
        note.predicted_cached = winner.cached_tokens
        return Dispatch(winner.backend.id)

    def _spread(self, scored: list[Scored], best: Scored) -> Scored:
        """Where a prompt no candidate holds any of goes: of the candidates no busier
        than ``best`` (in busy slots) and whose estimate is within :data:`SPREAD` of its,
        the one given a new prefix least recently (one never given one, or reset since,
        first). A prompt whose holder is busy is no new conversation: it goes to the
        fastest free candidate, or waits for its holder."""
        limit = best.ttft * SPREAD
        busy = best.busy
        placed = self._placed
        chosen, last = best, placed.get(best.backend.id, -1)
        for s in scored:  # a plain loop: candidates are few
            if s.busy <= busy and s.ttft <= limit:
                when = placed.get(s.backend.id, -1)
                if when < last:
                    chosen, last = s, when
        return chosen

    def _accepts(self, backend: Backend, request: RequestInfo) -> bool:
        return (
            answers(backend, request)
            and has_adapter(backend, request)
            and (not self.rules or all(rule.accepts(backend, request) for rule in self.rules))
        )

    def _weigh(
        self,
        backend: Backend,
        hashes: list[int],
        tokens: int,
        blocks: int | None,
        scored: list[Scored],
        busy: list[Scored],
    ) -> None:
        """Score a candidate: its free slot (into ``scored``), and, when a busy slot
        there holds more of the prompt than a free one (:meth:`_held`), the wait for
        that slot (into ``busy``): a request may wait for it (:meth:`_wait_for`)."""
        free = backend.free  # a property that computes: read once
        if backend.id not in self._host and hashes:
            starts = self._starts.get(hashes[0])
            if not starts or backend.id not in starts:  # no slot holds any of it
                if free > 0:
                    scored.append(self._score(backend, 0, tokens, free))
                return
        if backend.id not in self._host:  # what a busy slot holds now, not what it held
            held, in_busy = self._slot_matches(backend.id, hashes)  # see _held
            blocks = in_busy if free > 0 else max(held, in_busy)
        else:
            held = self._held(backend, hashes, blocks)
            if blocks is None:
                blocks = self.index.match(backend.id, hashes)
        if free > 0:
            scored.append(self._score(backend, held, tokens, free))
        if blocks and (free == 0 or held < blocks):
            # without a host cache only the slot holding the prompt will do
            holding = hashes if backend.id not in self._host else None
            holder = self._score(backend, blocks, tokens, free, holding)
            if free > 0:  # estimated_ttft counted no wait: the holder frees in turn
                holder.wait = self._expected_wait(backend, holding)
                holder.ttft += holder.wait
            busy.append(holder)

    def _expected_wait(self, backend: Backend, holding: list[int] | None = None) -> float:
        """Seconds until a busy slot of ``backend`` is expected to free (with
        ``holding``, a prompt's block hashes: one whose prompt starts as it does): of
        the requests the policy sent there, the soonest expected to end (its mean run
        time there less how long it has run, and at least :data:`RESIDUAL` of the
        mean: one past its mean is expected to run on). Without a clock, or where the
        policy sent none of the requests running there, the mean run time over its
        slots."""
        slots = self._slots_of.get(backend.id)
        if self.clock is None or not slots:
            return expected_wait(backend, self.rates)
        duration = self.rates.duration(backend.id)
        now, soonest = self.clock(), None
        floor = RESIDUAL * duration
        first = holding[0] if holding else None
        for s in slots:  # a plain loop: slots are few, and only busy candidates ask
            if (
                s.busy
                and s.since is not None
                and (first is None or (s.hashes and s.hashes[0] == first))
            ):
                left = max(floor, duration - (now - s.since))
                if soonest is None or left < soonest:
                    soonest = left
        return expected_wait(backend, self.rates) if soonest is None else soonest

    def _score(
        self,
        backend: Backend,
        blocks: int,
        tokens: int,
        free: int | None = None,
        holding: list[int] | None = None,
    ) -> Scored:
        if free is None:
            free = backend.free
        cached = min(tokens, self.ratio.tokens(blocks * self.index.block)) if blocks else 0
        rate = self.rates.rate(backend.id, tokens - cached) or 1.0  # known: some was measured
        wait = self._expected_wait(backend, holding) if free == 0 else 0.0
        ttft = estimated_ttft(backend, tokens - cached, rate, wait, free)
        return Scored(backend, ttft, blocks, cached, backend.slots_total - free, wait)

    def _wait_for(self, holder: Scored, winner: Scored, request: RequestInfo) -> bool:
        """Whether to wait for ``holder`` (busy) rather than send to ``winner`` now.

        It waits when the holder is expected to serve it sooner (its expected wait plus
        its short prefill, against the winner's long one, counted with what it takes
        from the winner's other users: :func:`elsewhere_cost`), and for as long as the
        prefill it would save, at most: :func:`wait_bound`."""
        if self.clock is None or self.max_wait <= 0 or holder.cached_blocks <= winner.cached_blocks:
            return False
        now = self.clock()
        note = request.note
        elsewhere = elsewhere_cost(winner.ttft, winner.backend.slots_total)
        if note.wait_until is None:
            if holder.ttft >= elsewhere:
                return False
            if note.wait_cap is None:  # its first refusal: max_wait counts from here
                note.wait_cap = now + self.max_wait
            own_prefill = max(0.0, holder.ttft - holder.wait)
            bound = wait_bound(elsewhere, own_prefill, self.max_wait)
            note.wait_until = min(now + bound, note.wait_cap)
        return now < note.wait_until and holder.ttft < elsewhere

    def affinity(self, backend_id: str, request: RequestInfo) -> int:
        """How well ``backend_id`` suits ``request``, in prompt tokens (0 without a
        prompt, with ``cache_prompt: false``, an adapter or a pin): the tokens a free
        slot there would reuse (:meth:`_held`), and with a host cache once more those
        the prompt shares with the one that last ended there (the slot that just freed
        holds it; llama-server gives a request the idle slot whose prompt shares the
        most, and under load that is the only idle one). The scheduler weighs requests
        waiting in the buffer for a freed slot by it. Cost: about (slots + 2)
        log2(prompt blocks) lookups."""
        prompt = request.prompt
        if (
            prompt is None
            or not prompt.cache_prompt
            or request.adapter is not None
            or request.backend_id is not None
        ):
            return 0
        if backend_id not in self._slots_of:
            return 0
        hashes = prompt.hashes(self.index.block)
        if backend_id not in self._host:
            return self.ratio.tokens(self._slot_match(backend_id, hashes) * self.index.block)
        blocks = self.index.match(backend_id, hashes)
        if not blocks:
            return 0
        freed = shared_blocks(hashes, self._freed.get(backend_id, ()))
        return self.ratio.tokens((blocks + freed) * self.index.block)

    def waiter_keys(self, request: RequestInfo) -> list[int]:
        """Keys to find ``request`` by while it waits in the buffer
        (:meth:`~corral.core.scheduler.Scheduler.assign`): its prompt's chained block
        hashes at depths 1, 2, 4, 8... blocks. A prompt shares ``2**k`` blocks or more
        with another exactly when they have the key at depth ``2**k`` in common (none
        without a prompt, with ``cache_prompt: false``, an adapter or a pin:
        :meth:`affinity` is 0 for them)."""
        prompt = request.prompt
        if (
            prompt is None
            or not prompt.cache_prompt
            or request.adapter is not None
            or request.backend_id is not None
        ):
            return []
        hashes = prompt.hashes(self.index.block)
        return [hashes[d - 1] for d in _depths(len(hashes))]

    def held_keys(self, backend_id: str) -> list[int]:
        """The keys (as :meth:`waiter_keys`) of the prompts a request sent to
        ``backend_id`` now would reuse, deepest first: what its idle slots hold (and,
        with a host cache, the prompt that ended there last). The scheduler looks up
        waiting requests by them, beyond the window it weighs, for a freed slot."""
        prompts = [s.hashes for s in self._slots_of.get(backend_id, ()) if not s.busy]
        if backend_id in self._host and backend_id in self._freed:
            prompts.append(self._freed[backend_id])
        keyed = sorted(((d, h[d - 1]) for h in prompts for d in _depths(len(h))), reverse=True)
        return [key for _, key in keyed]

    def _held(
        self,
        backend: Backend,
        hashes: list[int],
        blocks: int | None = None,
        idle: int | None = None,
    ) -> int:
        """Leading blocks of a prompt that a request sent to ``backend`` now would reuse,
        predicted. With a host prompt cache (``--cache-ram``: reported, or seen in its
        answers) the server restores any prompt it holds: the index's match
        (``blocks`` when the caller has it). Without one a slot keeps only its own last
        prompt and the request gets an idle slot: only what an idle slot holds counts,
        not a prompt held by a busy slot (a server of 4 slots holds 4 prompts at most,
        and reuses only those whose slots are free); the slots' contents are known
        exactly (what was sent), where the index may have let a tail go. ``idle``: the
        idle slots' match (:meth:`_slot_matches`) when the caller has it."""
        if backend.id not in self._host:
            return self._slot_match(backend.id, hashes) if idle is None else idle
        return self.index.match(backend.id, hashes) if blocks is None else blocks

    def _slot_match(self, backend_id: str, hashes: list[int], busy: bool | None = False) -> int:
        """The most leading blocks of a prompt an idle slot of the backend holds (a busy
        one, with ``busy``; any, with None)."""
        idle, in_busy = self._slot_matches(backend_id, hashes)
        if busy is None:
            return max(idle, in_busy)
        return in_busy if busy else idle

    def _slot_matches(self, backend_id: str, hashes: list[int]) -> tuple[int, int]:
        """The most leading blocks of a prompt an idle slot of the backend holds, and
        a busy one, in one pass over its slots."""
        if not hashes:
            return 0, 0
        first = hashes[0]
        starts = self._starts.get(first)
        if not starts or backend_id not in starts:
            return 0, 0
        idle = busy = 0
        for s in self._slots_of.get(backend_id, ()):  # a plain loop: this is per candidate
            if s.hashes and s.hashes[0] == first:
                shared = shared_blocks(hashes, s.hashes)
                if s.busy:
                    busy = max(busy, shared)
                else:
                    idle = max(idle, shared)
        return idle, busy

    def _predict(self, backend_id: str, prompt: Prompt, request: RequestInfo) -> None:
        if not prompt.cache_prompt:
            request.note.predicted_cached = 0
            return
        hashes = prompt.hashes(self.index.block)
        if backend_id in self._host:
            blocks = self.index.match(backend_id, hashes)
        else:
            blocks = self._slot_match(backend_id, hashes)
        request.note.predicted_cached = min(
            self.ratio.tokens(len(prompt)), self.ratio.tokens(blocks * self.index.block)
        )

    # ----------------------------------------------------------------- learning
    def observe(self, event: FleetEvent) -> None:
        """The fleet's events: see :mod:`corral.core.events`."""
        if isinstance(event, Dispatched):
            self._dispatched(event)
        elif isinstance(event, Finished):
            self._finished(event)
        elif isinstance(event, Reset):
            self._freed.pop(event.backend_id, None)
            for s in self._slots_of.pop(event.backend_id, ()):
                _count_first(self._starts, event.backend_id, s.hashes, -1)
            gone = [key for key, run in self._in.items() if run.backend_id == event.backend_id]
            for key in gone:  # their ends will not come (or will find no slot)
                del self._in[key]
            self._host.discard(event.backend_id)
            self._unreported.discard(event.backend_id)
            self._bound.pop(event.backend_id, None)  # it may have restarted with other flags
            self._placed.pop(event.backend_id, None)
            self.index.drop(event.backend_id)
            if event.reason != "restarted":
                self.rates.forget(event.backend_id)
            if event.reason == "left":
                self.index.forget(event.backend_id)

    def _dispatched(self, event: Dispatched) -> None:
        request = event.request
        if not isinstance(request, RequestInfo):
            return
        backend = event.backend
        now = self.clock() if self.clock is not None else None  # _expected_wait's clock
        if request.prompt is None:  # it takes a slot all the same (and what it held)
            slot, before = self._take_slot(backend, [])
            slot.since = now
            slot.running = self._in[id(request)] = _Running(
                backend.id, slot, 0, slot.hashes, before, None, 0
            )
            return
        hashes = request.prompt.hashes(self.index.block)
        note = request.note
        note.prior = self.index.stamps(backend.id, hashes)
        in_idle, in_busy = self._slot_matches(backend.id, hashes)
        held = self._held(backend, hashes, len(note.prior), in_idle)
        if held == 0 and hashes:  # a prefix new to it (whatever the route): see _spread
            self._uses += 1
            self._placed[backend.id] = self._uses
        if not request.prompt.cache_prompt:  # reused nowhere: its 0 is no eviction
            held = 0
        note.predicted_blocks = held
        idle = self._evidence_base(backend, in_idle)  # for learning of a host cache
        note.sent_at = event.now
        note.in_flight = in_busy
        mib = backend.cache_ram_mib
        if mib is not None:  # the agent says: trust it over what was seen
            (self._host.add if mib != 0 else self._host.discard)(backend.id)
            self._unreported.discard(backend.id)
            if mib == 0:
                self._bound.pop(backend.id, None)
        else:
            self._unreported.add(backend.id)
            if self._host_assumed:  # as the others (see the module docstring)
                self._host.add(backend.id)
        self.index.set_capacity(backend.id, self._capacity_blocks(backend))
        stamp = self.index.add(backend.id, hashes)
        self._freed.pop(backend.id, None)  # the freed slot is (probably) taken
        slot, before = self._take_slot(backend, hashes)
        slot.since = now
        slot.running = self._in[id(request)] = _Running(
            backend.id, slot, idle, hashes, before, stamp, len(note.prior)
        )

    def _take_slot(
        self, backend: Backend, hashes: list[int]
    ) -> tuple[_Slot, tuple[list[int], int, bool]]:
        """The slot llama-server gives a prompt (without ``id_slot``): the idle one
        sharing more than ``SIMILARITY`` of it, else the idle one used least recently
        (any, when the balancer's count says none is idle); it now holds the prompt.
        Also what it held before (its hashes, used and known), to put back if the
        request is never sent (:meth:`_unsent`)."""
        slots = self._slots_of.setdefault(backend.id, [])
        starts = self._starts
        n = max(1, backend.slots_total)
        if len(slots) != n:  # the server's slots changed (or first seen)
            for gone in slots[n:]:
                _count_first(starts, backend.id, gone.hashes, -1)
            del slots[n:]
            slots.extend(_Slot() for _ in range(n - len(slots)))
        idle = [s for s in slots if not s.busy] or slots
        best, shared = idle[0], 0
        if hashes and backend.id in starts.get(hashes[0], ()):  # a slot shares its start
            shared = -1
            for s in idle:  # the first that shares the most (max's choice), each once
                common = shared_blocks(hashes, s.hashes)
                if common > shared:
                    best, shared = s, common
        if shared <= SIMILARITY * len(hashes):
            best = min(idle, key=_by_use)
        self._uses += 1
        _count_first(starts, backend.id, best.hashes, -1)
        _count_first(starts, backend.id, hashes, +1)
        before = best.hashes, best.used, best.known
        best.hashes, best.busy, best.used, best.known = hashes, True, self._uses, True
        return best, before

    def _evidence_base(self, backend: Backend, idle: int) -> int | None:
        """What a request's answer must beat to show a host cache: ``idle``, the most
        blocks of its prompt an idle slot holds (:meth:`_slot_matches`), when every
        slot's content is known; None when it is not (a slot untaken since the server
        restarted holds what it held before, and with another balancer in front of the
        same server (``slots_share``: docs/ha.md) requests this one never saw fill its
        slots)."""
        slots = self._slots_of.get(backend.id, ())
        if backend.slots_share is not None or len(slots) < backend.slots_total:
            return None
        for s in slots:  # a plain loop: this is per dispatch
            if not s.known:
                return None
        return idle

    def _finished(self, event: Finished) -> None:
        request, timings, backend_id = event.request, event.timings, event.backend.id
        if not isinstance(request, RequestInfo):
            return
        note = request.note
        if note.sent_at is not None and event.now is not None and timings is not None:
            self.rates.ran(backend_id, event.now - note.sent_at)  # an answer, not a cancel
        running = self._in.pop(id(request), None)
        if not event.sent:
            if running is not None:
                self._unsent(running)
            return
        if running is not None:
            running.slot.busy = False  # it keeps the prompt
            if running.slot.running is running:
                running.slot.running = None
            if event.backend.reserved:  # others still running there
                self._vouch(running)
        if request.prompt is not None and request.adapter is None:
            self._freed[backend_id] = request.prompt.hashes(self.index.block)
        if timings is None:
            return
        self.rates.learn(backend_id, timings)
        prompt = request.prompt
        if prompt is None or timings.prompt_tokens <= 0:
            return
        self.ratio.learn(len(prompt), timings.prompt_tokens)
        hashes = prompt.hashes(self.index.block)
        real = timings.cache_n * len(prompt) // (timings.prompt_tokens * self.index.block)
        if (
            running is not None
            and not self._host_seen
            and event.backend.cache_ram_mib is None
            and running.idle is not None
        ):
            self._judge_host(running.idle, real, note)
        # one block of slack for the chat template; ``prior`` may be shorter than the
        # prediction (slots hold what the index let go): then nothing older to forget
        if real + _SLACK < note.predicted_blocks and real < len(note.prior):
            evicted = _evicted(note, real)
            if evicted is not None:
                self.index.forget_older(backend_id, evicted)
                if backend_id in self._host and event.backend.slots_share is None:
                    # what is left is what it holds: its bound, at least what its
                    # slots hold (another balancer's requests fill a shared server)
                    floor = max(len(hashes), self._slot_blocks(event.backend))
                    self._bound[backend_id] = max(floor, self.index.size(backend_id))
        elif (
            real > len(note.prior) + _SLACK
            and backend_id in self._host
            and event.backend.slots_share is None
        ):
            # it held blocks the index had let go: its bound was too low
            bound = self._bound.get(backend_id)
            if bound is None and event.backend.cache_ram_mib is not None:
                bound = self.index.capacity(backend_id)  # a reported size, in too few tokens
            if bound is not None:
                grown = bound + max(real - len(note.prior), bound // 8)
                self._bound[backend_id] = min(grown, self._largest_blocks(event.backend))

    @property
    def _host_assumed(self) -> bool:
        """Whether servers whose agents report no cache size are taken to have a host
        cache: once one has shown one, and until :data:`HOST_DOUBTS` answers have
        shown none (llama-server keeps one by default)."""
        return self._host_seen or self._doubts < HOST_DOUBTS

    def _judge_host(self, idle: int, real: int, note: RouteNote) -> None:
        """What an answer of a server whose agent reports no cache size shows of its
        host cache, before any has shown one: one, when it reused more than any idle
        slot held (``idle`` blocks), and then every such server is taken to have one
        for good; none, when it reused no more than they held though the index, taking
        the server to keep its prompts, predicted more (not a copy in a busy slot),
        and more than twice what they held: llama-server saves a slot's prompt in its
        host cache only when the prompt that takes the slot keeps less than half of it
        (or the slot is taken as the least recently used), so a turn whose slot went to
        another prompt sharing most of it (a long system prompt) finds only the shared
        part with a host cache too (found by review). A host cache that evicted the
        prompt answers so too, so it takes :data:`HOST_DOUBTS` such answers, and none
        showing one, to stop assuming it."""
        if real > idle + _SLACK:  # more than any idle slot held: a host cache
            self._host_seen = True  # and so do the others (see the module docstring)
            self._host |= self._unreported
        elif (
            self._host_assumed
            and note.predicted_blocks > max(idle + _SLACK, 2 * idle)
            and note.in_flight <= idle
        ):
            self._doubts += 1
            if not self._host_assumed:  # none of them keeps one: slots alone, as shown
                self._host -= self._unreported
                for backend_id in self._unreported:
                    self._bound.pop(backend_id, None)

    def _unsent(self, running: _Running) -> None:
        """A dispatched request never reached its server: take the dispatch back. Its
        slot holds what it held before (unless another request has taken it since),
        and the index forgets the blocks the dispatch added (those a later dispatch
        renewed stay). Those it only renewed keep their new recency, and those it
        evicted stay evicted: without this, the next turn was predicted to find the
        unsent one's blocks, and its answer's shortfall read as an eviction, which
        forgets older conversations.

        Other dispatches to the same server still running share the blocks (a burst
        of requests with one new system prompt, whose clients left together):

        - one that shares blocks this one brought (a later one counted them as held;
          an earlier one had them before the index let them go and this one brought
          them back) now counts them as its own, so it withdraws them if it is never
          sent either, and this one leaves them;
        - one whose own blocks this one renewed (an earlier one, taken back latest
          first) takes back, with them, the blocks that bear this one's stamp: they
          stayed, and the index predicted blocks no sent request brought (issue #10).

        What a request that was sent shares with them stays: see :meth:`_vouch`."""
        slot, backend_id = running.slot, running.backend_id
        slot.busy = False
        if slot.running is running:
            slot.running = None
        slots = self._slots_of.get(backend_id, ())
        if slot.hashes is running.hashes and any(s is slot for s in slots):  # not retaken
            starts = self._starts
            _count_first(starts, backend_id, slot.hashes, -1)
            slot.hashes, slot.used, slot.known = running.before
            _count_first(starts, backend_id, slot.hashes, +1)
        if running.stamp is None:
            return
        added, stamps = running.added, {running.stamp, *running.also}
        kept = added  # this one's blocks before ``kept`` stay: another running has them
        for other in slots:  # a plain loop: slots are few, and this is rare
            pending = other.running
            if pending is None or pending.stamp is None:
                continue
            shared = shared_blocks(pending.hashes, running.hashes)
            if shared > added:  # it shares blocks this one brought: they are its own now
                kept = max(kept, shared)
                pending.added = min(pending.added, added)
            if shared > pending.added:  # some of its own bear this one's stamps
                pending.also = pending.also | stamps
        self.index.withdraw(backend_id, running.hashes[kept:], running.stamp, running.also)

    def _vouch(self, sent: _Running) -> None:
        """A request reached its server (it answered): the server holds its prompt,
        whatever becomes of the other requests still running there. Those that share
        blocks with it no longer take them back if they are never sent
        (:meth:`_unsent`): without this, one that renewed them, or took them over from
        a request taken back, dropped them from the index though the server held them.
        Cost: a loop over the server's slots, run only while others run there."""
        for other in self._slots_of.get(sent.backend_id, ()):  # a plain loop: slots are few
            pending = other.running
            if pending is not None and pending is not sent and pending.stamp is not None:
                shared = shared_blocks(pending.hashes, sent.hashes)
                if shared > pending.added:
                    pending.added = shared

    def _capacity_blocks(self, backend: Backend) -> int:
        """What the backend's caches hold, in blocks: as learned from its answers
        (:meth:`_finished`), else from its slots, context and host cache (see the
        module docstring)."""
        learned = self._bound.get(backend.id)
        if learned is not None and backend.id in self._host:
            return learned
        return self._tokens_to_blocks(self._slot_tokens(backend) + self._host_tokens(backend))

    def _slot_tokens(self, backend: Backend) -> int:
        """What the backend's slots hold, in tokens: its slots times their context."""
        settings = backend.props.get("default_generation_settings")
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        if not isinstance(n_ctx, int) or n_ctx <= 0:
            n_ctx = DEFAULT_CTX
        return max(1, backend.slots_total) * n_ctx

    def _host_tokens(self, backend: Backend, factor: int = 1) -> int:
        """What the backend's host prompt cache holds, in tokens: its reported size
        times ``factor``, or llama-server's default where seen and not reported (or
        reported unlimited)."""
        mib = backend.cache_ram_mib
        if mib is None and backend.id in self._host:  # seen, not reported: the default
            mib, factor = DEFAULT_CACHE_MIB, 1
        if mib is None or mib == 0:
            return 0
        mib = DEFAULT_CACHE_MIB if mib < 0 else mib * factor
        return mib * 1024 * 1024 // KV_BYTES_PER_TOKEN

    def _tokens_to_blocks(self, tokens: int) -> int:
        return int(tokens * self.ratio.value) // self.index.block

    def _slot_blocks(self, backend: Backend) -> int:
        return self._tokens_to_blocks(self._slot_tokens(backend))

    def _largest_blocks(self, backend: Backend) -> int:
        """The most a learned bound may grow to: the default host cache where the size
        is not reported, else :data:`REPORTED_SLACK` times the reported size (its
        tokens are counted at :data:`KV_BYTES_PER_TOKEN`, an 8B model's)."""
        host = self._host_tokens(backend, REPORTED_SLACK)
        return self._tokens_to_blocks(self._slot_tokens(backend) + host)

    def check(self) -> None:
        """Assert the policy's views agree (for tests): the index's, and each
        backend's first-block counts with what its slots hold."""
        self.index.check()
        counts: dict[int, dict[str, int]] = {}
        for backend_id, slots in self._slots_of.items():
            for s in slots:
                _count_first(counts, backend_id, s.hashes, +1)
        assert counts == self._starts, "first-block counts differ from what the slots hold"

    def __repr__(self) -> str:
        return f"<Policy prefix {self.index!r} max_wait={self.max_wait:g}s>"
