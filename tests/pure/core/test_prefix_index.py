"""The prefix index: chained blocks, LRU bound, corrections, cost."""

from collections import OrderedDict

from hypothesis import example, given, settings
from hypothesis import strategies as st

from corral.core.routing import PrefixIndex, Prompt

BLOCK = 8


def chat(*turns: str) -> Prompt:
    roles = ["system"] + ["user", "assistant"] * len(turns)
    messages = [(r.encode(), f'"{t}"'.encode()) for r, t in zip(roles, turns, strict=False)]
    return Prompt.of_chat(messages, None)


def test_a_later_turn_shares_the_earlier_turns_blocks():
    first = chat("you are terse", "hello there, how are you today?")
    later = chat("you are terse", "hello there, how are you today?", "fine", "and you?")
    a, b = first.hashes(BLOCK), later.hashes(BLOCK)
    assert len(a) >= 4 and b[: len(a) - 1] == a[: len(a) - 1]
    other = chat("you are verbose", "hello there, how are you today?").hashes(BLOCK)
    assert other[len(a) - 2] != a[len(a) - 2]  # chained: one byte differs, all after differ


def test_hashes_are_computed_once_per_block_size():
    prompt = Prompt(b"x" * 100)
    assert prompt.hashes(10) is prompt.hashes(10)
    assert len(prompt.hashes(10)) == 10 and len(prompt.hashes(30)) == 3


def test_match_and_holders_longest_first():
    index = PrefixIndex(BLOCK)
    for b in ("a", "b"):
        index.set_capacity(b, 100)
    long = Prompt(b"0123456789" * 10).hashes(BLOCK)
    index.add("a", long[:3])
    index.add("b", long)
    assert index.match("a", long) == 3
    assert index.match("b", long) == len(long)
    assert list(index.holders(long)) == [("b", len(long)), ("a", 3)]
    assert index.match("c", long) == 0
    index.check()


def test_eviction_takes_tails_of_old_prompts_first():
    index = PrefixIndex(BLOCK)
    index.set_capacity("a", 6)
    old = Prompt(b"A" * 4 * BLOCK).hashes(BLOCK)
    new = Prompt(b"B" * 4 * BLOCK).hashes(BLOCK)
    index.add("a", old)
    index.add("a", new)
    assert index.size("a") == 6
    assert index.match("a", new) == 4
    assert index.match("a", old) == 2  # what is left of a prompt is a prefix of it
    index.check()


def test_forget_older_drops_what_was_not_renewed():
    index = PrefixIndex(BLOCK)
    index.set_capacity("a", 100)
    one, two = Prompt(b"1" * 3 * BLOCK).hashes(BLOCK), Prompt(b"2" * 3 * BLOCK).hashes(BLOCK)
    index.add("a", one)
    stamp = index.stamps("a", one)[0]
    index.add("a", two)
    assert index.forget_older("a", stamp) == 3
    assert index.match("a", one) == 0 and index.match("a", two) == 3
    index.check()


def test_withdraw_takes_back_the_blocks_an_unsent_prompt_added():
    index = PrefixIndex(BLOCK)
    index.set_capacity("a", 100)
    history = Prompt(b"h" * 3 * BLOCK).hashes(BLOCK)
    later = Prompt(b"h" * 3 * BLOCK + b"n" * 2 * BLOCK).hashes(BLOCK)
    index.add("a", history)
    stamp = index.add("a", later)  # the later turn, never sent
    assert stamp is not None and index.match("a", later) == 5
    assert index.withdraw("a", later[3:], stamp) == 2  # what it added; the history stays
    assert index.match("a", later) == 3 and index.match("a", history) == 3
    index.check()
    again = index.add("a", later)  # sent after all, by a later dispatch
    assert again is not None and index.withdraw("a", later[3:], stamp) == 0  # renewed since
    assert index.match("a", later) == 5
    assert index.add("a", []) is None
    index.check()


