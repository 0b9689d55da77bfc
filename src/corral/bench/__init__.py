"""``corral bench``: a load generator for any OpenAI-compatible or llama.cpp endpoint.

- :mod:`corral.bench.workload`: what to send and when (seeded; pure);
- :mod:`corral.bench.api`: request bodies and streamed answers of the three APIs (pure);
- :mod:`corral.bench.stats`: outcomes summarised into percentiles and rates (pure);
- :mod:`corral.bench.driver`: the load generator itself (closed and open loop);
- :mod:`corral.bench.charts`: PNG charts (needs matplotlib, the ``charts`` extra);
- :mod:`corral.bench.command`: the ``corral bench`` command.

The comparison suite (Corral side by side with nginx and HAProxy) is not part of the
package: it is in ``benchmarks/`` (``benchmarks/compare.py`` runs it and writes
``docs/benchmarks.md``).
"""
