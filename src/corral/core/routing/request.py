"""The request context: what routing stages may read of a request.

Theory of operation
-------------------
A :class:`RequestInfo` carries what every policy needs (route, model, a pinned
backend) and, only when the policy asks for it (``needs_prompt``), a :class:`Prompt`:
the request's canonical text. The prompt's block hashes are computed on first use,
once per request, and kept; a policy that never asks never pays for them. The proxy
reads the body's messages, tools or prompt only when prefix routing is on.

The canonical text is what llama-server's cache keys on, in order: the tools, then
each message's role and content as the client sent them (chat), or the prompt
(completion). A later turn of a conversation resends the earlier turns unchanged, so
its canonical text starts with the earlier turn's, block for block.

A :class:`RouteNote` is where the policy writes why it chose a backend (for the log
line and the ``X-Corral-Predicted-Cached-Tokens`` header) and what the prefix index
must remember to check its prediction when the answer comes back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from corral.core.queueing.classes import DEFAULT_TENANT, Priority


class Prompt:
    """A request's canonical text, cut lazily into chained block hashes.

    Block ``i`` covers bytes ``[i * block, (i + 1) * block)``; its hash covers every
    byte before it too (each hash is chained to the previous one), so two prompts
    share block ``i``'s hash only if they share their first ``i + 1`` blocks. A
    partial last block is not hashed: it cannot be matched by a longer prompt.
    Hashes are Python's (salted per process): the index lives in one process.

    ``cache_prompt``: llama-server's request field (default true). False: the server
    reuses none of its cache for this prompt (it processes it whole, then holds it
    like any other), so no server is predicted to hold any of it, and its answer's
    ``cache_n`` of 0 is no sign of an eviction.
    """

    __slots__ = ("_block", "_hashes", "cache_prompt", "text")

    def __init__(self, text: bytes, *, cache_prompt: bool = True) -> None:
        self.text = text
        self.cache_prompt = cache_prompt
        self._block = 0
        self._hashes: list[int] = []

    @classmethod
    def of_chat(
        cls,
        messages: Iterable[tuple[bytes, bytes]],
        tools: bytes | None,
        *,
        cache_prompt: bool = True,
    ) -> Prompt:
        """From a chat request: the tools (raw JSON), then each ``(role, content)``
        (content as raw JSON) in order."""
        parts = [b"\x1dtools\x1e", tools or b"", b"\x1f"]
        for role, content in messages:
            parts += (b"\x1d", role, b"\x1e", content, b"\x1f")
        return cls(b"".join(parts), cache_prompt=cache_prompt)

    def hashes(self, block: int) -> list[int]:
        """The chained hashes of the full ``block``-byte blocks (computed once)."""
        if self._block != block:
            text, h, out = self.text, 0, []
            for start in range(0, len(text) - block + 1, block):
                h = hash((h, text[start : start + block]))
                out.append(h)
            self._block, self._hashes = block, out
        return self._hashes

    def __len__(self) -> int:
        return len(self.text)

    def __repr__(self) -> str:
        reuse = "" if self.cache_prompt else ", cache_prompt=false"
        return f"<Prompt {len(self.text)} bytes{reuse}>"


@dataclass(eq=False, slots=True)
class RouteNote:
    """What the policy decided for one request, written where the proxy can read it.

    Attributes:
        reason: why this backend, in a word or two (``slots``, ``prefix``,
            ``least-load``, ``balance``, ``pinned``), for the request log line.
        predicted_cached: prompt tokens the chosen server is expected to hold.
        predicted_blocks: the same, in the prefix index's blocks.
        prior: the index's recency stamps of those blocks before this dispatch
            renewed them (to forget what the server evicted if it held less).
        in_flight: leading blocks of the prompt that a request still running on the
            chosen server was sent (a busy slot holds them): the server cannot reuse
            that copy, so reusing less than this is no sign of an eviction.
        sent_at: when the slot was reserved (balancer's clock), for run times.
        wait_until: when a request waiting for the busy holder of its prefix stops
            waiting for it (balancer's clock); None: not waiting for one. The
            scheduler clears it when the free slot the request left was taken by a
            request behind it in its queue and no free slot of its model is left (it
            could go nowhere else: waiting costs it nothing more, and the bound
            starts again at its next refusal, within ``wait_cap``).
        wait_cap: the latest it may wait for that holder at all, from its first
            refusal of a free slot (``--prefix-max-wait``); never cleared.
        best_cached: at the last decision, the most prompt tokens any server was
            predicted to hold (a busy one included): what the request loses, at most,
            on a server holding none of it. The scheduler weighs waiting requests by
            it (:meth:`~corral.core.scheduler.Scheduler.assign`).
    """

    reason: str = ""
    predicted_cached: int = 0
    predicted_blocks: int = 0
    prior: list[int] = field(default_factory=list)
    in_flight: int = 0
    sent_at: float | None = None
    wait_until: float | None = None
    wait_cap: float | None = None
    best_cached: int = 0


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the policy knows of a request: its route, the model it asks for, and the
    one backend it must go to, if any (a request that names a fleet slot, ``id_slot``).

    ``prompt`` is given only to policies that need it; ``note`` is filled by the
    policy. Neither takes part in equality."""

    path: str
    model: str | None = None
    backend_id: str | None = None
    prompt: Prompt | None = field(default=None, compare=False, repr=False)
    note: RouteNote = field(default_factory=RouteNote, compare=False, repr=False)
    api: str | None = None
    """The route's API family (:func:`corral.core.endpoints.api_of`); only servers
    that answer it may take the request. None: any server."""
    priority: Priority = Priority.INTERACTIVE
    """Its class (the key's, or ``X-Corral-Priority`` within the key's cap)."""
    tenant: str = DEFAULT_TENANT
    """The name of the tenant whose key it came with (never the key)."""
    size: int = 0
    """Its body's size in bytes (the buffer's admission counts them)."""
    adapter: str | None = None
    """The LoRA adapter the request names as its ``model`` (:meth:`Fleet.is_adapter`);
    only servers that have it loaded may take the request. None: the base model."""

    @property
    def group(self) -> tuple[str | None, ...]:
        """Requests that wait in one queue: the same model, the same pinned agent and
        the same API family (a pinned request never holds up others while its agent is
        busy, nor an Ollama request those a vLLM server could take)."""
        return self.model, self.backend_id, self.api
