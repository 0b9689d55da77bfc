"""The upstream connection pool against tiny raw servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from corral.balancer.upstream import UpstreamBroken, UpstreamError, UpstreamPool
from corral.llamacpp.process import free_port

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(serve: Serve) -> AsyncIterator[tuple[str, list[int]]]:
    """A server running ``serve`` per connection; yields its address and a list that
    grows by one per connection accepted."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and body (by Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_kept_alive_connection_is_reused_and_the_request_goes_out_as_given() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(ok(b"hello", b"X-Up: 1\r\n"))

    pool = UpstreamPool()
    async with raw_server(serve) as (address, accepted):
        for _ in range(3):
            response = await pool.request(
                address, "POST", b"/completion?a=%2F", b"X-Custom: 1\r\n", b'{"x":1}'
            )
            assert (response.status, response.header(b"x-up")) == (200, "1")
            assert await response.read() == b"hello"
            response.close()
        assert len(accepted) == 1  # one connection, kept alive
        head, body = seen[0]
        assert head.startswith(b"POST /completion?a=%2F HTTP/1.1\r\n")
        assert b"\r\nX-Custom: 1\r\n" in head and b"\r\nContent-Length: 7\r\n" in head
        assert body == b'{"x":1}'
    pool.close()


async def test_an_idle_connection_the_server_closed_is_replaced_without_an_error() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"once"))  # keep-alive promised, then closed (an idle timeout)
        await writer.drain()

    pool = UpstreamPool()
    async with raw_server(serve) as (address, accepted):
        for _ in range(2):
            response = await pool.request(address, "GET", b"/health", b"", b"")
            assert await response.read() == b"once"
            response.close()
            await asyncio.sleep(0.05)  # the server's close reaches the pool, or not yet
        assert len(accepted) == 2
    pool.close()


async def test_an_idle_connection_is_not_reused_past_the_keepalive_timeout() -> None:
    """llama-server closes a connection idle for 5 s; the pool must give it up sooner,
    or its requests race the server's close (and reach an intermediary twice)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # keeps every connection open: only the pool's own rule closes it
            await read_request(reader)
            writer.write(ok(b"x"))

    assert UpstreamPool.__init__.__kwdefaults__["keepalive_timeout"] < 5.0
    pool = UpstreamPool(keepalive_timeout=0.2)
    async with raw_server(serve) as (address, accepted):
        for pause in (0.0, 0.05, 0.4):
            await asyncio.sleep(pause)
            response = await pool.request(address, "GET", b"/health", b"", b"")
            assert await response.read() == b"x"
            response.close()
        assert len(accepted) == 2  # reused after 0.05 s, not after 0.4 s
    pool.close()


async def test_refused_and_silent_servers_are_upstream_errors() -> None:
    pool = UpstreamPool(connect_timeout=0.5)
    with pytest.raises(UpstreamError, match="ConnectionRefused"):
        await pool.request(f"http://127.0.0.1:{free_port()}", "GET", b"/", b"", b"")

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # then close without a word

    async with raw_server(hang_up) as (address, _):
        with pytest.raises(UpstreamError, match="closed"):
            await pool.request(address, "POST", b"/completion", b"", b"{}")
    pool.close()


async def test_a_stream_is_handed_over_chunk_by_chunk_and_a_break_is_reported() -> None:
    go = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await go.wait()
        writer.write(b"6\r\nsecond\r\n")  # and the server dies before the last chunk
        await writer.drain()

    pool = UpstreamPool()
    async with raw_server(serve) as (address, _):
        response = await pool.request(address, "POST", b"/completion", b"", b"{}")
        assert response.chunked and response.content_length is None
        assert await response.next_chunk() == b"first"  # before the rest was even sent
        go.set()
        assert await response.next_chunk() == b"second"
        with pytest.raises(UpstreamBroken):
            await response.next_chunk()
        response.close()
    pool.close()


async def test_a_body_that_ends_with_the_connection_is_read_whole() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        await writer.drain()

    pool = UpstreamPool()
    async with raw_server(serve) as (address, _):
        response = await pool.request(address, "GET", b"/props", b"", b"")
        assert await response.read() == b"all of it"
        response.close()
    pool.close()


async def test_a_slow_reader_pauses_the_server_instead_of_buffering_everything() -> None:
    sent = 0
    total = 32 * 1024 * 1024  # far more than loopback sockets buffer (about 4 MB here)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * 65536
        while sent < total:
            writer.write(block)
            sent += len(block)
            await writer.drain()

    pool = UpstreamPool()
    async with raw_server(serve) as (address, _):
        response = await pool.request(address, "GET", b"/big", b"", b"")
        await asyncio.sleep(0.3)  # the reader does not read: the server must stall
        assert sent < total / 2, f"{sent} bytes were sent to a reader that read nothing"
        got = 0
        while chunk := await response.next_chunk():
            got += len(chunk)
        assert got == total
        response.close()
    pool.close()


async def test_a_connection_left_paused_is_closed_not_reused() -> None:
    """A response that ended while its reader had paused the server (a slow client)
    must not hand a connection that reads nothing to the next request."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(ok(b"x"))

    pool = UpstreamPool()
    async with raw_server(serve) as (address, accepted):
        first = await pool.request(address, "GET", b"/props", b"", b"")
        assert await first.read() == b"x"
        first.pause_reading()
        first.close()
        async with asyncio.timeout(2):
            second = await pool.request(address, "GET", b"/props", b"", b"")
            assert await second.read() == b"x"
        second.close()
        assert len(accepted) == 2
    pool.close()


async def test_a_response_closed_before_its_end_closes_its_connection() -> None:
    """The rest of an unread body must not reach the next request's response."""
    bodies = iter([b"0123456789", b"fresh"])

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            body = next(bodies)
            writer.write(ok(body)[: -len(body) // 2])  # half the body now
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(ok(body)[-len(body) // 2 :])

    pool = UpstreamPool()
    async with raw_server(serve) as (address, accepted):
        first = await pool.request(address, "GET", b"/props", b"", b"")
        first.close()  # its body not read to the end
        second = await pool.request(address, "GET", b"/props", b"", b"")
        assert await second.read() == b"fresh"
        second.close()
        assert len(accepted) == 2
        assert repr(pool) == "<UpstreamPool [connections: 0 active, 1 idle]>"
    pool.close()


async def test_a_kept_alive_connection_that_fails_late_is_reported_not_retried() -> None:
    """Only a quick failure on a reused connection means the server had closed it
    while idle; a later one may come after the server ran the request."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"first"))
        await read_request(reader)
        await asyncio.sleep(0.5)  # longer than a stale connection takes to fail

    pool = UpstreamPool()
    async with raw_server(serve) as (address, accepted):
        first = await pool.request(address, "GET", b"/props", b"", b"")
        assert await first.read() == b"first"
        first.close()
        with pytest.raises(UpstreamError, match="closed"):
            await pool.request(address, "POST", b"/completion", b"", b"{}")
        assert len(accepted) == 1
    pool.close()
