"""Scorers: how well each candidate would serve a request, as an estimate in seconds.

Theory of operation
-------------------
A request's time to first token on a server is mostly the prefill of the prompt
tokens the server does not have in its cache, at that server's prefill rate, plus any
wait for a slot:

    ttft(b) = uncached(b) / rate(b) * (1 + busy(b) / slots(b)) + wait(b)

- ``uncached(b)``: prompt tokens minus the tokens the prefix index predicts ``b``
  holds (the *predicted cache* scorer);
- ``rate(b)``: prompt tokens per second for a prefill of ``uncached(b)`` tokens,
  learned from every answer's ``timings`` (``prompt_n / prompt_ms``): the fleet's rate
  for that size times ``b``'s speed, each a moving average (:class:`PrefillRates`). A
  server with no measurement yet has the fleet's mean speed; a fleet with none at all
  has no basis for the estimate, and the prefix policy routes by free slots alone;
- ``1 + busy/slots``: a server shares its compute among the sequences it runs, so a
  busier server prefills more slowly (the *free slots* scorer, as a factor);
- ``wait(b)``: 0 with a free slot; for a busy server, the mean time a request runs
  there divided by its slots (the expected time until one of them ends), or, where
  the caller knows how long each running request has run, the soonest expected end
  (``PrefixPolicy._expected_wait``).

For a request that names a LoRA adapter, *adapter affinity* (:func:`adapter_affinity`)
breaks ties: llama-server does not batch requests with different adapters together, so
a server already running that adapter (and no other) serves it in the same batches.

Token counts come from bytes of canonical text through a bytes-per-token ratio also
learned from answers (:class:`TokenRatio`): the balancer does not tokenize.
"""

from __future__ import annotations

import bisect
import math

from corral.core.events import Timings
from corral.core.fleet import Backend

MIN_PROMPT_TOKENS = 16
"""Prefills shorter than this measure overheads more than the rate: not learned from."""


class _Mean:
    """An exponentially weighted moving average."""

    __slots__ = ("alpha", "value")

    def __init__(self, alpha: float, value: float | None = None) -> None:
        self.alpha = alpha
        self.value = value

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)


def size_class(tokens: int) -> int:
    """The size class of a prefill of ``tokens``: half octaves, ``floor(2 * log2(tokens))``
    (16-22 tokens are class 8, 23-31 class 9, 32-45 class 10...), counted from
    :data:`MIN_PROMPT_TOKENS`. Class ``c``'s centre is ``2 ** ((c + 0.5) / 2)`` tokens."""
    return int(2.0 * math.log2(max(tokens, MIN_PROMPT_TOKENS)))


SCALE_BAND = (0.9, 1.1)
"""The speeds' mean is kept in this band (:meth:`PrefillRates._rescale`): a rate is a
speed times the fleet's rate, and nothing else pins the split between the two, along
which noisy answers drift it (a review measured the mean speed at 0.46 after 50,000
answers varying 25%, with the rates still right)."""


