"""The simulated llama-server's model: its slots, its speed and what it writes. Pure.

Theory of operation
-------------------
Rule 1: everything the simulator decides lives here; :mod:`corral.sim.server` only
awaits and writes what these objects say.

A llama-server has a fixed number of slots (``--parallel``). A request holds one slot
from the moment it is admitted until its last token, and requests that find no free
slot wait in one FIFO queue inside the server. :class:`SlotTable` is that
bookkeeping. Every method is a state transition; an illegal one raises
:class:`SlotError` and changes nothing.

A slot first reads the part of its prompt it does not hold in its cache
(``(n_prompt - cached) / prompt_tokens_per_second`` seconds), then decodes one token
per step. A step alone takes ``1 / tokens_per_second``; with
``busy`` slots decoding at once the accelerator is shared and each step takes
``(1 + slowdown * (busy - 1)) / tokens_per_second`` (:class:`SpeedModel`). The
server's total throughput still grows with concurrency, but less than linearly, as
on real hardware.

Prompt cache, as llama-server keeps it. Each slot remembers the tokens of the last
prompt it read; a new prompt reuses the longest common prefix with it and reads only
the rest (at least one token is always read: ``cached <= n_prompt - 1``). Without an
``id_slot``, llama-server gives a request the idle slot whose cached prompt shares the
longest prefix with it when that prefix is more than ``slot_prompt_similarity`` of the
prompt (``--slot-prompt-similarity``, 0.1), else the idle slot used least recently.
With a host cache (``--cache-ram``) a slot that switches to another prompt saves its
old one to host memory (bounded in tokens, least recently used out), and a prompt that
shares a longer prefix with a saved one than with the slot's own is restored from
there. :class:`SlotTable` keeps all of it; a job without tokens takes the lowest free
slot and caches nothing.

What a request produces is decided before it runs (:func:`plan_generation`): the
text is ``tok0 tok1 tok2 ...``, one word per token, cut by the token budget, the
context size, a simulated end of sequence or a stop word.
"""

from __future__ import annotations

import collections
import math
import random
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

N_VOCAB = 262_144
"""Size of the fake vocabulary (gemma-3's), so token ids look plausible."""

EMBEDDING_DIM = 64
"""Length of the fake embedding vectors."""

CHAT_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}"
)
"""The ChatML template :func:`render_chat` applies (llama.cpp's fallback template)."""

StopType = Literal["limit", "eos", "word"]


# --------------------------------------------------------------------------- speed


@dataclass(frozen=True, slots=True)
class SpeedModel:
    """How fast the simulated accelerator reads prompts and decodes tokens."""

    tokens_per_second: float = 50.0
    """Decode speed of one slot when it is the only one busy."""
    slowdown: float = 0.1
    """How much each further busy slot slows every slot's steps (0: no contention)."""
    prompt_tokens_per_second: float = 2000.0
    """Prompt reading speed of one slot."""

    def __post_init__(self) -> None:
        if not self.tokens_per_second > 0 or math.isinf(self.tokens_per_second):
            raise ValueError(f"tokens_per_second must be > 0, got {self.tokens_per_second}")
        if not self.prompt_tokens_per_second > 0:
            raise ValueError(
                f"prompt_tokens_per_second must be > 0, got {self.prompt_tokens_per_second}"
            )
        if not self.slowdown >= 0:
            raise ValueError(f"slowdown must be >= 0, got {self.slowdown}")

    def slot_speed(self, busy: int) -> float:
        """Tokens per second of one slot while ``busy`` slots decode together."""
        if busy < 1:
            raise ValueError(f"a decoding slot is busy itself: busy must be >= 1, got {busy}")
        return self.tokens_per_second / (1 + self.slowdown * (busy - 1))

    def step_delay(self, busy: int) -> float:
        """Seconds one decoding step takes while ``busy`` slots decode together."""
        return 1.0 / self.slot_speed(busy)

    def throughput(self, busy: int) -> float:
        """Tokens per second of the whole server with ``busy`` slots decoding."""
        return busy * self.slot_speed(busy)

    def prompt_delay(self, n_prompt: int) -> float:
        """Seconds a slot takes to read a prompt of ``n_prompt`` tokens."""
        return max(0, n_prompt) / self.prompt_tokens_per_second