def test_withdraw_keeps_a_block_that_something_held_hangs_below():
    """An unsent request taken back with more than it added (``PrefixPolicy._unsent``
    hands it an earlier unsent request's blocks): the blocks a sent request between
    them went beyond stay, so what the backend holds stays closed under prefixes.
    Dropping them left a held block below a missing one: ``stamps`` then raised, and
    the tree named the backend as a holder after it had left (issue #10's review)."""
    index = PrefixIndex(BLOCK)
    index.set_capacity("a", 100)
    a, b = _chain(["a", "b"])
    c, y, z = (_chain(["a", "b", last])[2] for last in "cyz")
    index.add("a", [a])  # sent
    unsent = index.add("a", [a, b, z])  # added b, z: never sent
    index.add("a", [a, b, c])  # sent
    later = index.add("a", [a, b, y])  # added y, and is handed b: never sent
    assert unsent is not None and later is not None
    assert index.withdraw("a", [b, z], unsent) == 1  # z; b was renewed since
    assert index.withdraw("a", [b, y], later) == 1  # y; the sent request went past b
    index.check()
    assert index.stamps("a", [a, b, c]) == [later, later, later - 1]
    assert list(index.holders([a, b, c])) == [("a", 3)]
    index.forget("a")
    assert not list(index.holders([a, b, c])) and len(index) == 0
    index.check()


def test_drop_and_forget():
    index = PrefixIndex(BLOCK)
    index.set_capacity("a", 10)
    hashes = Prompt(b"z" * 5 * BLOCK).hashes(BLOCK)
    index.add("a", hashes)
    assert index.drop("a") == 5
    assert index.match("a", hashes) == 0 and not list(index.holders(hashes))
    index.add("a", hashes)  # the bound stays after a restart
    assert index.size("a") == 5
    index.forget("a")
    index.add("a", hashes)  # no bound: nothing kept
    assert len(index) == 0
    index.check()


texts = st.binary(min_size=0, max_size=12 * BLOCK)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from("abc"), texts, st.integers(0, 12)), min_size=1, max_size=40
    )
)
def test_bound_holds_and_maps_agree(steps):
    """Eviction respects each backend's bound, whatever the order of adds and shrinks."""
    index = PrefixIndex(BLOCK)
    for backend, text, capacity in steps:
        index.set_capacity(backend, capacity)
        index.add(backend, Prompt(text).hashes(BLOCK))
        assert index.size(backend) <= capacity
        index.check()


@settings(max_examples=200, deadline=None)
@given(sent=st.lists(texts, min_size=1, max_size=10), asked=texts)
def test_never_predicts_more_than_was_sent(sent, asked):
    """A match is never longer than the asked prompt, nor than the longest common
    prefix with something that was sent to that backend."""
    index = PrefixIndex(BLOCK)
    index.set_capacity("a", 1000)
    for text in sent:
        index.add("a", Prompt(text).hashes(BLOCK))
    hashes = Prompt(asked).hashes(BLOCK)
    matched = index.match("a", hashes)
    assert matched <= len(hashes)
    common = max(_common(asked, text) for text in sent)
    assert matched * BLOCK <= common


def _common(a: bytes, b: bytes) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from(["add", "older", "drop"]), texts),
        min_size=1,
        max_size=40,
    ),
    asked=texts,
)
def test_holders_agree_with_match_as_blocks_are_shared_and_dropped(steps, asked):
    """Whatever backends share, lose and regain (one holder or several per block),
    ``holders`` yields each backend holding part of a prompt once, with what ``match``
    says it holds, deepest first; ``first_holders`` names them all in one lookup."""
    index = PrefixIndex(BLOCK)
    for backend in "abc":
        index.set_capacity(backend, 8)
    for backend, step, text in steps:
        hashes = Prompt(text).hashes(BLOCK)
        if step == "add":
            index.add(backend, hashes)
        elif step == "older" and index.stamps(backend, hashes):
            index.forget_older(backend, index.stamps(backend, hashes)[0])
        elif step == "drop":
            index.drop(backend)
        index.check()
    hashes = Prompt(asked).hashes(BLOCK)
    found = list(index.holders(hashes, budget=100))
    expected = {(b, index.match(b, hashes)) for b in "abc" if index.match(b, hashes)}
    assert set(found) == expected and len(found) == len(expected)
    assert [depth for _, depth in found] == sorted((d for _, d in found), reverse=True)
    assert set(index.first_holders(hashes)) == {b for b, _ in expected}


