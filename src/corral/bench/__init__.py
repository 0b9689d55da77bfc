"""Benchmarks: ``corral bench`` (a load generator) and the comparison suite.

- :mod:`corral.bench.workload`: what to send and when (seeded; pure);
- :mod:`corral.bench.api`: request bodies and streamed answers of the three APIs (pure);
- :mod:`corral.bench.stats`: outcomes summarised into percentiles and rates (pure);
- :mod:`corral.bench.driver`: the load generator itself (closed and open loop);
- :mod:`corral.bench.charts`: PNG charts;
- :mod:`corral.bench.command`: the ``corral bench`` command;
- :mod:`corral.bench.suite`: Corral side by side with nginx and HAProxy
  (``benchmarks/compare.py`` runs it and writes ``docs/benchmarks.md``).
"""
