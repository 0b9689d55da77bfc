"""The picker: combine the scorers' estimates into one choice.

Theory of operation
-------------------
The candidate with the lowest estimated time to first token wins, with two guards:

- **balance** (as SGLang's cache-aware policy): when the chosen backend is busier than
  the least busy candidate by more than ``imbalance`` slots, the least busy one wins
  instead. A hot prefix cannot pile every request onto the servers that hold it while
  others sit idle; the loser pays one prefill, and then holds the prefix too;
- **capacity** is not the picker's: filters only offer backends with a free slot, and
  a busy holder of a long prefix can only be waited for (the buffer), never sent more
  requests than it has slots.

Ties go to the earlier candidate: candidates come most free slots first.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.core.fleet import Backend


@dataclass(slots=True)
class Scored:
    """One candidate and what the scorers said of it."""

    backend: Backend
    ttft: float  # seconds, estimated
    cached_blocks: int  # predicted, in the prefix index's blocks
    cached_tokens: int  # predicted
    busy: int  # the backend's busy slots when scored (``Backend.busy``)
    wait: float = 0.0  # seconds until a slot frees there, counted in ``ttft``


def pick(scored: list[Scored], imbalance: int) -> tuple[Scored, str]:
    """The winner and why: ``prefix`` (it holds part of the prompt and is fastest),
    ``least-load`` (nothing held anywhere helps), ``balance`` (the guard overruled).

    Raises ValueError on an empty list."""
    if not scored:
        raise ValueError("no candidate to pick from")
    best = least = scored[0]
    for s in scored:  # min by ttft and by busy, the first of equals: a plain loop (per request)
        if s.ttft < best.ttft:
            best = s
        if s.busy < least.busy:
            least = s
    if best.busy - least.busy > imbalance:
        return least, "balance"
    if best.cached_blocks == 0:
        return best, "least-load"
    return best, "prefix"