class _ReferenceLRU:
    """The index's eviction order, written plainly: one ordered map per backend of
    block -> stamp, each add renewing its prompt's blocks deepest first; and each
    block's holders in the order they came to hold it."""

    def __init__(self) -> None:
        self.lru: dict[str, OrderedDict[int, int]] = {}
        self.capacity: dict[str, int] = {}
        self.stamp = 0
        self.order: dict[int, list[str]] = {}
        self.parent: dict[int, int | None] = {}  # block -> the block before it

    def set_capacity(self, backend: str, blocks: int) -> None:
        self.capacity[backend] = max(0, blocks)
        self._evict(backend)

    def add(self, backend: str, hashes: list[int]) -> None:
        capacity = self.capacity.get(backend, 0)
        if capacity <= 0 or not hashes:
            return
        lru = self.lru.setdefault(backend, OrderedDict())
        self.stamp += 1
        self.parent.update(zip(hashes, [None, *hashes[:-1]], strict=True))
        for h in reversed(hashes[:capacity]):
            if h not in lru:
                self.order.setdefault(h, []).append(backend)
            lru[h] = self.stamp
            lru.move_to_end(h)
        self._evict(backend)

    def withdraw(self, backend: str, hashes: list[int], stamp: int, also: tuple[int, ...]) -> int:
        """Drop, from the deepest block of ``hashes`` it holds up, those with the stamp
        (or one of ``also``), until one that something else it holds hangs below."""
        lru = self.lru.get(backend, OrderedDict())
        held = []
        for h in hashes:
            if h not in lru:
                break
            held.append(h)
        gone: list[int] = []
        for h in reversed(held):
            below = [k for k in lru if self.parent[k] == h and k not in gone]
            if (lru[h] != stamp and lru[h] not in also) or below:
                break
            gone.append(h)
        for h in gone:
            self._lose(backend, lru, h)
        return len(gone)

    def forget_older(self, backend: str, stamp: int) -> int:
        lru = self.lru.get(backend, OrderedDict())
        old = [h for h, s in lru.items() if s <= stamp]
        for h in old:
            self._lose(backend, lru, h)
        return len(old)

    def drop(self, backend: str) -> int:
        lru = self.lru.get(backend, OrderedDict())
        held = list(lru)
        for h in held:
            self._lose(backend, lru, h)
        self.lru.pop(backend, None)
        return len(held)

    def _evict(self, backend: str) -> None:
        lru = self.lru.get(backend, OrderedDict())
        while len(lru) > self.capacity.get(backend, 0):
            self._lose(backend, lru, next(iter(lru)))

    def _lose(self, backend: str, lru: OrderedDict[int, int], h: int) -> None:
        del lru[h]
        self.order[h].remove(backend)
        if not self.order[h]:
            del self.order[h]


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from("abc"),
            st.sampled_from(
                ["add", "add", "add", "older", "drop", "bound", "withdraw", "withdraw-more"]
            ),
            st.lists(st.integers(0, 2), max_size=10),  # a prompt as a path of choices
            st.integers(0, 12),
        ),
        min_size=1,
        max_size=60,
    )
)
# a block joined by "a" then "b", the block after it by "b" then "a": one set of
# holders, in two orders, so in two nodes
@example(steps=[("a", "add", [0], 0), ("b", "add", [0, 0], 0), ("a", "add", [0, 0], 0)])
# taken back with the blocks it renewed, one of which a request before it went beyond
@example(
    steps=[("a", "add", [0, 1, 2], 0), ("a", "add", [0, 1, 0], 0), ("a", "withdraw-more", [], 0)]
)
def test_evicts_and_forgets_as_a_plain_lru_would(steps):
    """Whatever the adds (prompts sharing prefixes and renewed again and again, so that
    stale entries pile up), bounds and corrections, the index holds exactly what one
    least-recently-used map of block -> stamp per backend holds, with the same stamps;
    and ``holders`` finds who holds a prompt as a walk of every block would, over each
    block's holders in the order they came to hold it (the map of every block the
    index kept before its tree)."""
    index, reference = PrefixIndex(BLOCK), _ReferenceLRU()
    adds: dict[str, list[tuple[list[int], int, int]]] = {}  # backend -> its adds, held, stamp
    taken: dict[str, list[int]] = {}  # backend -> the stamps of its adds taken back
    for backend in "abc":
        index.set_capacity(backend, 8)
        reference.set_capacity(backend, 8)
    for backend, step, path, number in steps:
        hashes = [hash(tuple(path[: i + 1])) for i in range(len(path))]  # chained
        if step == "add":
            held = len(index.stamps(backend, hashes))
            stamp = index.add(backend, hashes)
            reference.add(backend, hashes)
            if stamp is not None:
                adds.setdefault(backend, []).append((hashes, held, stamp))
        elif step in ("withdraw", "withdraw-more") and backend in adds:
            # the latest add not taken back was never sent: its new tail, or (as
            # PrefixPolicy._unsent takes back a request that counted an unsent earlier
            # one's blocks as its own, with the stamps of later ones taken back that
            # renewed them) more of its prompt, which requests since may have renewed
            added, held, stamp = adds[backend].pop()
            tail, also = added[held:], ()
            if step == "withdraw-more":  # with the later adds taken back before it
                tail, also = added[min(held, number) :], tuple(taken.get(backend, ()))
            gone = reference.withdraw(backend, tail, stamp, also)
            assert index.withdraw(backend, tail, stamp, also) == gone
            taken.setdefault(backend, []).append(stamp)
            if not adds[backend]:
                del adds[backend]
        elif step == "older":
            stamp = reference.stamp - number
            assert index.forget_older(backend, stamp) == reference.forget_older(backend, stamp)
        elif step == "drop":
            assert index.drop(backend) == reference.drop(backend)
        else:
            index.set_capacity(backend, number)
            reference.set_capacity(backend, number)
        index.check()
        for b in "abc":
            held = reference.lru.get(b, {})
            assert index.size(b) == len(held)
            assert all(index.stamps(b, [h]) == [s] for h, s in held.items())
        for depth in range(1, len(hashes) + 1):  # the prompt, and each prefix of it
            for budget in (1, 2, 64):
                walk = _holders_walking_every_block(reference.order, hashes[:depth], budget)
                assert list(index.holders(hashes[:depth], budget)) == list(walk)


