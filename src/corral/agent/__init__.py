"""The agent: runs beside one llama-server and reports it to balancers."""

from corral.agent.agent import Agent, AgentConfig, run

__all__ = ["Agent", "AgentConfig", "run"]
