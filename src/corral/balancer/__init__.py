"""The balancer: proxies the llama.cpp API to a fleet, slot-aware, with a buffer."""

from corral.balancer.balancer import Balancer, BalancerConfig, run

__all__ = ["Balancer", "BalancerConfig", "run"]