def test_a_prompt_renewed_many_times_keeps_its_batches_bounded():
    """Renewing the same blocks leaves stale entries in older batches; they are
    rewritten away, so memory follows what is held, not how often it was sent."""
    index = PrefixIndex(BLOCK)
    index.set_capacity("a", 1000)
    hashes = Prompt(b"x" * 20 * BLOCK).hashes(BLOCK)
    for _ in range(1000):
        index.add("a", hashes)
    index.check()
    assert index.size("a") == 20
    assert index._held["a"].pending <= 2 * 20 + 64 + 20


def test_a_shared_head_at_capacity_keeps_the_batches_bounded():
    """At capacity every add evicts; a head every prompt shares (a system prompt)
    leaves a stale copy in each older batch until eviction reaches it. They are
    rewritten away then too (they were only after an add that evicted nothing, so at
    capacity they grew with the capacity squared: 39 per live entry at 320 blocks)."""
    index = PrefixIndex(BLOCK)
    index.set_capacity("a", 320)
    head = [hash(("system", i)) for i in range(128)]
    for k in range(3000):
        index.add("a", head + [hash(("turn", k, j)) for j in range(2)])
    index.check()
    assert index.size("a") == 320
    assert index._held["a"].pending <= 2 * 320 + 64 + 130


def _holders_by_block(index: PrefixIndex) -> dict[int, list[str]]:
    """Each block held anywhere -> its holders in the order they joined, from the tree."""
    out: dict[int, list[str]] = {}
    stack = [index._root]
    while stack:
        node = stack.pop()
        out.update((h, list(node.holders)) for h in node.blocks)
        stack.extend(node.children.values())
    return out