class PrefillRates:
    """Each backend's prefill rate in prompt tokens per second, and how long its
    requests run, learned from answers.

    A rate is two factors, learned apart: the fleet's rate for a prefill of that size,
    and the server's *speed* (about 1: a moving average of its answers' rates over the
    fleet's for their sizes). Per token, a short prefill runs slower than a long one
    (the pinned llama-server on this project's CPU, four servers on two cores: a median
    175 tokens/s for 16-63 tokens, 316 for 448-511), so one average per server of
    whatever it happened to read ranks servers by the mix of their requests: a server
    that had just read a new conversation's whole prompt looked faster than one serving
    later turns, and got the next new conversation too (issue #10's runs of four
    servers placed 8, 8, 3 and 5 conversations). Speeds compare servers as if they had
    read the same sizes.

    The fleet's rate by size: one value per :func:`size_class` (half an octave), the
    rate at its centre, interpolated between the centres of the nearest measured
    classes (linearly in the logarithms of size and rate), and beyond the first and the
    last centres to the end of their classes along the slope next to them (rates
    growing with size, at most as fast as it), then flat. An answer multiplies its
    class's value by ``1 + size_alpha * (r - 1)``, ``r`` its rate over its server's
    speed over what the curve said for its size; the first answer of a class sets it
    (and moves no speed). Within a class the curve cannot tell sizes apart: servers
    that read only its smallest and only its largest prefills differ in speed by part
    of what those rates differ.

    A server with no answer yet has the fleet's mean speed; a server's answers move its
    speed from there by ``alpha`` each (not to the first answer's: one answer's rate
    varies 20-30%). The speeds' mean is kept near 1 (:data:`SCALE_BAND`)."""

    def __init__(self, alpha: float = 0.2, size_alpha: float = 0.1) -> None:
        self.alpha = alpha
        self.size_alpha = size_alpha
        self._curve: dict[int, float] = {}  # size class -> the fleet's rate at its centre
        self._classes: list[int] = []  # the curve's classes, in order
        self._speeds: dict[str, float] = {}  # plain floats, not _Mean: read per candidate
        self._durations: dict[str, _Mean] = {}
        self._sum = 0.0  # of the speeds, for the fleet's mean in O(1)

    def learn(self, backend_id: str, timings: Timings) -> None:
        n = timings.prompt_n
        if n < MIN_PROMPT_TOKENS or timings.prompt_ms <= 0:
            return
        sample = n * 1000.0 / timings.prompt_ms
        if not math.isfinite(sample):  # a prompt_ms too small to divide by
            return
        speed = self._speeds.get(backend_id)
        if speed is None:  # a new server starts at the fleet's mean
            speed = self._speeds[backend_id] = self.mean_speed()
            self._sum += speed
        size = size_class(n)
        predicted = self.at(n)
        if predicted is None or size not in self._curve:  # the first of its size sets it
            self._curve[size] = sample / speed
            bisect.insort(self._classes, size)
        else:  # its rate over the fleet's for its size, before this answer
            moved = self._speeds[backend_id] = speed + self.alpha * (sample / predicted - speed)
            self._sum += moved - speed
            self._curve[size] *= 1.0 + self.size_alpha * (sample / speed / predicted - 1.0)
        scale = self._sum / len(self._speeds)
        if not SCALE_BAND[0] <= scale <= SCALE_BAND[1]:
            self._rescale(scale)

    def _rescale(self, scale: float) -> None:
        """Divide every speed by ``scale`` and multiply the fleet's rates by it: every
        rate stays as it was, and the speeds' mean is 1 again."""
        speeds = self._speeds
        for backend_id, speed in speeds.items():
            speeds[backend_id] = speed / scale
        self._sum = sum(speeds.values())
        for size in self._curve:
            self._curve[size] *= scale

    def ran(self, backend_id: str, seconds: float) -> None:
        """A request ran this long on the backend (from dispatch to end)."""
        mean = self._durations.get(backend_id)
        if mean is None:
            mean = self._durations[backend_id] = _Mean(self.alpha)
        mean.add(max(0.0, seconds))

    def mean_speed(self) -> float:
        """The mean of the servers' speeds (1 before any answer)."""
        return self._sum / len(self._speeds) if self._speeds else 1.0

    def speed(self, backend_id: str) -> float:
        """The backend's prefill speed relative to the fleet's (about 1); the fleet's
        mean where it has none yet."""
        speed = self._speeds.get(backend_id)
        return speed if speed is not None else self.mean_speed()

    def at(self, tokens: int) -> float | None:
        """The fleet's prefill rate (tokens/s) for a prefill of ``tokens`` (see the
        class docstring); None when no answer was learned from."""
        classes = self._classes
        if not classes:
            return None
        x = 2.0 * math.log2(max(tokens, MIN_PROMPT_TOKENS)) - 0.5  # class c's centre is at c
        i = bisect.bisect_left(classes, x)
        if i == 0 or i == len(classes):  # beyond the first or the last centre
            if len(classes) == 1:
                return self._curve[classes[0]]
            low, high = classes[:2] if i == 0 else classes[-2:]
            end = low if i == 0 else high
            at_end = self._curve[end]
            # per class, half a doubling of size: a rate grows at most as fast as the size
            slope = math.log2(self._curve[high] / self._curve[low]) / (high - low)
            beyond = min(0.5, max(-0.5, x - end))  # the rest of its class, then flat
            return float(at_end * 2.0 ** (min(0.5, max(0.0, slope)) * beyond))
        low, high = classes[i - 1], classes[i]
        at_low = self._curve[low]  # times a ratio of 1 where the curve is flat: exact
        return float(at_low * (self._curve[high] / at_low) ** ((x - low) / (high - low)))

    def rate(self, backend_id: str, tokens: int) -> float | None:
        """Tokens per second on this backend for a prefill of ``tokens``: its speed
        times the fleet's rate for that size; None when no backend was measured."""
        at = self.at(tokens)
        return None if at is None else self.speed(backend_id) * at

    def duration(self, backend_id: str) -> float:
        mean = self._durations.get(backend_id)
        return (mean.value or 0.0) if mean is not None else 0.0

    def forget(self, backend_id: str) -> None:
        """Drop what was learned of ``backend_id``; with the last server's, the fleet's
        rates too (the next servers may run another model or hardware: until one
        answers, nothing is known)."""
        speed = self._speeds.pop(backend_id, None)
        if speed is not None:
            self._sum -= speed
        self._durations.pop(backend_id, None)
        if not self._speeds:
            self._sum = 0.0
            self._curve.clear()
            self._classes.clear()

    @property
    def known(self) -> bool:
        return bool(self._classes)


