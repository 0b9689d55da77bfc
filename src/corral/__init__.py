"""Corral: an application-aware load balancer and fleet manager for llama.cpp servers.

Where things live:

- ``corral.core``      pure logic, no I/O: fleet state, routing policy, request buffer
- ``corral.protocol``  the typed, versioned messages between agents and balancer
- ``corral.balancer``  the balancer process: proxy data path, management API
- ``corral.agent``     the agent process: reads llama-server, reports to balancers
- ``corral.sim``       a simulated llama-server for fast tests and benchmarks
- ``corral.llamacpp``  finding the llama-server binary and the bundled model
"""

__version__ = "0.1.0"
