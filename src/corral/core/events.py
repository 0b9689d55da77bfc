"""What happens to a backend, as the fleet tells those who keep their own view of it.

The fleet is the one place where backends change (Rule 1 of :mod:`corral.core.fleet`).
A routing stage that remembers something per backend (the prefix index: which prompts
a server probably holds; the prefill rate it measured) subscribes to the fleet
(:meth:`~corral.core.fleet.Fleet.subscribe`) and is told, in order, of:

- :class:`Dispatched`: a slot was reserved on a backend for a request;
- :class:`Finished`: that request ended, with the server's ``timings`` when its
  answer reported them (the ground truth of what the server had cached);
- :class:`Reset`: what the backend held is gone: it left the fleet, restarted, or
  now runs another model.

With no subscriber (slot routing), the fleet builds no event: nothing is paid per
request for a feature that is off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.core.fleet import Backend


@dataclass(frozen=True, slots=True)
class Timings:
    """What llama-server reports of a prompt in an answer's ``timings``.

    Attributes:
        prompt_n: prompt tokens it processed (not found in its cache).
        cache_n: prompt tokens it reused from its cache.
        prompt_ms: milliseconds it spent processing ``prompt_n`` tokens.
    """

    prompt_n: int
    cache_n: int
    prompt_ms: float

    @property
    def prompt_tokens(self) -> int:
        """All the prompt's tokens, cached or not."""
        return self.prompt_n + self.cache_n


@dataclass(frozen=True, slots=True)
class Dispatched:
    """A slot on ``backend`` was reserved for ``request`` (a ``RequestInfo``)."""

    backend: Backend
    request: object
    now: float | None


@dataclass(frozen=True, slots=True)
class Finished:
    """The request ended on ``backend``; ``timings`` is None when the answer had none
    (an error, an endpoint that does not report them, a client that left).

    ``sent`` is False when the request never reached the server, or the server refused
    it unread (a 503, or any 4xx: llama-server checks a request's fields and its
    prompt's length against the slot's context before it reads the prompt into its
    cache): its client left between the reservation and the send, the connection
    failed first, or its body could not be made for that server (a LoRA adapter it
    does not have). The server then holds nothing of it, and a subscriber that took
    the dispatch as a change to the server's cache takes it back. A request given up
    while it was being sent, or answered with another 5xx, counts as sent (the
    balancer cannot tell whether the server read it)."""

    backend: Backend
    request: object
    timings: Timings | None
    now: float | None
    sent: bool = True


@dataclass(frozen=True, slots=True)
class Reset:
    """What the server held is gone. ``reason``: ``left``, ``restarted`` or ``model``."""

    backend_id: str
    reason: str


FleetEvent = Dispatched | Finished | Reset
