"""Just enough of Prometheus' text format to read a few gauges. Pure."""

from __future__ import annotations


def gauges(text: str, names: frozenset[str] | set[str]) -> dict[str, float]:
    """The value of each metric in ``names`` found in ``text``, summed over its label
    sets (one vLLM engine per data-parallel rank, one SGLang scheduler per TP rank
    reports its own series; the server's load is their sum).

    Lines that do not parse are skipped: a scrape carries hundreds of series, and one
    odd line must not hide the rest. Metrics absent from ``text`` are absent from the
    result.
    """
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        brace = line.find("{")
        if brace >= 0:
            name = line[:brace]
            close = line.rfind("}")
            rest = line[close + 1 :] if close > brace else ""
        else:
            name, _, rest = line.partition(" ")
        name = name.strip()
        if name not in names:
            continue
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if value != value:  # NaN: a gauge with no value yet
            continue
        found[name] = found.get(name, 0.0) + value
    return found
