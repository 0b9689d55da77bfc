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
- ``backend -> its blocks in recency order`` (an ``OrderedDict`` of block hash to a
  recency stamp): least recently used first. A prompt's blocks are renewed deepest
  first, so its first block is the most recent: eviction takes the tails of old
  prompts before their heads, as a radix tree evicts leaves, and what is left of a
  prompt is always a prefix of it.

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

Memory: two dict entries per (backend, block) and the block's hash, about 200 bytes
with every backend's cache full (benchmarks/prefix_cost.py measures it); a block held
by several backends adds a small dict of their ids.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator


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
        self._lru: dict[str, OrderedDict[int, int]] = {}
        self._capacity: dict[str, int] = {}
        self._stamp = 0

    # ------------------------------------------------------------------ queries
    def match(self, backend_id: str, hashes: list[int]) -> int:
        """How many leading blocks of a prompt ``backend_id`` holds (0 to len(hashes)).

        What a backend holds of any prompt is a prefix of it (see the module
        docstring: eviction takes tails first), so this is a binary search: about
        ``log2(len(hashes))`` lookups, not one per block."""
        lru = self._lru.get(backend_id)
        if not lru or not hashes or hashes[0] not in lru:  # the usual answer, in one lookup
            return 0
        low, high = 1, len(hashes)  # blocks [0, low) held; [high, ...) not
        while low < high:
            mid = (low + high) // 2
            if hashes[mid] in lru:
                low = mid + 1
            else:
                high = mid
        return low

    def holders(self, hashes: list[int], budget: int = 64) -> Iterator[tuple[str, int]]:
        """``(backend_id, blocks held)`` for backends holding a prefix of this prompt,
        longest match first, each backend once. Looks at most ``budget`` holder
        entries in all, plus one dict lookup per block up to the deepest one held.

        Whoever holds a block holds every block before it, so the blocks held anywhere
        are a prefix of the prompt: its length is found by binary search."""
        holders = self._holders
        if not hashes or hashes[0] not in holders:  # nobody holds any of it
            return
        low, high = 1, len(hashes)  # blocks [0, low) held somewhere; [high, ...) nowhere
        while low < high:
            mid = (low + high) // 2
            if hashes[mid] in holders:
                low = mid + 1
            else:
                high = mid
        seen: set[str] = set()
        get = holders.get
        for depth in range(low, 0, -1):
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
        lru = self._lru.get(backend_id)
        out: list[int] = []
        if lru:
            for h in hashes:
                stamp = lru.get(h)
                if stamp is None:
                    break
                out.append(stamp)
        return out

    def size(self, backend_id: str) -> int:
        """Blocks held by a backend."""
        lru = self._lru.get(backend_id)
        return len(lru) if lru else 0

    def capacity(self, backend_id: str) -> int:
        return self._capacity.get(backend_id, 0)

    def __len__(self) -> int:
        """Entries held, all backends together."""
        return sum(len(lru) for lru in self._lru.values())

    def __repr__(self) -> str:
        return (
            f"<PrefixIndex [{len(self._lru)} backends | {len(self)} entries | "
            f"{len(self._holders)} distinct blocks of {self.block} bytes]>"
        )

    # -------------------------------------------------------------- transitions
    def set_capacity(self, backend_id: str, blocks: int) -> None:
        """Bound what one backend may hold, in blocks; evicts down to it at once."""
        blocks = max(0, blocks)
        if self._capacity.get(backend_id) != blocks:  # else it holds no more already
            self._capacity[backend_id] = blocks
            self._evict(backend_id)

    def add(self, backend_id: str, hashes: list[int]) -> None:
        """The backend is being sent this prompt: it will hold all its blocks.

        Blocks are renewed deepest first, so the prompt's head is the most recent."""
        capacity = self._capacity.get(backend_id, 0)
        if capacity <= 0 or not hashes:
            return
        lru = self._lru.get(backend_id)
        if lru is None:
            lru = self._lru[backend_id] = OrderedDict()
        holders = self._holders
        self._stamp += 1
        stamp = self._stamp
        if len(hashes) > capacity:  # a prompt bigger than the cache: its head
            hashes = hashes[:capacity]
        for h in reversed(hashes):
            if h in lru:
                lru.move_to_end(h)
            else:
                held = holders.get(h)
                if held is None:
                    holders[h] = backend_id
                elif isinstance(held, str):
                    holders[h] = {held: None, backend_id: None}
                else:
                    held[backend_id] = None
            lru[h] = stamp
        if len(lru) > capacity:
            self._evict(backend_id)

    def forget_older(self, backend_id: str, stamp: int) -> int:
        """Drop the backend's entries not renewed since ``stamp``; return how many."""
        lru = self._lru.get(backend_id)
        dropped = 0
        while lru and next(iter(lru.values())) <= stamp:
            self._unhold(backend_id, lru.popitem(last=False)[0])
            dropped += 1
        return dropped

    def drop(self, backend_id: str) -> int:
        """Forget everything the backend held (it restarted, changed model, left)."""
        lru = self._lru.pop(backend_id, None)
        if not lru:
            return 0
        for h in lru:
            self._unhold(backend_id, h)
        return len(lru)

    def forget(self, backend_id: str) -> None:
        """The backend left: its entries and its bound."""
        self.drop(backend_id)
        self._capacity.pop(backend_id, None)

    def _evict(self, backend_id: str) -> None:
        lru = self._lru.get(backend_id)
        if lru is None:
            return
        excess = len(lru) - self._capacity.get(backend_id, 0)
        holders, popitem = self._holders, lru.popitem
        for _ in range(excess):  # self._unhold, inlined: this loop runs for every add
            h = popitem(last=False)[0]
            held = holders[h]
            if isinstance(held, str):
                del holders[h]
            else:
                del held[backend_id]
                if len(held) == 1:
                    holders[h] = next(iter(held))

    def _unhold(self, backend_id: str, h: int) -> None:
        holders = self._holders
        held = holders[h]
        if isinstance(held, str):
            del holders[h]
        else:
            del held[backend_id]
            if len(held) == 1:  # back to one holder: its id alone
                holders[h] = next(iter(held))

    def check(self) -> None:
        """Assert the two maps agree and every bound holds (for tests)."""
        pairs = {(b, h) for b, lru in self._lru.items() for h in lru}
        sets = {
            h: {held: None} if isinstance(held, str) else held for h, held in self._holders.items()
        }
        assert pairs == {(b, h) for h, held in sets.items() for b in held}
        for held in self._holders.values():
            assert isinstance(held, str) or len(held) >= 2, "a holder set of one left a set"
        for b, lru in self._lru.items():
            assert len(lru) <= self._capacity.get(b, 0), (b, len(lru))
            stamps = list(lru.values())
            assert stamps == sorted(stamps), "recency order broken"
        assert all(self._holders.values()), "empty holder left behind"
