"""PNG charts of benchmark runs, for people (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no screen on servers and in CI

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from corral.bench.stats import Outcome


def _save(fig: Figure, path: Path, title: str = "") -> Path:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)  # figures are kept until closed: a long suite would pile them up
    return path


def _cdf(ax: Axes, values: Sequence[float], label: str) -> None:
    if not values:
        return
    ordered = sorted(values)
    n = len(ordered)
    ax.plot(ordered, [(i + 1) / n for i in range(n)], label=label, drawstyle="steps-post")


def latency_cdfs(runs: Mapping[str, Sequence[Outcome]], path: Path, title: str = "") -> Path:
    """Distribution (CDF) of time to first token and of end-to-end latency, one line per run."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    spans: dict[int, list[float]] = {0: [], 1: []}
    for name, outcomes in runs.items():
        good = [o for o in outcomes if o.ok]
        ttfts = [t for o in good if (t := o.ttft) is not None]
        latencies = [o.latency for o in good]
        _cdf(left, ttfts, name)
        _cdf(right, latencies, name)
        spans[0] += ttfts
        spans[1] += latencies
    for i, (ax, what) in enumerate(
        ((left, "time to first token (s)"), (right, "end-to-end latency (s)"))
    ):
        ax.set_xlabel(what)
        ax.set_ylabel("share of requests")
        values = [v for v in spans[i] if v > 0]
        if values and max(values) / min(values) > 30:  # wide spread: log scale reads best
            ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
    left.legend(fontsize="small")
    return _save(fig, path, title)


def timeline(outcomes: Sequence[Outcome], path: Path, title: str = "") -> Path:
    """Each request's latency at the time it was sent (failures in red), and tokens/s."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    good = [o for o in outcomes if o.ok]
    bad = [o for o in outcomes if not o.ok]
    top.scatter([o.start for o in good], [o.latency for o in good], s=6, label="ok")
    if bad:
        top.scatter([o.start for o in bad], [o.latency for o in bad], s=10, c="red", label="failed")
    top.set_ylabel("end-to-end latency (s)")
    top.grid(True, alpha=0.3)
    top.legend(fontsize="small")
    if good:
        end = max(o.end for o in good)
        width = max(0.1, end / 60)  # about 60 bins whatever the run's length
        bins = int(end / width) + 1
        rates = [0.0] * bins
        for o in good:  # spread each answer's tokens evenly over its duration
            span = max(o.end - o.start, 1e-9)
            for b in range(int(o.start / width), min(bins, int(o.end / width) + 1)):
                overlap = min(o.end, (b + 1) * width) - max(o.start, b * width)
                if overlap > 0:
                    rates[b] += o.output_tokens * overlap / span / width
        bottom.plot([b * width for b in range(bins)], rates, drawstyle="steps-post")
    bottom.set_xlabel("time since start (s)")
    bottom.set_ylabel("output tokens/s")
    bottom.grid(True, alpha=0.3)
    return _save(fig, path, title)


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: Path,
    *,
    ylabel: str,
    title: str = "",
    log: bool = False,
) -> Path:
    """Bars side by side: one group per x label, one bar per series (contender)."""
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=name)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return _save(fig, path)
