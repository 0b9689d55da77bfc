"""The ``sglang`` runner: an SGLang server (``python -m sglang.launch_server``).

What it reads (SGLang's ``python/sglang/srt/entrypoints/http_server.py`` and its
"Production Metrics" documentation):

- ``GET /health``: 200 while the server runs, 503 while it is not ready or after its
  scheduler died.
- ``GET /v1/models``: the served model (``--served-model-name``, else the model path).
- ``GET /metrics``, only when the server runs with ``--enable-metrics``:
  ``sglang:num_running_reqs`` and ``sglang:num_queue_reqs`` (gauges labelled
  ``model_name``; summed over ranks) and ``sglang:token_usage`` (KV-cache use, 0..1),
  shown to operators. Without metrics the agent says so, and the balancer counts only
  its own requests.

SGLang has no slots; ``--concurrency`` should match its ``--max-running-requests``
(without one, SGLang sizes the batch from free memory; the agent then assumes 64).
"""

from __future__ import annotations

from typing import ClassVar

from corral.agent.runners._metered import Gauges, MeteredRunner


class SglangRunner(MeteredRunner):
    """Reads an SGLang server (``--runner sglang``)."""

    name: ClassVar[str] = "sglang"
    default_concurrency: ClassVar[int] = 64
    """Corral's guess when ``--concurrency`` is not given: SGLang derives its own
    ``--max-running-requests`` from free memory and does not publish it."""
    gauges: ClassVar[Gauges] = Gauges(
        running=("sglang:num_running_reqs",),
        waiting=("sglang:num_queue_reqs",),
        cache=("sglang:token_usage",),
        metrics_hint="; start SGLang with --enable-metrics",
    )
