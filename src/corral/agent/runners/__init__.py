"""Runner adapters: one module per kind of server, behind :class:`Runner`.

``corral agent --runner NAME`` picks one from :data:`RUNNERS` (default ``llamacpp``).
Each turns its server's own state into the same
:class:`~corral.protocol.messages.ServerStatus`; see :mod:`corral.agent.runners.base`
for the interface and ``docs/runners.md`` for what each reads.
"""

from __future__ import annotations

from corral.agent.runners.base import Fetched, Get, Reading, Runner, RunnerOptions
from corral.agent.runners.llamacpp import LlamaCppRunner
from corral.agent.runners.ollama import OllamaRunner
from corral.agent.runners.openai import OpenAIRunner
from corral.agent.runners.sglang import SglangRunner
from corral.agent.runners.vllm import VllmRunner

RUNNERS: dict[str, type[Runner]] = {
    runner.name: runner
    for runner in (LlamaCppRunner, VllmRunner, SglangRunner, OllamaRunner, OpenAIRunner)
}
"""Every runner by its ``--runner`` name."""


def make_runner(name: str, options: RunnerOptions | None = None) -> Runner:
    """The runner called ``name``. Raises ``ValueError`` naming the known ones."""
    try:
        cls = RUNNERS[name]
    except KeyError:
        raise ValueError(f"unknown runner {name!r}; known: {', '.join(RUNNERS)}") from None
    return cls(options)


__all__ = ["RUNNERS", "Fetched", "Get", "Reading", "Runner", "RunnerOptions", "make_runner"]