def _holders_walking_every_block(by_block: dict[int, list[str]], hashes: list[int], budget: int):
    """``holders`` as a walk of every held block, deepest first (the reference): the
    index's walk before its tree, over a map of every block to its holders."""
    seen: set[str] = set()
    depths = [d for d in range(len(hashes), 0, -1) if hashes[d - 1] in by_block]
    for depth in depths:
        held = by_block[hashes[depth - 1]]
        if len(held) == 1:
            held = held[0]
            if held not in seen:
                if budget <= 0:
                    return
                budget -= 1
                seen.add(held)
                yield held, depth
            continue
        if all(b in seen for b in held):
            continue
        for backend_id in held:
            if budget <= 0:
                return
            budget -= 1
            if backend_id not in seen:
                seen.add(backend_id)
                yield backend_id, depth


@settings(max_examples=300, deadline=None)
@given(
    sent=st.lists(
        st.tuples(st.sampled_from("abcde"), st.lists(st.integers(0, 2), max_size=8)),
        max_size=30,
    ),
    asked=st.lists(st.integers(0, 2), max_size=8),
    budget=st.integers(0, 6),
)
def test_holders_stops_walking_once_every_holder_is_found(sent, asked, budget):
    """Stopping once every holder of the first block is found yields what walking every
    block would, in the same order, within the same budget."""
    index = PrefixIndex(BLOCK)
    for backend in "abcde":
        index.set_capacity(backend, 6)
    for backend, path in sent:
        index.add(backend, [hash(tuple(path[: i + 1])) for i in range(len(path))])
    hashes = [hash(tuple(asked[: i + 1])) for i in range(len(asked))]
    expected = list(_holders_walking_every_block(_holders_by_block(index), hashes, budget))
    assert list(index.holders(hashes, budget)) == expected


def _chain(parts: list[object]) -> list[int]:
    """Chained block hashes of a prompt given as its blocks' contents."""
    h, out = 0, []
    for part in parts:
        h = hash((h, part))
        out.append(h)
    return out


def test_a_deeper_holder_is_found_first_behind_a_prefix_every_server_holds():
    """70 servers hold a 4-block system prompt; one of them also holds 6 blocks of a
    conversation on top of it. Its next turn finds that server first, with the budget
    to spare: the holders of a widely shared block come after it, whatever order they
    joined in. (A map of holders that keyed only the blocks at depths 1, 2, 4... found
    every server at block 4 and spent the budget on the first 64 to join: issue #10's
    review.)"""
    index = PrefixIndex(BLOCK)
    system = [("system", i) for i in range(4)]
    for i in range(70):
        index.set_capacity(f"s{i}", 100)
        index.add(f"s{i}", _chain([*system, ("other", i)]))
    conversation = [*system, *(("turn", i) for i in range(10))]
    index.set_capacity("y", 100)
    index.add("y", _chain(conversation[:6]))
    found = list(index.holders(_chain(conversation)))
    assert found[0] == ("y", 6)
    assert len(found) == 64 and all(depth == 4 for _, depth in found[1:])
    index.check()


def test_holders_come_deepest_first_whoever_joined_a_block_first():
    index = PrefixIndex(BLOCK)
    prompt = _chain([("p", i) for i in range(3)])
    for backend in "xy":
        index.set_capacity(backend, 100)
    index.add("x", prompt[:2])
    index.add("y", prompt)
    assert list(index.holders(prompt)) == [("y", 3), ("x", 2)]