class TokenRatio:
    """Bytes of canonical text per prompt token, learned from answers (4 until then:
    the usual figure for English with a BPE tokenizer)."""

    def __init__(self, initial: float = 4.0, alpha: float = 0.1) -> None:
        self._mean = _Mean(alpha, initial)

    def learn(self, text_bytes: int, tokens: int) -> None:
        if tokens >= MIN_PROMPT_TOKENS and text_bytes > 0:
            self._mean.add(text_bytes / tokens)

    @property
    def value(self) -> float:
        return self._mean.value or 4.0

    def tokens(self, text_bytes: int) -> int:
        return round(text_bytes / self.value)


def free_slots(backend: Backend) -> int:
    """The free slots scorer: more is better."""
    return backend.free


def slowdown(backend: Backend, free: int | None = None) -> float:
    """How much a server's sharing of compute slows a new prefill (1 when idle).

    ``free``: the backend's free slots when the caller has read them already."""
    total = backend.slots_total
    if not total:
        return 1.0
    return 1.0 + (total - (backend.free if free is None else free)) / total


def estimated_ttft(
    backend: Backend,
    uncached_tokens: int,
    rate: float,
    wait: float,
    free: int | None = None,
) -> float:
    """Seconds to first token on ``backend`` (see the module docstring).

    ``wait``: seconds until a slot frees, counted when none is free (the caller's
    estimate: :func:`expected_wait`, or better); ``free``: the backend's free slots
    when the caller has read them already."""
    if free is None:
        free = backend.free
    total = backend.slots_total
    prefill = uncached_tokens / rate * (1.0 + (total - free) / total if total else 1.0)  # slowdown
    if free > 0:
        return prefill
    return prefill + wait


def expected_wait(backend: Backend, rates: PrefillRates) -> float:
    """Seconds until a busy backend's slot frees, knowing only its mean run time: that
    over its slots (the module docstring's ``wait(b)``)."""
    return rates.duration(backend.id) / max(1, backend.slots_total)


def adapter_affinity(backend: Backend, adapter: str | None) -> int:
    """How well a server's requests in flight (the balancer's) suit a request for
    ``adapter`` (None: the base model), more is better: 2, it runs that adapter and no
    other; 1, it runs nothing; 0, it runs requests of another adapter (or the base
    model), which llama-server batches apart from this one."""
    running = backend.running
    if not running:
        return 1
    return 2 if len(running) == 1 and adapter in running else 0
