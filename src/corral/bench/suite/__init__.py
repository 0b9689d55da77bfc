"""The comparison suite: Corral measured side by side with nginx and HAProxy.

``benchmarks/compare.py`` runs every section and writes ``docs/benchmarks.md``:

1. :mod:`~corral.bench.suite.routing`: routing quality on simulated servers;
2. :mod:`~corral.bench.suite.real_engine`: the same on real llama-servers;
3. :mod:`~corral.bench.suite.overhead`: what the data path costs, next to nginx;
4. :mod:`~corral.bench.suite.control`: the control plane up to 1,000 agents.

Each section is ``async def run(env: SuiteEnv) -> Section`` (see
:mod:`~corral.bench.suite.common`) and can also be run alone with
``python -m corral.bench.suite.<section> [--quick]``.
"""