# --------------------------------------------------------------------------- slots


class SlotError(Exception):
    """An illegal slot transition (releasing an idle slot, cancelling an unknown task...)."""


@dataclass(frozen=True, slots=True)
class Job:
    """What a request asks of a slot."""

    n_prompt: int
    """Prompt tokens the slot reads first."""
    n_predict: int = -1
    """Most tokens the request may decode; -1 for no limit (llama.cpp's convention)."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """The request's sampling parameters, shown by ``/slots``."""
    tokens: tuple[int, ...] = ()
    """The prompt's token ids, for the prompt cache (empty: no caching)."""
    cache_prompt: bool = True
    """llama-server's request field: False reuses nothing of the cache for this prompt,
    which the slot then holds as any other (checked on the pinned build: the same
    prompt again with ``cache_prompt: false`` reports ``cache_n`` 0, and once more
    without it reuses all but its last token)."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reusable(lcp: int, n_prompt: int) -> int:
    """Tokens a prompt of ``n_prompt`` may take from a cache sharing ``lcp`` with it:
    llama-server always reads the last prompt token again, to get its logits."""
    return max(0, min(lcp, n_prompt - 1))


class HostCache:
    """Prompts saved in host memory (llama-server's ``--cache-ram``), bounded in tokens,
    least recently used out. Pure."""

    def __init__(self, capacity_tokens: int) -> None:
        if capacity_tokens < 0:
            raise ValueError(f"capacity_tokens must be >= 0, got {capacity_tokens}")
        self.capacity_tokens = capacity_tokens
        self._prompts: collections.OrderedDict[tuple[int, ...], None] = collections.OrderedDict()
        self.tokens = 0
        """Tokens held now (never above :attr:`capacity_tokens`)."""

    def __len__(self) -> int:
        return len(self._prompts)

    def save(self, prompt: tuple[int, ...]) -> None:
        """Keep ``prompt``, dropping the least recently used ones to make room; a prompt
        longer than the whole capacity is not kept."""
        if not prompt or len(prompt) > self.capacity_tokens:
            return
        if prompt in self._prompts:
            self._prompts.move_to_end(prompt)
            return
        while self.tokens + len(prompt) > self.capacity_tokens:
            old, _ = self._prompts.popitem(last=False)
            self.tokens -= len(old)
        self._prompts[prompt] = None
        self.tokens += len(prompt)

    def best(self, prompt: Sequence[int]) -> tuple[tuple[int, ...], int]:
        """The saved prompt sharing the longest prefix with ``prompt``, and that length
        (``((), 0)`` when none shares any); a hit counts as a use."""
        found: tuple[int, ...] = ()
        longest = 0
        for saved in self._prompts:
            lcp = common_prefix(saved, prompt)
            if lcp > longest:
                found, longest = saved, lcp
        if found:
            self._prompts.move_to_end(found)
        return found, longest


@dataclass(frozen=True, slots=True)
class SlotView:
    """One slot as ``/slots`` shows it. An idle slot has ``task == -1``."""

    id: int
    task: int = -1
    n_prompt: int = 0
    n_predict: int = -1
    n_decoded: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    n_cached: int = 0
    """Prompt tokens this task took from the cache (llama-server's ``cache_n``)."""

    @property
    def is_processing(self) -> bool:
        return self.task >= 0

    @property
    def n_remain(self) -> int:
        """Tokens left in the budget; -1 when unlimited (as llama-server reports)."""
        return -1 if self.n_predict < 0 else self.n_predict - self.n_decoded


@dataclass(frozen=True, slots=True)
class Ticket:
    """A task's place: holding ``slot``, or waiting in the queue when ``slot`` is None."""

    task: int
    slot: int | None
    cached: int = 0
    """Prompt tokens reused from the cache (0 while waiting)."""


class SlotTable:
    """Which slots are busy with which task, and who waits for one, in FIFO order.

    Invariant: a task waits only while every slot is busy; when a slot is released
    the oldest waiting task takes it at once (:meth:`release` says which). Each slot
    keeps the tokens of the last prompt it read (see the module docstring).

    Args:
        n_slots: Slots (``--parallel``), >= 1.
        similarity: ``--slot-prompt-similarity``: the shared prefix, as a share of the
            prompt, above which the slot holding it is preferred (0: always LRU).
        host_cache_tokens: Size of the host prompt cache in tokens (0: none).

    Raises:
        ValueError: A setting out of range.
    """

    def __init__(
        self, n_slots: int, *, similarity: float = 0.1, host_cache_tokens: int = 0
    ) -> None:
        if n_slots < 1:
            raise ValueError(f"a server has at least one slot, got {n_slots}")
        if not 0.0 <= similarity <= 1.0:
            raise ValueError(f"similarity must be within 0..1, got {similarity}")
        self._slots = [SlotView(id=i) for i in range(n_slots)]
        self._queue: collections.deque[tuple[int, Job]] = collections.deque()
        self._next_task = 0
        self.similarity = similarity
        self._cache: list[tuple[int, ...]] = [() for _ in range(n_slots)]
        self._used = [0] * n_slots  # when each slot was last taken (a counter)
        self._clock = 0
        self.host = HostCache(host_cache_tokens)

    def cached_prompt(self, slot_id: int) -> tuple[int, ...]:
        """The prompt tokens ``slot_id`` holds in its cache."""
        self._check_id(slot_id)
        return self._cache[slot_id]

    # -- reading

    @property
    def n_slots(self) -> int:
        return len(self._slots)

    @property
    def busy(self) -> int:
        """Slots holding a task."""
        return sum(1 for s in self._slots if s.is_processing)

    @property
    def free(self) -> int:
        return self.n_slots - self.busy

    @property
    def queued(self) -> int:
        """Tasks waiting for a slot."""
        return len(self._queue)

    @property
    def queue(self) -> tuple[int, ...]:
        """Waiting task ids, oldest first."""
        return tuple(task for task, _ in self._queue)

    @property
    def slots(self) -> tuple[SlotView, ...]:
        return tuple(self._slots)

    def slot(self, slot_id: int) -> SlotView:
        self._check_id(slot_id)
        return self._slots[slot_id]

    # -- transitions

    def submit(self, job: Job) -> Ticket:
        """Give ``job`` a new task id and a free slot (see :meth:`choose`), or queue it."""
        task = self._next_task
        self._next_task += 1
        slot = self.choose(job)
        if slot is None:
            self._queue.append((task, job))
            return Ticket(task, None)
        return Ticket(task, slot, self._occupy(slot, task, job))

    def choose(self, job: Job) -> int | None:
        """The free slot ``job`` would get, or None when all are busy: the one whose
        cached prompt shares the longest prefix with it, if that is more than
        :attr:`similarity` of the prompt, else the least recently used. Without
        tokens, the lowest free slot."""
        free = [v.id for v in self._slots if not v.is_processing]
        if not free or not job.tokens:
            return free[0] if free else None
        best, longest = free[0], 0
        for i in free:
            lcp = common_prefix(self._cache[i], job.tokens)
            if lcp > longest:
                best, longest = i, lcp
        if longest > self.similarity * len(job.tokens):
            return best
        return min(free, key=lambda i: (self._used[i], i))

    def cancel(self, task: int) -> None:
        """Withdraw a waiting task (its client went away)."""
        for i, (waiting, _) in enumerate(self._queue):
            if waiting == task:
                del self._queue[i]
                return
        raise SlotError(f"task {task} is not waiting")

    def release(self, slot_id: int) -> Ticket | None:
        """Free a busy slot; the oldest waiting task takes it, and is returned."""
        view = self.slot(slot_id)
        if not view.is_processing:
            raise SlotError(f"slot {slot_id} is not busy")
        self._slots[slot_id] = SlotView(id=slot_id)
        if not self._queue:
            return None
        task, job = self._queue.popleft()
        return Ticket(task, slot_id, self._occupy(slot_id, task, job))

    def decode(self, slot_id: int, n: int = 1) -> None:
        """Count ``n`` more tokens decoded by a busy slot."""
        view = self.slot(slot_id)
        if not view.is_processing:
            raise SlotError(f"slot {slot_id} is not busy")
        if n < 0:
            raise SlotError(f"cannot decode {n} tokens")
        if view.n_predict >= 0 and view.n_decoded + n > view.n_predict:
            raise SlotError(
                f"slot {slot_id} would decode {view.n_decoded + n} tokens, "
                f"over its budget of {view.n_predict}"
            )
        self._slots[slot_id] = replace(view, n_decoded=view.n_decoded + n)

    # -- helpers

    def _occupy(self, slot_id: int, task: int, job: Job) -> int:
        """Put ``task`` on the slot; returns the prompt tokens it reuses from the cache."""
        cached = 0
        if job.tokens:
            own = self._cache[slot_id]
            lcp = common_prefix(own, job.tokens)
            if self.host.capacity_tokens:
                if lcp < len(own):  # the slot moves to another prompt: keep the old one
                    self.host.save(own)
                _, longest = self.host.best(job.tokens)
                lcp = max(lcp, longest)
            cached = reusable(lcp, job.n_prompt) if job.cache_prompt else 0
            self._cache[slot_id] = job.tokens
        self._clock += 1
        self._used[slot_id] = self._clock
        self._slots[slot_id] = SlotView(
            id=slot_id,
            task=task,
            n_prompt=job.n_prompt,
            n_predict=job.n_predict,
            params=job.params,
            n_cached=cached,
        )
        return cached

    def _check_id(self, slot_id: int) -> None:
        if not 0 <= slot_id < len(self._slots):
            raise SlotError(f"no slot {slot_id} (the server has {len(self._slots)})")

    def __repr__(self) -> str:
        return f"<SlotTable slots {self.busy}/{self.n_slots} busy, {self.queued} queued>"


# --------------------------------------------------------------------------- text


def token_piece(index: int) -> str:
    """The text of the ``index``-th generated token: ``tok0``, `` tok1``, `` tok2``..."""
    return f"tok{index}" if index == 0 else f" tok{index}"


_PIECES = re.compile(r"\s*\S+|\s+")


def split_pieces(text: str) -> list[str]:
    """Cut text into fake tokens: each word with the whitespace before it."""
    return _PIECES.findall(text)


def count_tokens(text: str) -> int:
    """How many fake tokens :func:`split_pieces` makes of ``text``."""
    return len(split_pieces(text))


def token_id(piece: str) -> int:
    """A stable id for a piece of text (a hash; distinct pieces may share an id)."""
    return zlib.crc32(piece.encode()) % N_VOCAB


class Vocab:
    """A fake tokenizer that remembers the pieces it saw, so it can detokenize them.

    Ids are hashes (:func:`token_id`), so tokenizing is stateless and the same on every
    server; detokenizing knows only ids this vocab has tokenized (up to ``capacity``
    distinct pieces) and writes nothing for the others.
    """

    def __init__(self, capacity: int = 65_536) -> None:
        self._pieces: dict[int, str] = {}
        self._capacity = capacity

    def tokenize(self, text: str) -> list[int]:
        return [self.learn(piece) for piece in split_pieces(text)]

    def learn(self, piece: str) -> int:
        """The id of ``piece``, remembered for :meth:`detokenize` while there is room."""
        ident = token_id(piece)
        if len(self._pieces) < self._capacity:
            self._pieces.setdefault(ident, piece)
        return ident

    def piece(self, ident: int) -> str:
        return self._pieces.get(ident, "")

    def detokenize(self, ids: Iterable[int]) -> str:
        return "".join(self.piece(i) for i in ids)

    def __repr__(self) -> str:
        return f"<Vocab {len(self._pieces)} pieces known>"


def render_chat(messages: Sequence[Mapping[str, Any]]) -> str:
    """Apply :data:`CHAT_TEMPLATE` to OpenAI-style messages, with the generation prompt.

    ``content`` may be a string, a list of ``{"type": "text", "text": ...}`` parts
    (other parts are skipped) or null.
    """
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, Mapping) and part.get("type") == "text"
            )
        elif content is None:
            content = ""
        out.append(f"<|im_start|>{message.get('role', 'user')}\n{content}<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


def embed(text: str, *, seed: int = 0, dim: int = EMBEDDING_DIM) -> list[float]:
    """A deterministic unit vector for ``text`` (the same text, seed and dim give the same)."""
    rng = random.Random(f"{seed}:{text}")
    vector = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


# --------------------------------------------------------------------------- plans


class ContextExceeded(ValueError):
    """The prompt leaves no room to generate in the slot's context."""

    def __init__(self, n_prompt: int, n_ctx: int) -> None:
        # llama-server's own words (exceed_context_size_error).
        super().__init__(
            f"request ({n_prompt} tokens) exceeds the available context size "
            f"({n_ctx} tokens), try increasing it"
        )
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx


@dataclass(frozen=True, slots=True)
class Plan:
    """What one request will produce, decided before it runs."""

    pieces: tuple[str, ...]
    """Text each decoded token adds to the answer, in order. A token that completes a
    stop word adds only the text before the stop word (maybe nothing)."""
    stop_type: StopType
    """Why it stops: ``limit`` (token budget or context), ``eos`` or ``word``."""
    stopping_word: str = ""

    @property
    def n_decoded(self) -> int:
        return len(self.pieces)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def finish_reason(self) -> Literal["length", "stop"]:
        """OpenAI's name for :attr:`stop_type`."""
        return "length" if self.stop_type == "limit" else "stop"


def plan_generation(
    *,
    n_predict: int,
    n_prompt: int,
    n_ctx: int,
    stop: Sequence[str] = (),
    eos_after: int | None = None,
) -> Plan:
    """Decide the text of one request.

    Args:
        n_predict: Token budget; negative means until the context is full.
        n_prompt: Prompt tokens (they take room in the context).
        n_ctx: Context size of the slot, in tokens.
        stop: Stop words; the text ends before the first one that appears.
        eos_after: The model ends its answer after this many tokens (None: never).

    Raises:
        ContextExceeded: The prompt does not fit in the context with room to spare.
    """
    room = n_ctx - n_prompt
    if room <= 0:
        raise ContextExceeded(n_prompt, n_ctx)
    budget = room if n_predict < 0 else min(n_predict, room)
    stop_type: StopType = "limit"
    if eos_after is not None and 0 <= eos_after < budget:
        budget, stop_type = eos_after, "eos"
    words = [w for w in stop if w]
    pieces: list[str] = []
    text = ""
    for i in range(budget):
        piece = token_piece(i)
        start = len(text)
        text += piece
        pieces.append(piece)
        hit = _first_stop(text, words, start)
        if hit is not None:
            cut, word = hit
            return Plan(_trim(pieces, cut), "word", word)
    return Plan(tuple(pieces), stop_type)


def _first_stop(text: str, words: Sequence[str], start: int) -> tuple[int, str] | None:
    """The earliest stop word that ends in ``text[start:]``: (where it begins, word)."""
    best: tuple[int, str] | None = None
    for word in words:
        pos = text.find(word, max(0, start - len(word) + 1))
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, word)
    return best


def _trim(pieces: list[str], cut: int) -> tuple[str, ...]:
    """Trim earlier pieces so that together they end at ``cut`` (a stop word began there)."""
    out: list[str] = []
    used = 0
    for piece in pieces:
        keep = piece[: max(0, cut - used)]
        out.append(keep)
        used += len(keep)
    return tuple(out)


# --------------------------------------------------------------------------- timings


@dataclass(frozen=True, slots=True)
class Timings:
    """llama-server's ``timings`` object: how long the prompt and the tokens took."""

    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    cache_n: int = 0

    def to_json(self) -> dict[str, int | float]:
        return {
            "cache_n": self.cache_n,
            "prompt_n": self.prompt_n,
            "prompt_ms": self.prompt_ms,
            "prompt_per_token_ms": _ratio(self.prompt_ms, self.prompt_n),
            "prompt_per_second": _ratio(1e3 * self.prompt_n, self.prompt_ms),
            "predicted_n": self.predicted_n,
            "predicted_ms": self.predicted_ms,
            "predicted_per_token_ms": _ratio(self.predicted_ms, self.predicted_n),
            "predicted_per_second": _ratio(1e3 * self.predicted_n, self.predicted_ms),
        }


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0
