"""The counting relay that batch_real.py and tests/e2e/test_batch_restart.py trust to
say how many times a batch line reached a server."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from corral.llamacpp.process import free_port
from counting_relay import Counts, read_counts, serve

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request (head, then its Content-Length body) with ``ok``."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            break
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        writer.write(ANSWER)
        await writer.drain()
    writer.close()


def _post(request_id: str, body: bytes) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: %s\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (request_id.encode(), len(body), body)
    )


async def test_posts_are_counted_by_request_id_on_keep_alive_connections(
    tmp_path: Path,
) -> None:
    upstream = await asyncio.start_server(_upstream, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    listen, path = free_port(), tmp_path / "counts.json"
    relay = asyncio.create_task(serve([(listen, port)], Counts(path)))
    try:
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", listen)
        body = b'{"x": "' + b"a" * 100_000 + b'"}'  # a body over several reads
        for request_id in ("line-1", "line-2", "line-1"):
            writer.write(_post(request_id, body))
            await writer.drain()
            assert await reader.readexactly(len(ANSWER)) == ANSWER
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # a GET: not counted
        assert await reader.readexactly(len(ANSWER)) == ANSWER
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.2)  # the relay closes its side, and the upstream its own
        by_id, by_port = read_counts(path)
        assert by_id == {"line-1": 2, "line-2": 1}
        assert by_port == {str(port): 3}
    finally:
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay
        upstream.close()
        await upstream.wait_closed()
