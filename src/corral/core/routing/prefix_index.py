"""The prefix index: which prompt prefixes each server probably holds in its cache.

Theory of operation
-------------------
llama-server keeps each slot's last prompt in its KV cache (and, with
``--cache-ram``, evicted prompts in host memory) and reuses the longest common
prefix for a new request. It does not say what it holds (``/slots`` shows no prompt),
so the balancer predicts it: a server holds what the balancer last sent it.

A prompt is cut into fixed-size blocks of its canonical text, each hash chained to
the previous one (:class:`~corral.core.routing.request.Prompt`), so a block's hash
stands for the whole prefix up to it. The index is two maps:

- ``block hash -> backends holding it``: the one backend's id when one holds it (the
  usual case: a block most often lives on one server), else an insertion-ordered dict
  of ids used as a set (two or more). The holders of a prompt are found by walking
  its blocks from the deepest, so a lookup costs the prompt's length in blocks plus a
  bounded number of holders examined, never the fleet's size;
- ``backend -> its blocks``: each block's recency stamp (a plain dict), and the
  batches that put them there in recency order, least recently used first: one batch
  per :meth:`~PrefixIndex.add`, the prompt's blocks with that add's stamp. A prompt's
  blocks are renewed deepest first, so its first block is the most recent: eviction
  takes the tails of old prompts before their heads, as a radix tree evicts leaves,
  and what is left of a prompt is always a prefix of it. A block renewed by a later
  add stays in its old batch as a stale entry (its stamp there is not its stamp now),
  skipped when eviction reaches it; the batches are rewritten without their stale
  entries when those outnumber the live ones. Adding and evicting a block are a few
  plain dict operations, with no linked-list node per entry to move or allocate (an
  ``OrderedDict`` kept one).

Each backend holds at most ``capacity`` blocks: its slots times its context (the
tokens its KV cache holds) plus its host prompt cache when its agent reports one,
converted to blocks. Adding past the bound evicts the least recently used.

**Corrections.** Every answer says how many prompt tokens the server really reused
(``timings.cache_n``). When that is less than predicted, the first block the server
did not have was evicted there, and so was everything it held less recently: the
backend's entries not renewed since that block's old stamp are dropped
(:meth:`PrefixIndex.forget_older`). The policy calls it only for a shortfall that is an
eviction: not when the copy was in a busy slot, nor when part of one prompt was reused
(``corral.core.routing.prefix._evicted``). A server that restarts, changes model or leaves
loses all its entries (:meth:`PrefixIndex.drop`).

Memory: two dict entries per (backend, block), the block's hash and its place in a
batch (benchmarks/prefix_cost.py measures it with every backend's cache full); a
block held by several backends adds a small dict of their ids.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterator, Sequence


def _held_prefix(held: Container[int], hashes: Sequence[int]) -> int:
    """How many leading blocks of ``hashes`` are keys of ``held``, when those that are
    form a prefix of them (a backend's blocks, or the blocks any backend holds): a
    binary search, about log2(len(hashes)) lookups."""
    if not hashes or hashes[0] not in held:  # the usual answer, in one lookup
        return 0
    low, high = 1, len(hashes)  # blocks [0, low) held; [high, ...) not
    while low < high:
        mid = (low + high) // 2
        if hashes[mid] in held:
            low = mid + 1
        else:
            high = mid
    return low


class _Batch:
    """The blocks one :meth:`PrefixIndex.add` renewed, with its stamp. Eviction takes
    them deepest first: ``hashes[:left]`` are those it has not reached yet (each still
    held with ``stamp``, or stale: renewed by a later add, or dropped)."""

    __slots__ = ("hashes", "left", "stamp")

    def __init__(self, hashes: tuple[int, ...], stamp: int) -> None:
        self.hashes = hashes
        self.left = len(hashes)
        self.stamp = stamp


class _Held:
    """One backend's entries: block hash -> recency stamp, and the batches in recency
    order (oldest first); ``pending`` counts the batches' entries not yet passed by
    eviction, live or stale."""

    __slots__ = ("batches", "blocks", "pending")

    def __init__(self) -> None:
        self.blocks: dict[int, int] = {}
        self.batches: deque[_Batch] = deque()
        self.pending = 0


class PrefixIndex:
    """Predicted cache contents per backend. Pure: no I/O, no clock.

    Args:
        block: block size in bytes of canonical text (1,024 bytes is about 256 tokens: a
            32 KiB prompt is 32 blocks; see benchmarks/prefix_cost.py for the cost).
    """

    def __init__(self, block: int = 1024) -> None:
        if block < 1:
            raise ValueError("block must be at least 1 byte")
        self.block = block
        self._holders: dict[int, str | dict[str, None]] = {}  # one id, or 2+ as a set
        self._held: dict[str, _Held] = {}
        self._capacity: dict[str, int] = {}
        self._stamp = 0

    # ------------------------------------------------------------------ queries
    def match(self, backend_id: str, hashes: list[int]) -> int:
        """How many leading blocks of a prompt ``backend_id`` holds (0 to len(hashes)).

        What a backend holds of any prompt is a prefix of it (see the module
        docstring: eviction takes tails first), so this is a binary search: about
        ``log2(len(hashes))`` lookups, not one per block."""
        held = self._held.get(backend_id)
        return 0 if held is None else _held_prefix(held.blocks, hashes)

    def holders(self, hashes: list[int], budget: int = 64) -> Iterator[tuple[str, int]]:
        """``(backend_id, blocks held)`` for backends holding a prefix of this prompt,
        longest match first, each backend once. Looks at most ``budget`` holder
        entries in all, plus at most one dict lookup per block up to the deepest one
        held.

        Whoever holds a block holds every block before it, so the blocks held anywhere
        are a prefix of the prompt: its length is found by binary search; and whoever
        holds any of it holds its first block: once those are all found, the walk
        stops (one holder, the usual case: after the first block it looks at)."""
        holders = self._holders
        root = holders.get(hashes[0]) if hashes else None
        if root is None:  # nobody holds any of it
            return
        everyone = 1 if isinstance(root, str) else len(root)
        low = _held_prefix(holders, hashes)  # blocks held somewhere
        seen: set[str] = set()
        get = holders.get
        for depth in range(low, 0, -1):
            if len(seen) == everyone:  # the shallower blocks' holders are all seen
                return
            held = get(hashes[depth - 1])
            if held is None:
                continue
            if isinstance(held, str):  # one holder
                if held not in seen:
                    if budget <= 0:
                        return
                    budget -= 1
                    seen.add(held)
                    yield held, depth
                continue
            if len(held) <= len(seen) and all(b in seen for b in held):
                continue
            for backend_id in held:
                if budget <= 0:
                    return
                budget -= 1
                if backend_id not in seen:
                    seen.add(backend_id)
                    yield backend_id, depth

    def stamps(self, backend_id: str, hashes: list[int]) -> list[int]:
        """The recency stamps of the first blocks ``backend_id`` holds, in order."""
        held = self._held.get(backend_id)
        out: list[int] = []
        if held is not None:
            get = held.blocks.get
            for h in hashes:
                stamp = get(h)
                if stamp is None:
                    break
                out.append(stamp)
        return out

    def size(self, backend_id: str) -> int:
        """Blocks held by a backend."""
        held = self._held.get(backend_id)
        return len(held.blocks) if held is not None else 0

    def capacity(self, backend_id: str) -> int:
        return self._capacity.get(backend_id, 0)

    def __len__(self) -> int:
        """Entries held, all backends together."""
        return sum(len(held.blocks) for held in self._held.values())

    def __repr__(self) -> str:
        return (
            f"<PrefixIndex [{len(self._held)} backends | {len(self)} entries | "
            f"{len(self._holders)} distinct blocks of {self.block} bytes]>"
        )

    # -------------------------------------------------------------- transitions
    def set_capacity(self, backend_id: str, blocks: int) -> None:
        """Bound what one backend may hold, in blocks; evicts down to it at once."""
        blocks = max(0, blocks)
        if self._capacity.get(backend_id) != blocks:  # else it holds no more already
            self._capacity[backend_id] = blocks
            self._evict(backend_id)

    def add(self, backend_id: str, hashes: Sequence[int]) -> int | None:
        """The backend is being sent this prompt: it will hold all its blocks. Returns
        the stamp they were given (for :meth:`withdraw`; None: nothing was added).

        Blocks are renewed deepest first, so the prompt's head is the most recent."""
        capacity = self._capacity.get(backend_id, 0)
        if capacity <= 0 or not hashes:
            return None
        held = self._held.get(backend_id)
        if held is None:
            held = self._held[backend_id] = _Held()
        blocks = held.blocks
        if len(hashes) > capacity:  # a prompt bigger than the cache: its head
            hashes = hashes[:capacity]
        self._stamp += 1
        stamp = self._stamp
        held.batches.append(_Batch(tuple(hashes), stamp))
        held.pending += len(hashes)
        holders = self._holders
        mark, hold = blocks.setdefault, holders.setdefault  # one lookup for a new block
        for h in hashes:
            was = mark(h, stamp)
            if was != stamp:  # held already: renewed
                blocks[h] = stamp
                continue
            owner = hold(h, backend_id)
            if owner is not backend_id:  # held elsewhere too
                if isinstance(owner, str):
                    holders[h] = {owner: None, backend_id: None}
                else:
                    owner[backend_id] = None
        if len(blocks) > capacity:
            self._evict(backend_id)
        # after an eviction too: at capacity every add evicts, and a head that every
        # prompt shares leaves a stale copy in each batch until eviction reaches it
        if held.pending > 2 * len(blocks) + 64:  # stale entries outnumber live ones
            self._compact(held)
        return stamp

    def withdraw(self, backend_id: str, hashes: Sequence[int], stamp: int) -> int:
        """The prompt an :meth:`add` with ``stamp`` announced was never sent: drop those
        of ``hashes`` (the blocks that add put there: the prompt's tail past what the
        backend held before) that it still holds with that stamp (none a later add
        renewed); return how many. What is left of each prompt is still a prefix of it:
        a tail goes, deepest blocks with it."""
        held = self._held.get(backend_id)
        if held is None:
            return 0
        return self._unmark(backend_id, held.blocks, hashes, stamp)

    def forget_older(self, backend_id: str, stamp: int) -> int:
        """Drop the backend's entries not renewed since ``stamp``; return how many."""
        held = self._held.get(backend_id)
        if held is None:
            return 0
        blocks, batches = held.blocks, held.batches
        dropped = 0
        while batches and batches[0].stamp <= stamp:
            batch = batches.popleft()
            held.pending -= batch.left
            dropped += self._unmark(backend_id, blocks, batch.hashes[: batch.left], batch.stamp)
        return dropped

    def drop(self, backend_id: str) -> int:
        """Forget everything the backend held (it restarted, changed model, left)."""
        held = self._held.pop(backend_id, None)
        if held is None:
            return 0
        for h in held.blocks:
            self._unhold(backend_id, h)
        return len(held.blocks)

    def forget(self, backend_id: str) -> None:
        """The backend left: its entries and its bound."""
        self.drop(backend_id)
        self._capacity.pop(backend_id, None)

    def _evict(self, backend_id: str) -> None:
        """Drop the least recently used entries past the backend's bound: from the
        oldest batch, deepest block first, skipping stale entries."""
        held = self._held.get(backend_id)
        if held is None:
            return
        blocks, batches = held.blocks, held.batches
        excess = len(blocks) - self._capacity.get(backend_id, 0)
        while excess > 0:
            batch = batches[0]
            left = batch.left
            low = max(0, left - excess)  # at most ``excess`` live entries there
            held.pending -= left - low
            if low:
                batch.left = low
            else:
                batches.popleft()
            excess -= self._unmark(backend_id, blocks, batch.hashes[low:left], batch.stamp)

    def _unmark(
        self, backend_id: str, blocks: dict[int, int], hashes: Sequence[int], stamp: int
    ) -> int:
        """Drop those of ``hashes`` the backend holds with ``stamp`` (its ``blocks``),
        from both maps, skipping stale entries; return how many. One operation on each
        map per block: this runs for every add that evicts."""
        holders = self._holders
        unmark, unhold = blocks.pop, holders.pop
        dropped = 0
        for h in hashes:
            was = unmark(h, None)
            if was != stamp:  # stale: renewed since (put back), or gone
                if was is not None:
                    blocks[h] = was
                continue
            dropped += 1
            owner = unhold(h)
            if not isinstance(owner, str):
                del owner[backend_id]
                holders[h] = next(iter(owner)) if len(owner) == 1 else owner
        return dropped

    def _compact(self, held: _Held) -> None:
        """Rewrite the batches without their stale entries (order kept)."""
        blocks = held.blocks
        batches: deque[_Batch] = deque()
        for batch in held.batches:
            stamp = batch.stamp
            live = tuple(h for h in batch.hashes[: batch.left] if blocks.get(h) == stamp)
            if live:
                batches.append(_Batch(live, stamp))
        held.batches = batches
        held.pending = len(blocks)

    def _unhold(self, backend_id: str, h: int) -> None:
        holders = self._holders
        owner = holders[h]
        if isinstance(owner, str):
            del holders[h]
        else:
            del owner[backend_id]
            if len(owner) == 1:  # back to one holder: its id alone
                holders[h] = next(iter(owner))

    def check(self) -> None:
        """Assert the two maps agree and every bound holds (for tests)."""
        pairs = {(b, h) for b, held in self._held.items() for h in held.blocks}
        sets = {
            h: {owner: None} if isinstance(owner, str) else owner
            for h, owner in self._holders.items()
        }
        assert pairs == {(b, h) for h, owners in sets.items() for b in owners}
        for owner in self._holders.values():
            assert isinstance(owner, str) or len(owner) >= 2, "a holder set of one left a set"
        for b, held in self._held.items():
            assert len(held.blocks) <= self._capacity.get(b, 0), (b, len(held.blocks))
            assert held.pending == sum(batch.left for batch in held.batches), "pending count"
            live = [
                (h, batch.stamp)
                for batch in held.batches
                for h in reversed(batch.hashes[: batch.left])
                if held.blocks.get(h) == batch.stamp
            ]
            assert dict(live) == held.blocks, "a block held but in no batch, or twice"
            stamps = [stamp for _, stamp in live]
            assert stamps == sorted(stamps), "recency order broken"
        assert all(self._holders.values()), "empty holder left behind"
