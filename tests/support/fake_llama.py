"""A stand-in for the llama-server binary, for supervisor-mode agents in fast tests: a
script that takes llama-server's arguments (``--port``, ``--parallel``, ``--model``)
and runs the simulated server there (:mod:`corral.sim`), optionally loading for a while
first and sitting out SIGTERM (as a llama-server with a client does)."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPT = """\
import asyncio, json, signal, sys
from pathlib import Path

from corral.sim.server import SimConfig, start

options = json.loads({options!r})
args = sys.argv
def arg(name):
    return args[args.index(name) + 1]

if options["ignore_sigterm"]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
Path(options["log"]).write_text(json.dumps(args)) if options["log"] else None

async def main():
    config = SimConfig(
        slots=int(arg("--parallel")),
        model=Path(arg("--model")).stem,
        tokens_per_second=options["tokens_per_second"],
        loading_seconds=options["loading_seconds"],
    )
    await start(config, arg("--host"), int(arg("--port")))
    await asyncio.Event().wait()

asyncio.run(main())
"""


def fake_llama_server(
    where: Path,
    *,
    loading_seconds: float = 0.0,
    tokens_per_second: float = 50.0,
    ignore_sigterm: bool = False,
    log: Path | None = None,
) -> Path:
    """Write the fake binary into the directory ``where``; its path. ``log``: a file
    where it writes the arguments it was started with."""
    import json

    options = json.dumps(
        {
            "loading_seconds": loading_seconds,
            "tokens_per_second": tokens_per_second,
            "ignore_sigterm": ignore_sigterm,
            "log": str(log) if log else None,
        }
    )
    binary = where / "llama-server"
    binary.write_text(f"#!{sys.executable}\n" + SCRIPT.format(options=options))
    binary.chmod(0o755)
    return binary
