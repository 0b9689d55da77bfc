"""Cold start of one model replica on this machine: copy into the weight cache (as
the init container does), then load into llama-server (as the agent's supervisor
does). Run twice: with an empty cache (copy plus load) and a warm one (load only).

    python benchmarks/cold_start.py [--model PATH] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from corral.agent.supervisor import Phase, ServerSettings, Supervisor
from corral.k8s.fetch import fetch
from corral.llamacpp import bundled_model


async def load(model: Path) -> float:
    server = Supervisor(
        ServerSettings(model=model, slots=1, ctx_size=512), name="bench", log_server_output=False
    )
    await server.start()
    try:
        while server.phase is not Phase.READY:
            await server.wait_changed()
        assert server.load_time is not None
        return server.load_time
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    source = args.model or bundled_model()
    print(f"model {source} ({source.stat().st_size / 1e6:.0f} MB)")
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:
            dest = Path(cache) / "models" / "m.gguf"
            started = time.monotonic()
            fetch(str(source), dest)
            copy = time.monotonic() - started
            cold = asyncio.run(load(dest))
            started = time.monotonic()
            fetch(str(source), dest)  # cached: nothing to copy
            check = time.monotonic() - started
            warm = asyncio.run(load(dest))
        print(
            f"run {run + 1}: cold cache: copy {copy:.2f}s + load {cold:.2f}s = "
            f"{copy + cold:.2f}s | warm cache: check {check:.3f}s + load {warm:.2f}s = "
            f"{check + warm:.2f}s"
        )


if __name__ == "__main__":
    main()
