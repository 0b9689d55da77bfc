"""The ticker's paced server and its driver together, on loopback in one process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from typing import Any

from comparison.ticker.backend import Config, serve
from comparison.ticker.drive import drive
from corral.llamacpp.process import free_port


async def test_the_driver_counts_whole_paced_streams() -> None:
    port = free_port()
    ready = asyncio.Event()
    server = asyncio.ensure_future(serve("127.0.0.1", port, Config(slots=8, rate=200.0), ready))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        url = f"http://127.0.0.1:{port}"
        result = await drive(url, connections=4, tokens=5, warmup=0.1, seconds=0.5, announce=False)
        # 5 tokens at 200/s and a final tick: a stream ends about every 30 ms per connection
        assert result.streams >= 4 and result.bad_streams == 0, result
        assert result.connection_errors == 0 and result.tokens >= 4 * 5, result
        stats = await asyncio.to_thread(_get_json, f"{url}/stats")
        assert stats["finished"] >= result.streams and stats["tokens"] >= result.tokens
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)
