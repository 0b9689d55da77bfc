"""``python -m comparison.ticker``: the paced backend (:mod:`~comparison.ticker.backend`)
until SIGTERM or SIGINT, or with ``--drive URL`` its load generator
(:mod:`~comparison.ticker.drive`), which prints ``go``, ``stop`` and one line of counts.

    PYTHONPATH=benchmarks python -m comparison.ticker --port 8080 --slots 256 --rate 200
    PYTHONPATH=benchmarks python -m comparison.ticker --drive http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from comparison.ticker.backend import Config, serve
from comparison.ticker.drive import RESULT_MARK, drive


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover (uvloop is a dependency except on Windows)
        return None
    return uvloop.new_event_loop


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m comparison.ticker",
        description=(
            "A paced streaming backend posing as llama-server: every stream gets one "
            "token event per tick, RATE ticks a second, from one loop-wide timer. "
            "With --drive it is instead the load generator for such a backend."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    p.add_argument(
        "--slots", type=int, default=256, help="idle slots reported on /slots and /props"
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=400,
        help="tokens per stream (a request's max_tokens overrides it); with --drive, "
        "the tokens each request asks for",
    )
    p.add_argument("--rate", type=float, default=200.0, help="tokens per second per stream")
    drive_ = p.add_argument_group("load generator")
    drive_.add_argument(
        "--drive",
        metavar="URL",
        help="drive the chat stream at URL (e.g. http://127.0.0.1:8080) instead of serving",
    )
    drive_.add_argument("--connections", type=int, default=256, help="concurrent streams")
    drive_.add_argument("--warmup", type=float, default=2.0, help="seconds before counting")
    drive_.add_argument("--seconds", type=float, default=5.0, help="seconds of counting")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.tokens < 1 or args.rate <= 0 or args.slots < 1 or args.connections < 1:
        print("--tokens, --slots and --connections must be >= 1, --rate > 0", file=sys.stderr)
        return 2
    factory = _loop_factory()
    if args.drive:
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(
                drive(args.drive, args.connections, args.tokens, args.warmup, args.seconds)
            )
        print(RESULT_MARK + json.dumps(asdict(result)), flush=True)
        return 0
    config = Config(slots=args.slots, tokens=args.tokens, rate=args.rate)

    async def _serve() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(args.host, args.port, config)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
