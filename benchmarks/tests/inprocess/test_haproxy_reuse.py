"""HAProxy, as the suite configures it, answers every request even when a server closes
a kept-alive connection just as HAProxy reuses it.

llama-server (cpp-httplib) closes a keep-alive connection after 5 s idle. Under
``http-reuse safe`` HAProxy sent a client's later requests over idle server
connections; when the server had just closed one, HAProxy closed the client's
connection without an answer (its documented way to let a browser retry), and the
load generator, which never resends a POST, counted a ``connection`` error: 9-34 of
109-178 requests a run in the real-server sections, against none for Corral or nginx.
The fake server here closes every connection it is sent a second request on, the race
at its worst, so the test fails on every second request if HAProxy reuses them.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
import pytest

from comparison.common import SuiteEnv, processes
from comparison.contenders import Backend, start

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(),
    reason="haproxy is not installed",
)

ANSWER = b'{"choices": []}'


async def _one_request_per_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer the first request of a connection with keep-alive; close the connection
    without an answer when a second request comes on it."""
    answered = False
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if answered:
                break  # the server closed this idle connection as the request came
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
            )
            await writer.drain()
            answered = True
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def test_haproxy_answers_every_request_when_servers_close_reused_connections(
    tmp_path: Path,
) -> None:
    server = await asyncio.start_server(_one_request_per_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = SuiteEnv(out_dir=tmp_path, docs_dir=tmp_path, work_dir=tmp_path)
    try:
        with processes(env, "haproxy-reuse") as procs:
            running = await start("haproxy", [Backend("fake", port, 2)], procs, env)
            answers: list[int | str] = []
            # one client connection, as the load generator's pool keeps it alive
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                for _ in range(6):
                    try:
                        async with session.post(
                            f"{running.url}/v1/chat/completions", data=b'{"messages": []}'
                        ) as response:
                            await response.read()
                            answers.append(response.status)
                    except aiohttp.ClientError as exc:
                        answers.append(repr(exc))
            assert answers == [200] * 6, procs.log_tail("haproxy")
    finally:
        server.close()
        await server.wait_closed()
