"""The prefix index: which prompt prefixes each server probably holds in its cache.

Theory of operation
-------------------
llama-server keeps each slot's last prompt in its KV cache (and, with
``--cache-ram``, evicted prompts in host memory) and reuses the longest common
prefix for a new request. It does not say what it holds (``/slots`` shows no prompt),
so the balancer predicts it: a server holds what the balancer last sent it.

A prompt is cut into fixed-size blocks of its canonical text, each hash chained to
the previous one (:class:`~corral.core.routing.request.Prompt`), so a block's hash
stands for the whole prefix up to it, and the blocks held anywhere form a tree. The
index has two parts:

- ``backend -> its blocks``: each block's recency stamp (a plain dict), and the
  batches that put them there in recency order, least recently used first: one batch
  per :meth:`~PrefixIndex.add`, the prompt's blocks with that add's stamp. A prompt's
  blocks are renewed deepest first, so its first block is the most recent: eviction
  takes the tails of old prompts before their heads, as a radix tree evicts leaves,
  and what a backend holds is always closed under prefixes (whoever holds a block
  holds every block before it). A block renewed by a later add stays in its old
  batch as a stale entry (its stamp there is not its stamp now), skipped when
  eviction reaches it; the batches are rewritten without their stale entries when
  those outnumber the live ones. Adding and evicting a block are a few operations on
  this backend's own small dict.
- **the tree of holders**, for finding who holds a prompt: a radix tree whose nodes
  are runs of blocks that the same backends hold (as SGLang's cache-aware router
  keeps one tree whose nodes record the workers holding them:
  ``shared/notes/prefix-cache-anchors.md``), each with its holders in the
  order they joined. A child's holders are some of its parent's. A prompt's holders
  are found by walking its path from the root, one small dict lookup and one hash
  comparison per node (chained hashes are equal at a depth only if every block
  before it is), and an add or an eviction walks the same path. A conversation that
  grows on one server extends its own leaf; nodes are split where an add or an
  eviction stops inside one, and merged again when a node's only child has the same
  holders in the same order.

  The cost per request is the number of nodes on the prompt's path (a few: a shared
  system prompt, the conversation, its newest turn) plus a bounded number of holders
  examined, never the fleet's size nor, beyond hashing, the prompt's blocks. A map
  keyed by every block (before issue #10's cost work) cost two operations on a map of
  every block held anywhere per block added or evicted, which on 1,000 servers was
  the larger part of a dispatch; a map keyed only at depths 1, 2, 4... missed deeper
  holders behind a prefix held by more servers than the lookup's budget.

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

Memory: one dict entry per (backend, block), its stamp, and its place in a batch; the
tree adds a node per run of blocks with the same holders (benchmarks/prefix_cost.py
measures it all with every backend's cache full).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Container, Iterator, Mapping, Sequence
from types import MappingProxyType


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


_NOBODY: Mapping[str, None] = MappingProxyType({})
"""No backend (:meth:`PrefixIndex.first_holders` of a prompt nobody holds)."""


class _Batch:
    """The blocks one :meth:`PrefixIndex.add` renewed, with its stamp. Eviction takes
    them deepest first: ``hashes[:left]`` are those it has not reached yet (each still
    held with ``stamp``, or stale: renewed by a later add, or dropped)."""

    __slots__ = ("hashes", "left", "stamp")

    def __init__(self, hashes: tuple[int, ...], stamp: int) -> None:
        self.hashes = hashes
        self.left = len(hashes)
        self.stamp = stamp


class _Node:
    """A run of blocks in the tree of holders: ``blocks`` (chained hashes, one or
    more), the backends holding every one of them (in the order they joined, a dict
    used as an ordered set: never empty but at the root), the children, keyed by
    their first block, and the parent."""

    __slots__ = ("blocks", "children", "holders", "parent")

    def __init__(self, blocks: list[int], holders: dict[str, None], parent: _Node | None) -> None:
        self.blocks = blocks
        self.holders = holders
        self.children: dict[int, _Node] = {}
        self.parent = parent  # None: the root, or a node merged away

    def __repr__(self) -> str:
        return f"<_Node {len(self.blocks)} blocks held by {list(self.holders)}>"


def _matched(blocks: list[int], hashes: Sequence[int], at: int) -> int:
    """How many leading ``blocks`` of a node (its first known equal) equal
    ``hashes[at:]``: chained hashes are equal at ``k`` only if equal before it, so one
    comparison when the node matches whole, else a binary search."""
    end = min(len(blocks), len(hashes) - at)
    if blocks[end - 1] == hashes[at + end - 1]:
        return end
    low, high = 1, end  # blocks [0, low) equal; [high, ...) not
    while low < high:
        mid = (low + high) // 2
        if blocks[mid] == hashes[at + mid]:
            low = mid + 1
        else:
            high = mid
    return low


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
        self._root = _Node([], {}, None)
        self._ends: dict[int, _Node] = {}  # a node's last block -> the node
        self._nodes_n = 0  # nodes in the tree, the root aside
        self._distinct = 0  # blocks in the tree
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
        entries in all (a node's holders count only where one of them is not seen
        yet), plus one step per node on the prompt's path in the tree.

        Whoever holds any of the prompt holds its first block, so once the holders
        of the path's first node are all found, the walk stops (one holder, the usual
        case: after the deepest node it looks at)."""
        path = self._path(hashes)
        if not path:  # nobody holds any of it
            return
        everyone = len(path[0][0].holders)
        seen: set[str] = set()
        for node, depth in reversed(path):
            if len(seen) == everyone:  # the shallower nodes' holders are all seen
                return
            held = node.holders
            if len(held) == 1:
                for backend_id in held:
                    if backend_id not in seen:
                        if budget <= 0:
                            return
                        budget -= 1
                        seen.add(backend_id)
                        yield backend_id, depth
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

    def first_holders(self, hashes: Sequence[int]) -> Mapping[str, None]:
        """The backends holding a prompt's first block, as a read-only map used as a
        set: every backend holding any of the prompt holds its first block (one
        lookup; none for an empty prompt)."""
        node = self._root.children.get(hashes[0]) if hashes else None
        return _NOBODY if node is None else node.holders

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
            f"{self._distinct} distinct blocks of {self.block} bytes "
            f"in {self._nodes_n} nodes]>"
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
        before = len(blocks)
        blocks.update(dict.fromkeys(hashes, stamp))
        if len(blocks) != before:  # new blocks: they join the tree
            self._join(backend_id, hashes)
        if len(blocks) > capacity:
            self._evict(backend_id)
        # after an eviction too: at capacity every add evicts, and a head that every
        # prompt shares leaves a stale copy in each batch until eviction reaches it
        if held.pending > 2 * len(blocks) + 64:  # stale entries outnumber live ones
            self._compact(held)
        return stamp

    def withdraw(
        self, backend_id: str, hashes: Sequence[int], stamp: int, also: Collection[int] = ()
    ) -> int:
        """The prompt an :meth:`add` with ``stamp`` announced was never sent: drop those
        of ``hashes`` (the blocks that add put there: the prompt's tail past what the
        backend held before) that it still holds with that stamp (none a later add
        renewed), from the deepest it holds up; return how many. What is left of each
        prompt is still a prefix of it: a tail goes, deepest blocks with it. ``also``:
        stamps of other adds, also never sent, that renewed or brought some of those
        blocks: a block with one of them goes too.

        A block something else it holds hangs below stays, stamp or not: a later
        request sent it (an unsent request that counted an earlier unsent one's blocks
        as its own, ``PrefixPolicy._unsent``, may name blocks a request between them
        renewed and went beyond), and dropping it would leave what the backend holds
        no longer closed under prefixes."""
        held = self._held.get(backend_id)
        if held is None:
            return 0
        blocks = held.blocks
        n = _held_prefix(blocks, hashes)  # the blocks of ``hashes`` it holds: a run from the first
        stamps = {stamp, *also}
        length = 0  # of those, the deepest with one of the stamps
        while length < n and blocks[hashes[n - 1 - length]] in stamps:
            length += 1
        length = self._bare(backend_id, hashes[n - 1], length) if length else 0
        if not length:
            return 0
        for h in hashes[n - length : n]:
            del blocks[h]
        self._leave(backend_id, hashes[n - 1], length)
        return length

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
        ends = self._ends
        # every node it is in ends with a block it holds (it holds all of the node)
        nodes = [ends[h] for h in held.blocks if h in ends and backend_id in ends[h].holders]
        gone: list[_Node] = []
        for node in nodes:
            del node.holders[backend_id]
            if not node.holders:
                gone.append(node)
        for node in gone:  # a node's children are held by some of its holders: none
            self._remove(node)
        for node in nodes:
            if node.holders:
                self._tidy(node)
                if node.parent is not None:
                    self._tidy(node.parent)
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
        get = blocks.get
        excess = len(blocks) - self._capacity.get(backend_id, 0)
        while excess > 0:  # each pass drops a batch or shortens it: every live block is in one
            batch = batches[0]
            hashes, stamp, left = batch.hashes, batch.stamp, batch.left
            low = max(0, left - excess)  # at most ``excess`` live entries there
            stamps = list(map(get, hashes[low:left]))
            stale = len(stamps) - stamps.count(stamp)
            if stale and low:  # each stale entry: one live entry more, further up
                while stale and low:
                    low -= 1
                    if get(hashes[low]) == stamp:
                        stale -= 1
                stamps = list(map(get, hashes[low:left]))
            held.pending -= left - low
            if low:
                batch.left = low
            else:
                batches.popleft()
            excess -= self._unmark(backend_id, blocks, hashes[low:left], stamp, stamps)

    def _unmark(
        self,
        backend_id: str,
        blocks: dict[int, int],
        hashes: Sequence[int],
        stamp: int,
        stamps: list[int | None] | None = None,
    ) -> int:
        """Drop those of ``hashes`` (a run of one prompt's blocks, in order) the backend
        holds with ``stamp`` (its ``blocks``; ``stamps``: their stamps there, when the
        caller has read them), skipping stale entries, and take it out of the tree
        there; return how many. This runs for every add that evicts.

        Those dropped are a run of the prompt, the deepest the backend held on its
        path: a prefix of a batch was renewed by a later prompt, a tail withdrawn or
        evicted, and a block held below one of them would have renewed it."""
        if stamps is None:
            stamps = list(map(blocks.get, hashes))
        live = stamps.count(stamp)
        if not live:  # all stale: renewed since, or gone (eviction passing old batches)
            return 0
        if live == len(stamps):  # all held with it (the usual case)
            for h in hashes:
                del blocks[h]
            runs = [(hashes[-1], live)]  # (deepest block, blocks) of each run dropped
        else:
            runs, last, length = [], 0, 0
            for h, was in zip(hashes, stamps, strict=True):
                if was != stamp:  # stale
                    if length:
                        runs.append((last, length))
                        length = 0
                    continue
                del blocks[h]
                last, length = h, length + 1
            if length:
                runs.append((last, length))
        dropped = 0
        for deepest, length in reversed(runs):
            self._leave(backend_id, deepest, length)
            dropped += length
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

    # --------------------------------------------------------------- the tree
    def _path(self, hashes: Sequence[int]) -> list[tuple[_Node, int]]:
        """The nodes on a prompt's path from the root, each with the depth (blocks of
        the prompt) matched through it; the last may be matched in part."""
        path: list[tuple[_Node, int]] = []
        node, at = self._root, 0
        while at < len(hashes):
            child = node.children.get(hashes[at])
            if child is None:
                break
            end = _matched(child.blocks, hashes, at)
            at += end
            path.append((child, at))
            if end < len(child.blocks):
                break
            node = child
        return path

    def _join(self, backend_id: str, hashes: Sequence[int]) -> None:
        """The backend now holds every block of a prompt: it joins the nodes on the
        prompt's path it was not in (a node the prompt ends or leaves inside is split
        there first), and the rest of the prompt hangs below (extending the backend's
        own leaf when it alone holds the last node and nothing hangs below it)."""
        root, ends = self._root, self._ends
        node, at, n = root, 0, len(hashes)
        joined: list[_Node] = []
        while at < n:
            child = node.children.get(hashes[at])
            if child is None:
                if (
                    node is not root
                    and not node.children
                    and len(node.holders) == 1
                    and backend_id in node.holders
                ):
                    del ends[node.blocks[-1]]
                    node.blocks.extend(hashes[at:])
                    leaf = node
                else:
                    leaf = _Node(list(hashes[at:]), {backend_id: None}, node)
                    node.children[hashes[at]] = leaf
                    self._nodes_n += 1
                ends[hashes[-1]] = leaf
                self._distinct += n - at
                break
            end = _matched(child.blocks, hashes, at)
            if end < len(child.blocks):
                if at + end == n and backend_id in child.holders:
                    break  # it holds all of the prompt there already
                child = self._split(child, end)
            if backend_id not in child.holders:
                if not joined:
                    joined.append(node)
                child.holders[backend_id] = None
                joined.append(child)
            node, at = child, at + end
        for changed in joined:  # top down: a node merged away is skipped
            self._tidy(changed)

    def _split(self, node: _Node, at: int) -> _Node:
        """Cut a node after its first ``at`` blocks: they become a new node in its
        place, with the same holders, and the node (the rest, keeping its children)
        its only child. Returns the new node."""
        parent = node.parent
        assert parent is not None, "the root is never split"
        head = _Node(node.blocks[:at], dict(node.holders), parent)
        del node.blocks[:at]
        head.children[node.blocks[0]] = node
        parent.children[head.blocks[0]] = head
        node.parent = head
        self._ends[head.blocks[-1]] = head
        self._nodes_n += 1
        return head

    def _tidy(self, node: _Node) -> None:
        """While ``node`` has one child, held by the same backends in the same order,
        the child takes in the node's blocks and its place (a run of blocks the same
        backends hold, in one node again). The root and nodes merged away are left."""
        while node.parent is not None and len(node.children) == 1:
            (child,) = node.children.values()
            holders = child.holders
            if len(holders) != len(node.holders) or list(holders) != list(node.holders):
                return
            parent = node.parent
            del self._ends[node.blocks[-1]]
            child.blocks[:0] = node.blocks
            parent.children[node.blocks[0]] = child
            child.parent, node.parent = parent, None
            self._nodes_n -= 1
            node = child

    def _leave(self, backend_id: str, deepest: int, length: int) -> None:
        """The backend no longer holds a run of ``length`` blocks ending at ``deepest``,
        nor anything below it (the deepest block it held there is the last of its
        node: it holds all of a node or none of it). It leaves the nodes of the run,
        from the deepest up (the topmost is split where the run starts in it); a node
        no one holds any more goes."""
        node = self._ends.get(deepest)
        if node is None or backend_id not in node.holders:
            return  # not in the tree (cannot happen while the two parts agree)
        while length > 0 and node.parent is not None:
            size = len(node.blocks)
            if size > length:  # the run starts inside this node: its head stays held
                self._split(node, size - length)
                size = length
            parent = node.parent
            del node.holders[backend_id]
            if not node.holders:
                self._remove(node)
            else:
                self._tidy(node)
            length -= size
            node = parent
        self._tidy(node)

    def _bare(self, backend_id: str, deepest: int, length: int) -> int:
        """How many of the ``length`` blocks ending at ``deepest`` (held by the backend)
        it could drop, from the deepest up, and still hold a set closed under prefixes:
        up to the first with something else it holds below it."""
        node = self._ends.get(deepest)
        if node is None or backend_id not in node.holders:
            return 0  # it holds the block after ``deepest``, in the same node
        bare, below = 0, None
        while bare < length and node.parent is not None:
            for child in node.children.values():
                if child is not below and backend_id in child.holders:
                    return min(bare, length)
            bare += len(node.blocks)
            below, node = node, node.parent
        return min(bare, length)

    def _remove(self, node: _Node) -> None:
        """Take a node no one holds out of the tree (its children are held by some of
        its holders: none)."""
        parent = node.parent
        if parent is not None:
            del parent.children[node.blocks[0]]
            node.parent = None
        if self._ends.get(node.blocks[-1]) is node:
            del self._ends[node.blocks[-1]]
            self._nodes_n -= 1
            self._distinct -= len(node.blocks)

    def _nodes(self) -> Iterator[_Node]:
        """Every node of the tree but the root."""
        stack = list(self._root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def check(self) -> None:
        """Assert the tree and the backends' entries agree and every bound holds (for
        tests)."""
        pairs = {(b, h) for b, held in self._held.items() for h in held.blocks}
        in_tree: set[tuple[str, int]] = set()
        distinct: set[int] = set()
        stack = [self._root]
        while stack:
            node = stack.pop()
            for first, child in node.children.items():
                assert child.blocks and child.blocks[0] == first, "child keyed by another block"
                assert child.holders, "a node no one holds left in the tree"
                assert child.holders.keys() <= node.holders.keys() or node is self._root, (
                    "a child held by a backend that does not hold its parent"
                )
                assert child.parent is node, "a child that names another parent"
                assert self._ends.get(child.blocks[-1]) is child, "a node not found by its end"
                stack.append(child)
            for h in node.blocks:
                assert h not in distinct, "a block in two nodes"
                distinct.add(h)
                in_tree.update((b, h) for b in node.holders)
        assert pairs == in_tree, "the tree and the backends' entries differ"
        nodes = list(self._nodes())
        assert len(self._ends) == len(nodes) == self._nodes_n, "an end naming no node"
        assert self._distinct == len(distinct), "distinct blocks miscounted"
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
