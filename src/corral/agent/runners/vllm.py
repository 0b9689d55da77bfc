"""The ``vllm`` runner: a vLLM OpenAI-compatible server (``vllm serve``).

What it reads (vLLM's ``vllm/entrypoints/openai/api_server.py`` and its "Production
Metrics" documentation):

- ``GET /health``: 200 with an empty body while the engine runs, 503 once it died
  (``EngineDeadError``). vLLM binds its port only after the model has loaded, so a
  loading server is ``unreachable`` until then.
- ``GET /v1/models``: the served model names (``--served-model-name``, else the model
  path) and any LoRA adapters; the first is the backend's model.
- ``GET /metrics`` (Prometheus text, always on): ``vllm:num_requests_running`` and
  ``vllm:num_requests_waiting`` (gauges labelled ``model_name`` and, in V1, ``engine``;
  summed over engines), and ``vllm:kv_cache_usage_perc`` (V1; ``vllm:gpu_cache_usage_perc``
  before it), shown to operators.

vLLM has no slots: it batches up to ``--max-num-seqs`` sequences at once and queues
the rest. The agent reports that limit as its slots (``--concurrency``, which should
match ``--max-num-seqs``); busy slots are running plus waiting requests.
"""

from __future__ import annotations

from typing import ClassVar

from corral.agent.runners._metered import Gauges, MeteredRunner


class VllmRunner(MeteredRunner):
    """Reads a vLLM server (``--runner vllm``)."""

    name: ClassVar[str] = "vllm"
    default_concurrency: ClassVar[int] = 256
    """vLLM's default ``--max-num-seqs`` (``vllm/engine/arg_utils.py``; larger on some
    GPUs in V1: give ``--concurrency`` to match the server)."""
    gauges: ClassVar[Gauges] = Gauges(
        running=("vllm:num_requests_running",),
        waiting=("vllm:num_requests_waiting",),
        cache=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    )
