"""A fleet's capacity with nothing reused, from the speeds its servers measured. Pure.

Theory of operation
-------------------
Every real-server section sets its offered load as a share of the fleet's capacity.
Counting the answers a closed loop finishes (one user per slot) measures that
capacity with whatever cache reuse the loop happened to get, and with the few long
answers a short window may or may not hold: on section 5's multi-turn workload three
runs of one day measured 0.58, 0.81 and 0.67 requests/s, so "90% of capacity" ranged
from comfortable to overloaded, and it was more than a router that reuses little
could serve.

This module measures *speeds* instead, which a short window estimates well (every
token counts, not every answer), and computes the capacity from the workload:

- ``prefill``: prompt tokens a slot reads per second with every slot busy, the
  uncached tokens (``prompt_tokens - cached_tokens``, from the answers' ``timings``)
  over the time to first token, summed over the answers;
- ``decode``: tokens a slot generates per second with every slot busy, the tokens
  after the first over the time after the first, summed;
- the workload's mean request, from its own calls (:meth:`Workload.take`): the
  prompt's words times the tokens per word the servers counted, and the answer's
  planned length times the share of it the servers generated (a model may stop early).

The capacity is then ``slots / (prompt / prefill + answer / decode)`` requests/s:
what the fleet finishes when every prompt is read whole, the *uncached capacity*,
as section 5's simulated fleet already defines it. A router that reuses the cache
serves the same offered load with room to spare; one that reuses nothing is at the
stated share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from corral.bench.stats import Outcome
from corral.bench.workload import Call


class CapacityError(ValueError):
    """The calibration's answers cannot give a speed (none streamed, none reported
    ``timings``)."""


@dataclass(frozen=True, slots=True)
class Capacity:
    """A fleet's uncached capacity and the speeds behind it.

    Attributes:
        requests_per_second: what the fleet finishes with every prompt read whole.
        prefill: prompt tokens per second per slot, every slot busy.
        decode: generated tokens per second per slot, every slot busy.
        prompt_tokens: the workload's mean prompt, tokens.
        output_tokens: the workload's mean answer, tokens.
        closed_loop: what the calibration's closed loop finished, requests/s (with the
            reuse it happened to get), for comparison.
    """

    requests_per_second: float
    prefill: float
    decode: float
    prompt_tokens: float
    output_tokens: float
    closed_loop: float


def _words(call: Call) -> int:
    return sum(len(m.content.split()) for m in call.messages)


def uncached_capacity(
    outcomes: Sequence[Outcome], calls: Sequence[Call], slots: int, closed_loop: float
) -> Capacity:
    """The capacity of ``slots`` slots for the workload whose calls are ``calls``
    (enough of them for their mean: thousands, or whole conversations), from the
    calibration's ``outcomes`` (streamed answers with ``timings``; ``Outcome.index``
    is the call's place in the same workload). Raises :class:`CapacityError`."""
    if slots < 1 or not calls:
        raise CapacityError("no slots or no calls to measure a capacity for")
    by_index = {call.index: call for call in calls}
    read = read_s = made = made_s = words = tokens = planned = generated = 0.0
    for o in outcomes:
        if not o.ok or o.first_token is None or o.prompt_tokens is None:
            continue
        uncached = o.prompt_tokens - (o.cached_tokens or 0)
        if uncached > 0 and o.first_token > o.start:
            read += uncached
            read_s += o.first_token - o.start
        if o.output_tokens > 1 and o.end > o.first_token:
            made += o.output_tokens - 1
            made_s += o.end - o.first_token
        call = by_index.get(o.index)
        if call is not None:
            words += _words(call)
            tokens += o.prompt_tokens
            planned += call.max_tokens
            generated += o.output_tokens
    if not read_s or not made_s or not words or not planned:
        raise CapacityError(
            "the calibration's answers give no speed: none streamed with timings, or "
            "none of them is among the workload's calls"
        )
    prefill, decode = read / read_s, made / made_s
    prompt = sum(_words(c) for c in calls) / len(calls) * tokens / words
    output = sum(c.max_tokens for c in calls) / len(calls) * generated / planned
    service = prompt / prefill + output / decode
    return Capacity(slots / service, prefill, decode, prompt, output, closed_loop)
