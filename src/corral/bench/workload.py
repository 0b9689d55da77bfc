"""What a benchmark sends, and when: seeded workloads and arrival traces. Pure.

Theory of operation
-------------------
A workload is an endless, seeded sequence of :class:`Call` objects: the prompt (or
chat history), the number of tokens to generate, and whether to stream. The same
spec and seed give the same sequence, call for call, so every contender in a
comparison receives exactly the same requests in the same order.

Output lengths come from one of three shapes:

- ``fixed``: every answer has ``output_tokens`` tokens.
- ``heavy-tail``: most answers are short and a few are very long ("yes or no" next to
  "write half a book"): a log-normal with median ``output_tokens`` and shape
  ``tail_sigma``, capped at ``max_output_tokens``.
- ``multi-turn``: chat sessions whose history grows. Each call continues one of
  ``sessions`` open conversations (or starts a new one after ``turns`` turns); its
  messages are the whole history so far, so calls share long prefixes. The
  assistant's earlier answers in the history are the planned answers (text of the
  planned length), not the server's real words, so the sequence does not depend on
  who answered; with ``history="served"`` the load generator puts the server's words
  there instead, as a chat client does, and sends each turn after the answer to the
  one before. Output lengths are heavy-tailed as above. For a prompt cache to
  matter, histories must grow long: with ``prompt_tokens`` 400 and 8 turns of answers
  near 64 tokens, the last turns send over 1,000 tokens (:func:`history_words`). Each
  user turn has ``turn_tokens`` words (a quarter of ``prompt_tokens`` by default).
- ``shared-prefix``: llm-d's shape. ``groups`` groups of ``users`` users; each group
  shares a long document or system prompt (``prefix_tokens`` words) and each call is
  one user's short question (``prompt_tokens`` words) after it. Calls pick a group and
  a user at random, so a balancer that keeps a group's calls together reuses its cache.
- ``no-sharing``: the control. The same lengths as ``shared-prefix`` but every call's
  document is its own, so there is nothing to reuse.

Every call carries a ``session``: the conversation (multi-turn), the user
(shared-prefix) or the call itself; the load generator sends it as ``X-Session-Id``
so a sticky balancer can hash on it.

Arrivals for an open loop are a Poisson process (:func:`poisson_arrivals`): the gaps
between requests are exponential with mean ``1 / rate``, from their own seeded
generator, so the same seed gives the same trace whatever the workload.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

Shape = Literal["fixed", "heavy-tail", "multi-turn", "shared-prefix", "no-sharing"]
SHAPES: tuple[Shape, ...] = ("fixed", "heavy-tail", "multi-turn", "shared-prefix", "no-sharing")
History = Literal["planned", "served"]
HISTORIES: tuple[History, ...] = ("planned", "served")

_WORDS = (
    "the", "fleet", "server", "slot", "token", "model", "prompt", "answer", "request",
    "balance", "queue", "latency", "stream", "cache", "batch", "context", "agent", "user",
    "write", "about", "why", "how", "small", "large", "fast", "slow", "river", "mountain",
    "history", "story", "poem", "list", "explain", "compare", "summarise", "translate",
)  # fmt: skip
"""Prompt words. Common English words are one token each in most vocabularies (and in
the simulator's), so a prompt of N words is close to N tokens."""


class WorkloadError(ValueError):
    """A workload spec that cannot work (a negative length, a share above 1...)."""


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Which requests a benchmark sends. Every field has a default that works."""

    shape: Shape = "fixed"
    prompt_tokens: int = 32
    """Words in each new prompt (about as many tokens)."""
    output_tokens: int = 64
    """Tokens to generate: exact for ``fixed``, the median otherwise."""
    tail_sigma: float = 1.2
    """Shape of the heavy tail (log-normal sigma): 1.2 puts the p99 near 16x the median."""
    max_output_tokens: int = 2048
    """No answer is planned longer than this (keep it under the servers' context)."""
    stream_share: float = 1.0
    """Share of requests that stream (1.0: all; 0.0: none), chosen per call."""
    sessions: int = 8
    """``multi-turn``: conversations open at once."""
    turns: int = 4
    """``multi-turn``: turns per conversation before it ends and a new one starts."""
    history: History = "planned"
    """``multi-turn``: what a later turn resends as the earlier answers. ``planned``:
    text of the planned length, the same for every run; ``served``: the server's own
    words, as a chat client sends them back (the load generator puts them in:
    :func:`with_answers`), so a server that kept the conversation reads only the new
    turn. Each turn then waits for the answer before it."""
    turn_tokens: int | None = None
    """``multi-turn``: words in each user turn (the first follows a system prompt of
    ``prompt_tokens`` words); None: a quarter of ``prompt_tokens``. A chat's turns are
    short next to its history: LMSYS-Chat-1M's prompts average 69.5 tokens
    (arXiv:2309.11998, table 1)."""
    groups: int = 4
    """``shared-prefix``: groups, each with its own shared document."""
    users: int = 8
    """``shared-prefix``: users per group."""
    prefix_tokens: int = 1000
    """``shared-prefix`` and ``no-sharing``: words in the document before each question."""
    seed: int = 1

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise WorkloadError(f"unknown workload {self.shape!r}; choose one of {SHAPES}")
        for name in (
            "prompt_tokens", "output_tokens", "max_output_tokens", "sessions", "turns",
            "groups", "users", "prefix_tokens",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise WorkloadError(f"{name.replace('_', ' ')} must be >= 1")
        if self.history not in HISTORIES:
            raise WorkloadError(f"unknown history {self.history!r}; choose one of {HISTORIES}")
        if self.turn_tokens is not None and self.turn_tokens < 1:
            raise WorkloadError("turn tokens must be >= 1")
        if self.output_tokens > self.max_output_tokens:
            raise WorkloadError(
                f"output tokens ({self.output_tokens}) is above the cap ({self.max_output_tokens})"
            )
        if not 0.0 <= self.stream_share <= 1.0:
            raise WorkloadError(f"stream share must be between 0 and 1, got {self.stream_share}")
        if not self.tail_sigma >= 0:
            raise WorkloadError(f"tail sigma must be >= 0, got {self.tail_sigma}")


@dataclass(frozen=True, slots=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Call:
    """One request of a workload."""

    index: int
    """Position in the sequence (0, 1, 2...)."""
    messages: tuple[Message, ...]
    """The chat history to send; for completion APIs, its text is the prompt."""
    max_tokens: int
    """Tokens to generate (sent as ``max_tokens`` / ``n_predict``)."""
    stream: bool
    session: int = 0
    """``multi-turn``: the conversation (0, 1, 2...); otherwise each call is its own."""
    turn: int = 0
    """``multi-turn``: 0 for a conversation's first call."""
    group: int = 0
    """``shared-prefix``: the group whose document the call starts with."""

    @property
    def prompt(self) -> str:
        """The history as one text, for completion endpoints."""
        return "\n".join(m.content for m in self.messages)


def with_answers(call: Call, answers: Sequence[str | None]) -> Call:
    """``call`` with its earlier answers (its assistant messages, in order) replaced by
    ``answers``: what the server said to each earlier turn of the conversation (None,
    or none given: the planned text stays, as for a turn that failed)."""
    if not any(answers):
        return call
    messages, k = [], 0
    for m in call.messages:
        if m.role == "assistant":
            served = answers[k] if k < len(answers) else None
            k += 1
            if served is not None:
                m = Message("assistant", served)
        messages.append(m)
    return dataclasses.replace(call, messages=tuple(messages))


def output_length(rng: random.Random, spec: WorkloadSpec) -> int:
    """Draw one answer length for ``spec``."""
    if spec.shape == "fixed":
        return spec.output_tokens
    drawn = spec.output_tokens * math.exp(rng.gauss(0.0, spec.tail_sigma))
    return max(1, min(spec.max_output_tokens, round(drawn)))


def _text(rng: random.Random, words: int, start: str = "") -> str:
    picked = [start] if start else []
    picked += rng.choices(_WORDS, k=words - len(picked))
    return " ".join(picked)


@dataclass(slots=True)
class _Session:
    number: int
    history: list[Message] = field(default_factory=list)
    turn: int = 0


class Workload:
    """The sequence of calls a spec describes. Iterate it (it never ends)."""

    def __init__(self, spec: WorkloadSpec, salt: str = "") -> None:
        """``salt``: a text put before every call's first message (and so before every
        prompt), the same for all of them. Two runs of the same calls with different
        salts share no prompt prefix beyond the chat template's, so a run does not
        find the previous run's prompts in the servers' caches (llama-server keeps them
        in its slots and its host prompt cache); within a run, prompts share what they
        would share without it."""
        self.spec = spec
        self.salt = salt

    def __iter__(self) -> Iterator[Call]:
        if not self.salt:
            yield from self._calls()
            return
        for call in self._calls():
            first, *rest = call.messages
            salted = Message(first.role, f"{self.salt} {first.content}")
            yield dataclasses.replace(call, messages=(salted, *rest))

    def _calls(self) -> Iterator[Call]:
        spec = self.spec
        rng = random.Random(f"corral-workload:{spec.seed}")
        if spec.shape in ("shared-prefix", "no-sharing"):
            yield from self._documents(rng)
            return
        if spec.shape != "multi-turn":
            for index in itertools.count():
                prompt = _text(rng, spec.prompt_tokens, start=f"Request {index}:")
                yield Call(
                    index=index,
                    messages=(Message("user", prompt),),
                    max_tokens=output_length(rng, spec),
                    stream=rng.random() < spec.stream_share,
                    session=index,
                )
            return
        numbers = itertools.count()
        open_ = [_Session(next(numbers)) for _ in range(spec.sessions)]
        for index in itertools.count():
            place = rng.randrange(len(open_))
            session = open_[place]
            if not session.history:
                system = _text(rng, spec.prompt_tokens, start=f"Session {session.number}:")
                session.history.append(Message("system", system))
            turn = spec.turn_tokens or max(1, spec.prompt_tokens // 4)
            session.history.append(Message("user", _text(rng, turn)))
            max_tokens = output_length(rng, spec)
            yield Call(
                index=index,
                messages=tuple(session.history),
                max_tokens=max_tokens,
                stream=rng.random() < spec.stream_share,
                session=session.number,
                turn=session.turn,
            )
            # the planned answer joins the history (its length, not the server's words)
            session.history.append(Message("assistant", _text(rng, min(max_tokens, 256))))
            session.turn += 1
            if session.turn >= spec.turns:
                open_[place] = _Session(next(numbers))

    def _documents(self, rng: random.Random) -> Iterator[Call]:
        spec = self.spec
        shared = spec.shape == "shared-prefix"
        docs = [_text(rng, spec.prefix_tokens, start=f"Document-{g}:") for g in range(spec.groups)]
        for index in itertools.count():
            group, user = rng.randrange(spec.groups), rng.randrange(spec.users)
            if shared:
                document = docs[group]
            else:  # as long, but its own
                document = _text(rng, spec.prefix_tokens, start=f"Document-of-call-{index}:")
            question = _text(rng, spec.prompt_tokens, start=f"User-{user}:")
            yield Call(
                index=index,
                messages=(Message("system", document), Message("user", question)),
                max_tokens=output_length(rng, spec),
                stream=rng.random() < spec.stream_share,
                session=group * spec.users + user if shared else index,
                group=group if shared else index,
            )

    def take(self, count: int) -> list[Call]:
        """The first ``count`` calls."""
        return list(itertools.islice(self, count))

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"<Workload {s.shape} prompt={s.prompt_tokens} output={s.output_tokens} seed={s.seed}>"
        )


def history_words(call: Call) -> int:
    """Words in a call's messages: about its prompt tokens (see :data:`_WORDS`)."""
    return sum(len(m.content.split()) for m in call.messages)


def poisson_arrivals(rate: float, seed: int) -> Iterator[float]:
    """Arrival times (seconds from the start) of a Poisson process of ``rate`` per second."""
    if not rate > 0 or math.isinf(rate):
        raise WorkloadError(f"the arrival rate must be a positive number, got {rate}")
    rng = random.Random(f"corral-arrivals:{seed}")
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        yield t
