"""A counting relay: sits between a balancer and a llama-server and counts, by
``X-Request-Id``, every POST that reaches the server.

    PYTHONPATH=src .venv/bin/python benchmarks/counting_relay.py --counts FILE \\
        LISTEN_PORT:SERVER_PORT [LISTEN_PORT:SERVER_PORT ...]

Each pair is one server: the relay listens on ``127.0.0.1:LISTEN_PORT`` and forwards
bytes to ``127.0.0.1:SERVER_PORT`` unchanged, both ways. On the way in it reads each
request's head (keep-alive connections carry many; bodies are skipped by their
``Content-Length``) and, for a POST, adds one to the count of its ``X-Request-Id``.
After each count it rewrites ``FILE`` (written to a temporary name, then renamed) as
JSON ``{"by_id": {request id: times seen}, "by_port": {"SERVER_PORT": POSTs}}``.

This is how a batch line that reached a server twice is seen: Corral sends each line
with the stable ``X-Request-Id`` ``batch_req_<batch>_<index>`` (docs/batch.md), and the
relay runs in its own process, so a balancer killed mid-job does not take the counts
with it. A request counts once its head has been written to a connection the server
has not closed, i.e. when it was sent to the server, whether or not the server finished
it. (A head that arrives on a kept-alive connection the server already closed is not
counted: it never reached the server, and the balancer sends it again on a new one.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path


class Counts:
    """Request ids seen, per id and per server port; saved to ``path`` on each change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.by_id: Counter[str] = Counter()
        self.by_port: Counter[str] = Counter()
        self.save()

    def add(self, request_id: str, port: int) -> None:
        self.by_id[request_id] += 1
        self.by_port[str(port)] += 1
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"by_id": self.by_id, "by_port": self.by_port}))
        os.replace(tmp, self.path)


def read_counts(path: Path) -> tuple[Counter[str], Counter[str]]:
    """(times seen by request id, POSTs by server port) from a relay's counts file."""
    data = json.loads(path.read_text())
    return Counter(data["by_id"]), Counter(data["by_port"])


async def _requests(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    server_reader: asyncio.StreamReader,
    counts: Counts,
    port: int,
) -> None:
    """Client to server: count each request head, forward everything."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                writer.write(exc.partial)
            return
        lines = head.split(b"\r\n")
        method = lines[0].split(b" ", 1)[0]
        length, request_id, chunked = 0, "-", False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"x-request-id":
                request_id = value.strip().decode(errors="replace")
            elif name == b"transfer-encoding":
                chunked = True
        if server_reader.at_eof():  # the server closed this kept-alive connection:
            return  # the request never reaches it (the balancer sends it again elsewhere)
        writer.write(head)
        await writer.drain()
        if method == b"POST":  # counted once handed to a live connection to the server
            counts.add(request_id, port)
        if chunked:  # not parsed: pass the rest of the connection through as it is
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            return
        while length > 0:
            data = await reader.read(min(length, 65536))
            if not data:
                return
            length -= len(data)
            writer.write(data)
        await writer.drain()


async def _answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def _connection(
    client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, counts: Counts, port: int
) -> None:
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        client_w.close()
        return
    tasks = [
        asyncio.create_task(_requests(client_r, server_w, server_r, counts, port)),
        asyncio.create_task(_answers(server_r, client_w)),
    ]
    with contextlib.suppress(OSError):
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for w in (client_w, server_w):
        with contextlib.suppress(OSError):
            w.close()
    for w in (client_w, server_w):
        with contextlib.suppress(OSError):
            await w.wait_closed()


async def serve(pairs: Sequence[tuple[int, int]], counts: Counts) -> None:
    servers = []
    for listen, port in pairs:

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, p: int = port) -> None:
            await _connection(r, w, counts, p)

        servers.append(await asyncio.start_server(handle, "127.0.0.1", listen))
    await asyncio.gather(*(s.serve_forever() for s in servers))


def _pair(text: str) -> tuple[int, int]:
    listen, _, port = text.partition(":")
    return int(listen), int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", type=Path, required=True, help="JSON file of the counts")
    parser.add_argument("pairs", nargs="+", type=_pair, help="LISTEN_PORT:SERVER_PORT")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.pairs, Counts(args.counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
