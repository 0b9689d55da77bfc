"""A simulated llama.cpp ``llama-server`` for fast tests and benchmarks.

:mod:`corral.sim.model` is the pure part (slots, speed, text); :mod:`corral.sim.server`
serves it over HTTP in llama-server's formats.
"""

from corral.sim.model import (
    ContextExceeded,
    Job,
    Plan,
    SlotError,
    SlotTable,
    SlotView,
    SpeedModel,
    Ticket,
    Timings,
    Vocab,
    embed,
    plan_generation,
    render_chat,
    token_piece,
)
from corral.sim.server import (
    SIM_ENGINE,
    ApiError,
    SimConfig,
    SimEngine,
    make_app,
    serve,
    start,
)

__all__ = [
    "SIM_ENGINE",
    "ApiError",
    "ContextExceeded",
    "Job",
    "Plan",
    "SimConfig",
    "SimEngine",
    "SlotError",
    "SlotTable",
    "SlotView",
    "SpeedModel",
    "Ticket",
    "Timings",
    "Vocab",
    "embed",
    "make_app",
    "plan_generation",
    "render_chat",
    "serve",
    "start",
    "token_piece",
]
