"""What a benchmark run measured, summarised. Pure.

Every request becomes one :class:`Outcome` (times are seconds from the start of the
run, on one monotonic clock). :func:`summarise` turns a run's outcomes into a
:class:`Summary`: latency percentiles, throughput, errors by kind, and the time spent
waiting in Corral's buffer when the target said so (the ``X-Corral-Buffer-Wait``
header).

Definitions, as the serving literature uses them:

- time to first token (TTFT): from sending the request to the first generated token
  (for a non-streamed answer, there is no first token before the whole answer, so it
  is not counted here);
- inter-token latency (ITL): the gaps between consecutive streamed tokens, pooled
  over all requests;
- end-to-end latency: from sending to the last byte of the answer;
- throughput: successful requests, and output tokens, per second of the run's
  duration (from the first request sent to the last answer finished);
- cache hit rate: the prompt tokens the servers took from their prompt cache over all
  prompt tokens, summed over the successful answers that report them (llama-server's
  ``timings.cache_n`` and ``cache_n + prompt_n``): measured by the servers, not guessed.

Percentiles interpolate linearly between the two nearest ranks (the "linear" method
of NumPy and of most tools), so the p50 of ``[1, 2, 3, 4]`` is 2.5.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request, as the load generator saw it."""

    index: int
    """The call's place in the workload."""
    start: float
    """When it was sent (seconds from the start of the run)."""
    end: float
    """When the answer finished, or the request failed."""
    stream: bool = True
    first_token: float | None = None
    """When the first generated token arrived (streamed answers only)."""
    token_gaps: tuple[float, ...] = ()
    """Seconds between consecutive streamed tokens."""
    output_tokens: int = 0
    error: str | None = None
    """None for a success; else its kind: ``http_429``, ``http_503``, ``timeout``,
    ``connection``, ``stream_error`` (the stream ended with an error event)..."""
    buffer_wait: float | None = None
    """Seconds the request waited in Corral's buffer (None: the target did not say)."""
    server: str | None = None
    """Which server answered, where the target says (Corral, the simulator)."""
    scheduled: float | None = None
    """Open loop: when the trace wanted it sent (lateness = start - scheduled)."""
    prompt_tokens: int | None = None
    """The prompt's tokens, as the server's ``timings`` report (None: not reported)."""
    cached_tokens: int | None = None
    """Of those, the tokens the server reused from its prompt cache (``cache_n``)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, interpolating between ranks.

    Raises ValueError for no values or a ``q`` outside 0..1.
    """
    if not values:
        raise ValueError("no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within 0..1, got {q}")
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Distribution:
    """Percentiles of one measure, in seconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution | None:
        if not values:
            return None
        q = {name: percentile(values, at) for name, at in QUANTILES}
        return cls(len(values), sum(values) / len(values), max=max(values), **q)


@dataclass(frozen=True, slots=True)
class Summary:
    """A run, summarised."""

    requests: int
    succeeded: int
    failed: int
    errors: Mapping[str, int]
    duration: float
    requests_per_second: float
    output_tokens: int
    output_tokens_per_second: float
    ttft: Distribution | None
    itl: Distribution | None
    latency: Distribution | None
    buffer_wait: Distribution | None
    servers: Mapping[str, int] = field(default_factory=dict)
    """Successful requests per answering server, where known."""
    prompt_tokens: int = 0
    """Prompt tokens of the successful answers that report their cache use."""
    cached_tokens: int = 0
    """Of those, tokens the servers reused from their prompt cache."""

    @property
    def cache_hit_rate(self) -> float | None:
        """``cached_tokens / prompt_tokens``; None when no answer reported it."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cache_hit_rate": self.cache_hit_rate}


def summarise(outcomes: Iterable[Outcome]) -> Summary:
    """Summarise a run. Only successful requests count toward latencies and tokens."""
    done = list(outcomes)
    good = [o for o in done if o.ok]
    errors = Counter(o.error for o in done if o.error is not None)
    duration = max(o.end for o in done) - min(o.start for o in done) if done else 0.0
    tokens = sum(o.output_tokens for o in good)
    per_second = (lambda n: n / duration) if duration > 0 else (lambda n: 0.0)
    ttfts = [t for o in good if (t := o.ttft) is not None]
    gaps = [g for o in good for g in o.token_gaps]
    waits = [o.buffer_wait for o in good if o.buffer_wait is not None]
    servers = Counter(o.server for o in good if o.server is not None)
    reported = [o for o in good if o.prompt_tokens is not None and o.cached_tokens is not None]
    return Summary(
        requests=len(done),
        succeeded=len(good),
        failed=len(done) - len(good),
        errors=dict(sorted(errors.items())),
        duration=duration,
        requests_per_second=per_second(len(good)),
        output_tokens=tokens,
        output_tokens_per_second=per_second(tokens),
        ttft=Distribution.of(ttfts),
        itl=Distribution.of(gaps),
        latency=Distribution.of([o.latency for o in good]),
        buffer_wait=Distribution.of(waits),
        servers=dict(sorted(servers.items())),
        prompt_tokens=sum(o.prompt_tokens or 0 for o in reported),
        cached_tokens=sum(o.cached_tokens or 0 for o in reported),
    )


def _ms(value: float) -> str:
    return f"{value * 1000:,.1f}"


def format_table(summary: Summary) -> str:
    """The summary as a plain-text table for the terminal (times in milliseconds)."""
    s = summary
    lines = [
        f"requests      {s.requests:,} ({s.succeeded:,} ok, {s.failed:,} failed) "
        f"in {s.duration:,.1f} s",
        f"throughput    {s.requests_per_second:,.2f} requests/s, "
        f"{s.output_tokens_per_second:,.1f} output tokens/s ({s.output_tokens:,} tokens)",
    ]
    if s.errors:
        lines.append("errors        " + ", ".join(f"{k}: {v:,}" for k, v in s.errors.items()))
    if s.cache_hit_rate is not None:
        lines.append(
            f"prompt cache  {s.cache_hit_rate:.1%} of {s.prompt_tokens:,} prompt tokens "
            f"reused ({s.cached_tokens:,}, as the servers report)"
        )
    header = f"{'(ms)':<22}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}{'mean':>10}"
    lines += ["", header]
    rows: list[tuple[str, Distribution | None]] = [
        ("time to first token", s.ttft),
        ("inter-token latency", s.itl),
        ("end-to-end latency", s.latency),
        ("wait in Corral buffer", s.buffer_wait),
    ]
    for label, dist in rows:
        if dist is None:
            lines.append(f"{label:<22}{'-':>10}{'-':>10}{'-':>10}{'-':>10}{'-':>10}")
            continue
        cells = (dist.p50, dist.p90, dist.p99, dist.max, dist.mean)
        lines.append(f"{label:<22}" + "".join(f"{_ms(v):>10}" for v in cells))
    if s.servers:
        lines += ["", "answered by   " + ", ".join(f"{k}: {v:,}" for k, v in s.servers.items())]
    return "\n".join(lines)
