"""Prefix routing (``--routing prefix``): send a request where its prompt is cached.

Theory of operation
-------------------
For each request with a prompt (chat or completion), the policy weighs cache against
load:

1. **Filters** as for slot routing: model pool, free slot, pin, rules.
2. **Candidates**, a bounded set: the ``breadth`` backends with the most free slots
   (from the fleet's index: where a new prefix goes) and the backends the prefix index
   says hold the longest prefixes of this prompt (walked from the deepest block, at
   most ``breadth`` more). The cost is the prompt's length in blocks plus a constant,
   not the fleet's size.
3. **Scorers** estimate each one's time to first token from its predicted cached
   tokens, its measured prefill rate and its load (:mod:`.scorers`).
4. **Picker**: the lowest estimate, unless that would unbalance the fleet (:mod:`.picker`).
5. **A bounded wait**: when the backend holding the longest prefix has no free slot
   but is expected to serve the request sooner (its wait plus its short prefill) than
   the best free backend (a long prefill), the request waits in the buffer for it, at
   most ``max_wait`` seconds (then it goes to the best free backend). The wait shows in
   the log line (``route=wait-prefix``) and the ``X-Corral-Buffer-Wait`` header. The
   free backend it leaves goes to a request behind it that suits it
   (``Wait.free``).
6. **From the buffer** (under load every request waits there): :meth:`affinity` tells
   the scheduler how much of a request's prompt a backend holds, and it gives a freed
   slot to the waiting request it suits best, within bounds
   (:meth:`~corral.core.scheduler.Scheduler.assign`, ``--prefix-max-pass``).

Without a prompt (embeddings, multipart, pinned requests) or before any server has
reported a prefill rate (a fleet without ``timings``), it routes as slot routing.
Either way, every dispatch is recorded in the index, so it learns from the start.

**Learning** from the fleet's events (:mod:`corral.core.events`): a dispatch adds the
prompt's blocks to the backend's entries, bounded by what the server holds: its slots
times its context plus its host prompt cache (``--cache-ram``, llama-server's default
when its agent does not report it, see :data:`DEFAULT_CACHE_MIB`); a finished request
teaches the prefill rate and the bytes-per-token ratio, and when the server reused
fewer tokens than predicted its stale entries are dropped
(:meth:`.PrefixIndex.forget_older`); a server that left, restarted or changed model
loses its entries.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

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
from corral.core.routing.request import Prompt, RequestInfo
from corral.core.routing.scorers import PrefillRates, TokenRatio, estimated_ttft
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
a host cache whose size is not reported (an attached server: its agent cannot see the
flag) and for ``--cache-ram -1`` (no limit). Taking an unknown cache to be the default
errs towards predicting too much, which answers correct (:meth:`PrefixIndex.forget_older`
drops what a server no longer held); predicting too little is never corrected: the
index forgets conversations the server still holds and sends their next turns anywhere."""


