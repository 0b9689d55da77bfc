"""The comparison suite: Corral measured side by side with nginx and HAProxy.

``benchmarks/compare.py`` runs every section and writes ``docs/benchmarks.md``:

1. :mod:`~comparison.routing`: routing quality on simulated servers;
2. :mod:`~comparison.real_engine`: the same on real llama-servers;
3. :mod:`~comparison.overhead`: what the data path costs, next to nginx;
4. :mod:`~comparison.control`: the control plane up to 1,000 agents;
5. :mod:`~comparison.prefix`: prefix-cache-aware routing, real and simulated servers.

Each section is ``async def run(env: SuiteEnv) -> Section`` (see
:mod:`~comparison.common`). The programs the sections start beside Corral are here
too: :mod:`~comparison.simfleet` (simulated llama-servers),
:mod:`~comparison.fakeagents` (many fake agents in one process) and
:mod:`~comparison.ticker` (a paced streaming backend and its load generator).

This package is not part of the installed ``corral``: it lives in ``benchmarks/``,
which must be on the import path. ``benchmarks/compare.py`` and pytest (pyproject's
``pythonpath``) put it there, and so do the sections for the processes they start
(:func:`~comparison.common.child_env`). To run one module alone, from the
repository root::

    PYTHONPATH=benchmarks .venv/bin/python -m comparison.<section> [--quick]

Its tests are in ``benchmarks/tests/`` (pure, inprocess, e2e, as in ``tests/``).
"""