class PrefixPolicy:
    """Prefix-cache-aware routing. See the module docstring.

    Args:
        block: prefix index block size, bytes of canonical text.
        imbalance: the picker's balance guard, in busy slots.
        max_wait: seconds a request may wait for the busy holder of its prefix (0: never).
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
        max_wait: float = 1.0,
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

    # ------------------------------------------------------------------ picking
    def pick(self, fleet: Fleet, request: RequestInfo) -> Decision:
        prompt = request.prompt
        if (
            prompt is None
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
        seen: set[str] = set()
        for backend in itertools.islice(with_free_slot(fleet, pools), self.breadth):
            if self._accepts(backend, request):
                seen.add(backend.id)
                scored.append(self._score(backend, self.index.match(backend.id, hashes), tokens))
        busy_holder: Scored | None = None
        added = 0
        for backend_id, blocks in self.index.holders(hashes):
            if added >= self.breadth:
                break
            if backend_id in seen or backend_id not in fleet:
                continue
            backend = fleet.get(backend_id)
            if not backend.routable or not in_pools(backend, pools):
                continue
            if not self._accepts(backend, request):
                continue
            seen.add(backend_id)
            added += 1
            free = backend.free
            if free > 0:
                scored.append(self._score(backend, blocks, tokens, free))
            elif busy_holder is None:
                busy_holder = self._score(backend, blocks, tokens, free)
        note = request.note
        if not scored:
            note.wait_until = None
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
        note.reason = reason
        note.predicted_cached = winner.cached_tokens
        return Dispatch(winner.backend.id)

    def _accepts(self, backend: Backend, request: RequestInfo) -> bool:
        return (
            answers(backend, request)
            and has_adapter(backend, request)
            and (not self.rules or all(rule.accepts(backend, request) for rule in self.rules))
        )

    def _score(self, backend: Backend, blocks: int, tokens: int, free: int | None = None) -> Scored:
        if free is None:
            free = backend.free
        cached = min(tokens, self.ratio.tokens(blocks * self.index.block))
        rate = self.rates.rate(backend.id) or 1.0  # known: some backend was measured
        ttft = estimated_ttft(backend, tokens - cached, rate, self.rates, free)
        return Scored(backend, ttft, blocks, cached, backend.slots_total - free)

    def _wait_for(self, holder: Scored, winner: Scored, request: RequestInfo) -> bool:
        """Whether to wait for ``holder`` (busy) rather than send to ``winner`` now."""
        if self.clock is None or self.max_wait <= 0 or holder.cached_blocks <= winner.cached_blocks:
            return False
        now = self.clock()
        note = request.note
        if note.wait_until is None:
            expected = self.rates.duration(holder.backend.id) / max(1, holder.backend.slots_total)
            if holder.ttft >= winner.ttft or expected > self.max_wait:
                return False
            note.wait_until = now + self.max_wait
        return now < note.wait_until and holder.ttft < winner.ttft

    def affinity(self, backend_id: str, request: RequestInfo) -> int:
        """How well ``backend_id`` suits ``request``, in prompt tokens (0 without a
        prompt, with an adapter or a pin): the tokens it probably holds, and once more
        those the prompt shares with the one that last ended there (the slot that just
        freed holds it; llama-server gives a request the idle slot whose prompt shares
        the most, and under load that is the only idle one). The scheduler weighs
        requests waiting in the buffer for a freed slot by it. Cost: about
        2 log2(prompt blocks) lookups."""
        prompt = request.prompt
        if prompt is None or request.adapter is not None or request.backend_id is not None:
            return 0
        hashes = prompt.hashes(self.index.block)
        blocks = self.index.match(backend_id, hashes)
        if not blocks:
            return 0
        freed = self._freed.get(backend_id, ())
        low, high = 0, min(len(hashes), len(freed))  # blocks shared with the last to end
        while low < high:  # chained hashes: equal at i means equal up to i
            mid = (low + high) // 2
            if hashes[mid] == freed[mid]:
                low = mid + 1
            else:
                high = mid
        return self.ratio.tokens((blocks + low) * self.index.block)

    def _predict(self, backend_id: str, prompt: Prompt, request: RequestInfo) -> None:
        blocks = self.index.match(backend_id, prompt.hashes(self.index.block))
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
            self.index.drop(event.backend_id)
            if event.reason != "restarted":
                self.rates.forget(event.backend_id)
            if event.reason == "left":
                self.index.forget(event.backend_id)

    def _dispatched(self, event: Dispatched) -> None:
        request = event.request
        if not isinstance(request, RequestInfo) or request.prompt is None:
            return
        backend = event.backend
        hashes = request.prompt.hashes(self.index.block)
        note = request.note
        note.prior = self.index.stamps(backend.id, hashes)
        note.predicted_blocks = len(note.prior)
        note.sent_at = event.now
        self.index.set_capacity(backend.id, self._capacity_blocks(backend))
        self.index.add(backend.id, hashes)
        self._freed.pop(backend.id, None)  # the freed slot is (probably) taken

    def _finished(self, event: Finished) -> None:
        request, timings, backend_id = event.request, event.timings, event.backend.id
        if not isinstance(request, RequestInfo):
            return
        note = request.note
        if note.sent_at is not None and event.now is not None:
            self.rates.ran(backend_id, event.now - note.sent_at)
        if request.prompt is not None and request.adapter is None:
            self._freed[backend_id] = request.prompt.hashes(self.index.block)
        if timings is None:
            return
        self.rates.learn(backend_id, timings)
        prompt = request.prompt
        if prompt is None or timings.prompt_tokens <= 0:
            return
        self.ratio.learn(len(prompt), timings.prompt_tokens)
        real = timings.cache_n * len(prompt) // (timings.prompt_tokens * self.index.block)
        if real + 1 < note.predicted_blocks:  # one block of slack for the chat template
            self.index.forget_older(backend_id, note.prior[real])

    def _capacity_blocks(self, backend: Backend) -> int:
        """What the backend's caches hold, in blocks (see the module docstring)."""
        settings = backend.props.get("default_generation_settings")
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        if not isinstance(n_ctx, int) or n_ctx <= 0:
            n_ctx = DEFAULT_CTX
        tokens = max(1, backend.slots_total) * n_ctx
        mib = backend.cache_ram_mib
        if mib is None or mib < 0:  # not reported, or no limit: see DEFAULT_CACHE_MIB
            mib = DEFAULT_CACHE_MIB
        tokens += mib * 1024 * 1024 // KV_BYTES_PER_TOKEN
        return int(tokens * self.ratio.value) // self.index.block

    def __repr__(self) -> str:
        return f"<Policy prefix {self.index!r} max_wait={self.max_wait:g}s>"
